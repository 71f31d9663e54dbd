"""Generated protobuf and gRPC code for router.v1."""
