# The sidecar image: one process next to each model server (same pod).
#   docker build -t rollout-sidecar .
#   docker run -v $PWD/examples/sidecar.yaml:/etc/sidecar/sidecar.yaml rollout-sidecar
# Listen addresses in the config must then be 0.0.0.0:PORT (the example binds loopback).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY sidecar ./sidecar
COPY clients ./clients
# The server only, no extras: not [report] (matplotlib, for `sidecarctl report --html`) nor
# [dev] (the tests' tools and statsmodels, their oracle). tests/unit/architecture checks that
# the server imports every dependency it ships and neither of those.
RUN pip install --no-cache-dir -c constraints.txt --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 sidecar
COPY --from=build /install /usr/local
USER sidecar
EXPOSE 8500 8501
# Kubernetes: readiness/liveness via grpc.health.v1 on the predict port
# (grpc: {port: 8500, service: "inference.GRPCInferenceService"}).
ENTRYPOINT ["sidecar", "serve", "--config", "/etc/sidecar/sidecar.yaml"]
