"""Sidecar defaults used in more than one place: the addresses (its CLI, the k8s manifests
and their test) and the largest upstream read (its setting and the stream scanner)."""

LISTEN_HOST = "127.0.0.1"
LISTEN_PORT = 8080
ROUTER_ADDRESS = "router.llm-router.svc.cluster.local:50051"

ENV_ROUTER = "SIDECAR_ROUTER"
ENV_LISTEN = "SIDECAR_LISTEN"
ENV_FALLBACK_CATALOG = "SIDECAR_FALLBACK_CATALOG"
ENV_LOG_LEVEL = "SIDECAR_LOG_LEVEL"

#: Largest non-streaming upstream body and longest stream line read from a provider
#: (``--max-upstream-response-bytes``; ``SSEScanner``'s default when built without it).
MAX_UPSTREAM_RESPONSE_BYTES = 32 * 1024 * 1024
