"""Fixtures: scripted upstreams (fault injection) and an in-process sidecar."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from sidecar._proto.inference import grpc_predict_v2_pb2 as oip
from sidecar._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from sidecar.testing.fault_upstream import FaultInjectingUpstream
from sidecar.testing.inprocess import scripted_model
from sidecar.wiring import Sidecar


@pytest.fixture
async def model_server() -> AsyncIterator[FaultInjectingUpstream]:
    """A scripted model: version "stable" answers label 1, "canary" 2, "shadow" 2."""
    up = FaultInjectingUpstream(respond=scripted_model({"stable": 1, "canary": 2, "shadow": 2}))
    async with up:
        yield up


@pytest.fixture
async def shadow_server() -> AsyncIterator[FaultInjectingUpstream]:
    """A separate scripted model for the shadow, so faults can target it alone."""
    up = FaultInjectingUpstream(respond=scripted_model({"shadow": 1}))
    async with up:
        yield up


def infer_request(rows: int = 1, model: str = "classifier") -> oip.ModelInferRequest:
    req = oip.ModelInferRequest(model_name=model)
    tensor = req.inputs.add(name="input-0", datatype="FP64", shape=[rows, 4])
    tensor.contents.fp64_contents.extend([5.1, 3.5, 1.4, 0.2] * rows)
    return req


def stub(port: int) -> oip_grpc.GRPCInferenceServiceStub:
    return oip_grpc.GRPCInferenceServiceStub(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))


def counted(sc: Sidecar) -> tuple[object, ...]:
    """Everything a request or an outcome report can count: served per variant, the
    ledger's entries, counters and tallies, the experiment's assignments and cells."""
    dp = sc.dataplane
    ledger = dp.outcomes
    tracker = sc.experiment.tracker
    return (
        dict(dp.served),
        len(ledger),
        {k: (c.n, c.successes, c.total, c.total_sq) for k, c in ledger.counters.items()},
        ledger.duplicates,
        ledger.capped,
        ledger.tracked_keys,
        dict(tracker._assigned),  # private: the tracker has no public raw counts
        {k: (c.n, c.successes, c.mean) for k, c in tracker._cells.items()},
    )
