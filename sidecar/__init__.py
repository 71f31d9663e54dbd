"""The sidecar: an OpenAI-compatible proxy on localhost.

It ranks, falls back, measures and reports every upstream attempt.

gRPC core logs through absl at INFO unless ``GRPC_VERBOSITY`` says otherwise,
and reads the variable once, when ``grpc`` is first imported: with TLS to the
router, every failed handshake (a wrong ``--router-ca``, an expired router
certificate) wrote a plain-text ``I... Handshake failed`` line to the sidecar's
stderr on each reconnect, between its JSON lines. The default is set here, as
the router does, before any submodule imports ``grpc``; the reason reaches the
log as the ``detail`` of ``router unreachable`` instead. An operator's own
``GRPC_VERBOSITY`` wins.
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
