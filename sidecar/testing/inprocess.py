"""In-process sidecar and a scripted model for component tests and benchmarks.

This module loads the sidecar's own Open Inference Protocol code, so it must not be
imported in a process that also loads tritonclient (one descriptor pool per process).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from sidecar._proto.inference import grpc_predict_v2_pb2 as oip
from sidecar.config import parse_config
from sidecar.testing.configs import config_dict as config_dict  # re-exported
from sidecar.wiring import Sidecar, build

# Analysis settings for component tests: fast ticks and small minimums. Scripted in-process
# upstreams have noisy latency on a shared machine and these tests are about errors, gates
# and plan mechanics, so the latency guards are wide.
FAST_ANALYSIS: Mapping[str, float] = {
    "max_p50_ratio": 5.0,
    "max_p95_ratio": 5.0,
    "interval": 0.1,
    "lookback": 1.0,
    "bucket": 0.1,
    "horizon": 30.0,
    "min_requests": 30,
    "min_latency_samples": 30,
    "planned_checks": 50,
}


def scripted_model(labels: Mapping[str, int]) -> Any:
    """A responder for `FaultInjectingUpstream`: ModelInfer answers one INT64 label per
    input row, `labels[model_version]` (default 0); ModelReady answers ready;
    ModelMetadata names the model. For fault-injection tests only."""

    def respond(method: str, data: bytes) -> bytes:
        if method == "ModelInfer":
            req = oip.ModelInferRequest.FromString(data)
            rows = req.inputs[0].shape[0] if req.inputs and req.inputs[0].shape else 1
            resp = oip.ModelInferResponse(
                model_name=req.model_name, model_version=req.model_version, id=req.id
            )
            out = resp.outputs.add(name="predict", datatype="INT64", shape=[rows, 1])
            out.contents.int64_contents.extend([labels.get(req.model_version, 0)] * rows)
            return resp.SerializeToString()
        if method == "ModelReady":
            return oip.ModelReadyResponse(ready=True).SerializeToString()
        if method == "ModelMetadata":
            req_md = oip.ModelMetadataRequest.FromString(data)
            return oip.ModelMetadataResponse(
                name=req_md.name, versions=[req_md.version], platform="scripted"
            ).SerializeToString()
        if method == "ServerReady":
            return oip.ServerReadyResponse(ready=True).SerializeToString()
        if method == "ServerLive":
            return oip.ServerLiveResponse(live=True).SerializeToString()
        return b""

    return respond


@asynccontextmanager
async def running_sidecar(raw: Mapping[str, Any]) -> AsyncIterator[Sidecar]:
    """Build and start a sidecar from a configuration mapping; stop it afterwards."""
    sidecar = build(parse_config(dict(raw), "<test>"))
    await sidecar.start()
    try:
        yield sidecar
    finally:
        await sidecar.stop(grace=1.0)
