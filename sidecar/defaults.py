"""Default addresses for the sidecar, shared by its CLI, the k8s manifests and their test."""

LISTEN_HOST = "127.0.0.1"
LISTEN_PORT = 8080
ROUTER_ADDRESS = "router.llm-router.svc.cluster.local:50051"

ENV_ROUTER = "SIDECAR_ROUTER"
ENV_LISTEN = "SIDECAR_LISTEN"
ENV_FALLBACK_CATALOG = "SIDECAR_FALLBACK_CATALOG"
ENV_LOG_LEVEL = "SIDECAR_LOG_LEVEL"
