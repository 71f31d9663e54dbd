# syntax=docker/dockerfile:1
# One image for both processes: the manifests in k8s/ run `router-service ...` or
# `router-sidecar ...` as the container args (ENTRYPOINT is tini, which forwards
# SIGTERM to them and reaps children, so they need not handle being PID 1).
#
#   docker build -t ghcr.io/llm-router/llm-router:0.1.0 .
#   docker run --rm -p 50051:50051 -p 8081:8081 \
#     -v "$PWD/router_common/examples/catalog.yaml:/etc/router/catalog.yaml:ro" \
#     ghcr.io/llm-router/llm-router:0.1.0 \
#     router-service --config /etc/router/catalog.yaml --allow-unauthenticated
#
# That is a laptop trial, run from the repository root (the image holds no
# catalog; in k8s/ it is the ConfigMap). Without --auth-tokens (or
# --tls-client-ca) the router is in protected mode: it listens on the
# container's loopback only and the published ports answer nothing, hence
# --allow-unauthenticated here. In production replace it with
# `--auth-tokens /etc/router-auth/tokens.yaml` and mount the tokens file from a
# Secret, as k8s/router-deployment.yaml does.
#
# Keep in step with k8s/: the numeric UID below is the pods' runAsUser, the venv
# path is used by the sidecar's exec probes, and tests/test_k8s_manifests.py checks both.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a wheel of this repo and wheels of all its dependencies ---------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . .
RUN pip wheel --wheel-dir /wheels .

# ---- runtime: a venv with the wheels installed, no build context, no compilers ----
FROM ${PYTHON_IMAGE} AS runtime

RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 router \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin router

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The wheels are bind-mounted from the build stage, so they never land in a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links=/wheels llm-provider-router \
 && router-service --help >/dev/null \
 && router-sidecar --help >/dev/null

# Numeric, so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001

# router gRPC, router HTTP (/metrics, dashboard), sidecar (loopback only in k8s).
EXPOSE 50051 8081 8080

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["router-service", "--config", "/etc/router/catalog.yaml"]
