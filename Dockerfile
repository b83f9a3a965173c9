# The sidecar image: one process next to each model server (same pod).
#   docker build -t rollout-sidecar .            (or: make image; make image-size prints its size)
#   docker run --rm -p 8500:8500 -p 8501:8501 -p 9464:9464 \
#     -v "$PWD/examples/sidecar.yaml:/etc/sidecar/sidecar.yaml:ro" rollout-sidecar
# The configuration is read-only at /etc/sidecar/sidecar.yaml; the state (SQLite database
# and experiment checkpoint) goes to the writable volume /var/lib/sidecar, whatever the
# file's state paths say; the listen addresses are 0.0.0.0 (the SIDECAR_* variables below
# override the file; set them differently with `docker run -e` or the pod spec).
# tests/integration/test_image_start.py starts the sidecar the way this file does.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY sidecar ./sidecar
COPY clients ./clients
# The server only, no extras: not [report] (matplotlib, for `sidecarctl report --html`) nor
# [dev] (the tests' tools and statsmodels, their oracle). tests/unit/architecture checks that
# the server imports every dependency it ships and neither of those. The libraries' own
# test suites and byte code caches are dropped (Python writes no .pyc at run time here).
RUN pip install --no-cache-dir -c constraints.txt --prefix=/install . \
 && find /install -depth \( -name tests -o -name __pycache__ \) -type d -exec rm -rf {} +

FROM python:3.11-slim
# A numeric user and group: Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN groupadd --system --gid 10001 sidecar \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent sidecar \
 && mkdir -p /etc/sidecar /var/lib/sidecar \
 && chown 10001:10001 /var/lib/sidecar && chmod 0700 /var/lib/sidecar
COPY --from=build /install /usr/local
ENV SIDECAR_LISTEN_PREDICT=0.0.0.0:8500 \
    SIDECAR_LISTEN_CONTROL=0.0.0.0:8501 \
    SIDECAR_LISTEN_METRICS=0.0.0.0:9464 \
    SIDECAR_STATE_PATH=/var/lib/sidecar/sidecar.db \
    SIDECAR_STATE_EXPERIMENT_PATH=/var/lib/sidecar/experiment.json \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/sidecar"]
USER 10001:10001
# predict (+ grpc.health.v1), control, metrics (/metrics)
EXPOSE 8500 8501 9464
# For `docker run` / Compose (Kubernetes uses its own gRPC probes): grpc.health.v1, overall
# (SERVING while the stable variant's model is ready).
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["python", "-c", "import grpc, sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; sys.exit(g.HealthStub(grpc.insecure_channel('127.0.0.1:8500')).Check(h.HealthCheckRequest(), timeout=2).status != h.HealthCheckResponse.SERVING)"]
# Kubernetes: grpc.health.v1 on the predict port: readiness {port: 8500, service: ""},
# liveness and start-up {port: 8500, service: liveness}; SIGHUP reloads the
# configuration (`kill -HUP 1`), SIGTERM drains and exits 0.
ENTRYPOINT ["sidecar", "serve", "--config", "/etc/sidecar/sidecar.yaml"]
