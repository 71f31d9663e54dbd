"""Default ports and paths, in one place so the CLI, the k8s manifests and their test agree."""

GRPC_PORT = 50051
HTTP_PORT = 8081
CONFIG_PATH_IN_CONTAINER = "/etc/router/catalog.yaml"
LOG_LEVEL = "info"

#: Environment variables that set each CLI flag (flag wins over env, env over default).
ENV_CONFIG = "ROUTER_CONFIG"
ENV_GRPC_PORT = "ROUTER_GRPC_PORT"
ENV_HTTP_PORT = "ROUTER_HTTP_PORT"
ENV_LOG_LEVEL = "ROUTER_LOG_LEVEL"
ENV_TUNING = "ROUTER_TUNING"
