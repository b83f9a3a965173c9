"""One trace across the app, the sidecar and MLServer, seen at an OTLP receiver."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient

from sidecar.testing.credentials import control_section
from sidecar.testing.mlserver import MLServerProcess
from sidecar.testing.otlp import OtlpReceiver
from sidecar.testing.process import SidecarProcess

pytestmark = pytest.mark.integration
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


def test_mlserver_span_joins_the_sidecar_trace(
    model_repo: Path, iris_x: npt.NDArray[np.float64], tmp_path: Path
) -> None:
    """The caller's traceparent continues through the sidecar's server and client spans
    into MLServer's own span (exported by MLServer over OTLP)."""
    with OtlpReceiver() as receiver:
        mlserver = MLServerProcess(
            model_repo,
            run_dir=tmp_path / "mlserver",
            extra_env={"MLSERVER_TRACING_SERVER": receiver.address},
        )
        with mlserver:
            config = {
                "listen": {"predict": "127.0.0.1:0", "control": "127.0.0.1:0"},
                "model": "classifier",
                "variants": {
                    "stable": {
                        "address": mlserver.grpc_address,
                        "model_name": "classifier",
                        "model_version": "v1",
                    },
                },
                "flag": {
                    "key": "classifier-rollout",
                    "stable": "stable",
                    "weights": {"stable": 10_000},
                },
                "control": control_section(),
            }
            env = {
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_EXPORTER_OTLP_INSECURE": "true",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
            }
            with SidecarProcess(config, run_dir=tmp_path / "sidecar", extra_env=env) as sc:
                client = grpcclient.InferenceServerClient(sc.predict_address)
                tensor = grpcclient.InferInput("input-0", [1, 4], "FP64")
                tensor.set_data_from_numpy(iris_x[:1])
                client.infer("classifier", [tensor], headers={"traceparent": TRACEPARENT})
                spans = receiver.wait_for(
                    lambda s: len({x.service_name for x in s if x.trace_id == TRACE_ID}) >= 2,
                    timeout=30,
                )
    in_trace = [s for s in spans if s.trace_id == TRACE_ID]
    sidecar_server = next(
        s for s in in_trace if s.service_name == "rollout-sidecar" and s.kind == 2
    )
    sidecar_client = next(
        s for s in in_trace if s.service_name == "rollout-sidecar" and s.kind == 3
    )
    mlserver_spans = [s for s in in_trace if s.service_name != "rollout-sidecar"]
    assert sidecar_server.parent_span_id == "b7ad6b7169203331"
    assert sidecar_client.parent_span_id == sidecar_server.span_id
    assert mlserver_spans, "MLServer exported spans in the same trace"
    assert any(s.parent_span_id == sidecar_client.span_id for s in mlserver_spans), [
        (s.name, s.parent_span_id) for s in mlserver_spans
    ]
