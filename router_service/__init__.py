"""The router service: catalog, health, sketches and ranking behind a gRPC API.

gRPC core logs through absl at INFO unless ``GRPC_VERBOSITY`` says otherwise,
and it reads the variable once, when ``grpc`` is first imported: every
failed TLS handshake (a plaintext client, a wrong certificate, a port
scanner) then wrote an unbounded, non-JSON ``I... Handshake failed`` line to
the router's stderr. Setting the default here, before any submodule imports
``grpc``, keeps stderr JSON lines; an operator's own ``GRPC_VERBOSITY`` wins.
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
