"""The shared layer: everything the router and the sidecar must agree on.

It holds the contract (generated protobuf code, the wire enum tables, the
limits), the catalog model and loader, the logging and shutdown helpers, and
the pure routing rules both sides apply (hard filters, request cost, weighted
draw, near-tie ordering). ``router_service`` and ``sidecar`` build on it and
never import each other; this package imports neither (``docs/architecture.md``,
enforced by import-linter in ``scripts/test``).
"""
