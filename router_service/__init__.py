"""The router service: catalog, health, sketches and ranking behind a gRPC API."""
