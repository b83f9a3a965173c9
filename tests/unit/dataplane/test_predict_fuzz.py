"""Random Predict, ReportOutcome and front-door ModelInfer messages through a real
in-process sidecar (scripted upstream): no answer is UNKNOWN or INTERNAL, and a refused
request counts nothing (served counts, the outcome ledger, the experiment's counters).

The sidecar runs on its own event loop in a thread, so that hypothesis drives blocking
calls against one server for every example."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import grpc
import pytest
from conftest import counted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar._proto.inference import grpc_predict_v2_pb2 as oip
from sidecar._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from sidecar._proto.sidecar.v1 import predict_pb2 as pb
from sidecar._proto.sidecar.v1 import predict_pb2_grpc as pb_grpc
from sidecar.config import parse_config
from sidecar.core.tensors import CONTENT_FIELDS, DATATYPES
from sidecar.testing.fault_upstream import FaultInjectingUpstream
from sidecar.testing.inprocess import config_dict, scripted_model
from sidecar.wiring import Sidecar, build

T = TypeVar("T")
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
EXAMPLES = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Running:
    """A sidecar and its scripted upstream on an event loop in a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.upstream = FaultInjectingUpstream(respond=scripted_model({"stable": 1, "canary": 2}))
        self.run(self.upstream.__aenter__())
        raw = config_dict(
            {"stable": self.upstream.address, "canary": self.upstream.address},
            weights={"stable": 5000, "canary": 5000},
            experiment={
                "metrics": [
                    {"name": "converted", "kind": "bool", "minimum_effect": 0.05},
                    {"name": "revenue", "kind": "number", "minimum_effect": 1.0},
                ],
                "segments": ["ios", "web"],
            },
            drift={"sample_every": 1},
        )
        raw["flag"]["user_overrides"] = {"vip": "canary"}

        async def start() -> Sidecar:  # gRPC aio servers belong to the loop they are made on
            sidecar = build(parse_config(raw, "<fuzz>"))
            await sidecar.start()
            return sidecar

        self.sidecar = self.run(start())
        channel = grpc.insecure_channel(f"127.0.0.1:{self.sidecar.predict_port}")
        self.channel = channel
        self.predict = pb_grpc.PredictStub(channel)
        self.front = oip_grpc.GRPCInferenceServiceStub(channel)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def counted(self) -> tuple[object, ...]:
        async def read() -> tuple[object, ...]:
            return counted(self.sidecar)

        return self.run(read())

    def close(self) -> None:
        self.channel.close()
        self.run(self.sidecar.stop(grace=1.0))
        self.run(self.upstream.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    r = Running()
    try:
        yield r
    finally:
        r.close()


def check(running: Running, call: Any, request: Any, **kwargs: Any) -> Any:
    """Make the call; a refusal must carry a clear status and change no counter."""
    before = running.counted()
    try:
        reply = call(request, timeout=10, **kwargs)
        SEEN["served"] += 1
        return reply
    except grpc.RpcError as exc:
        SEEN["refused"] += 1
        code = exc.code()
        assert code not in FORBIDDEN, (code, exc.details())
        assert code != grpc.StatusCode.DEADLINE_EXCEEDED, exc.details()
        assert running.counted() == before, (code, exc.details())
        return None


# ---- strategies ------------------------------------------------------------------------

keys = st.one_of(
    st.sampled_from(["", "u1", "vip", "ios", "web", "other", "k" * 256, "k" * 257, "é" * 129]),
    st.text(max_size=24),
    st.text(min_size=250, max_size=270),
)
header_values = st.one_of(
    st.sampled_from(["", "u1", "ios", "k" * 257]),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
)
names = st.one_of(st.sampled_from(["x", "input-0", "", "y" * 257]), st.text(max_size=12))
datatypes = st.one_of(st.sampled_from(sorted(DATATYPES)), st.text(max_size=8))
shapes = st.one_of(
    st.lists(st.integers(min_value=-1, max_value=4), max_size=4),
    st.just([1] * 40),
    st.just([0, 2**40]),
)
int32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
CONTENTS = {  # typed contents field -> its values
    "bool_contents": st.booleans(),
    "int_contents": int32,
    "int64_contents": int64,
    "uint_contents": st.integers(min_value=0, max_value=2**32 - 1),
    "uint64_contents": st.integers(min_value=0, max_value=2**64 - 1),
    "fp32_contents": floats,
    "fp64_contents": floats,
    "bytes_contents": st.binary(max_size=8),
}
SEEN: dict[str, int] = {"served": 0, "refused": 0}


@st.composite
def tensors(draw: st.DrawFn, request: Any) -> None:
    """Fill `request` (OIP or sidecar.v1 InferRequest) with random input tensors."""
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        tensor = request.inputs.add(name=draw(names), datatype=draw(datatypes), shape=draw(shapes))
        field = draw(st.sampled_from(CONTENT_FIELDS))
        getattr(tensor.contents, field).extend(draw(st.lists(CONTENTS[field], max_size=8)))
    if draw(st.booleans()) and draw(st.integers(0, 4)) == 0:
        request.raw_input_contents.extend(draw(st.lists(st.binary(max_size=16), max_size=3)))
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        request.outputs.add(name=draw(names))


short_keys = st.one_of(st.sampled_from(["", "u1", "vip", "ios", "web"]), st.text(max_size=24))


@st.composite
def predict_requests(draw: st.DrawFn) -> pb.PredictRequest:
    """Half well-formed (random keys, segments, attributes; one good input), half fuzzed
    (long keys, other models, random tensors)."""
    fuzzed = draw(st.booleans())
    req = pb.PredictRequest(
        context=pb.RoutingContext(
            targeting_key=draw(keys if fuzzed else short_keys),
            segment=draw(keys if fuzzed else short_keys),
            attributes=draw(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)),
        )
    )
    req.inference.model_name = draw(
        st.sampled_from(["", "classifier", "other-model"][: 2 + fuzzed])
    )
    if not fuzzed or draw(st.booleans()):
        tensor = req.inference.inputs.add(name="x", datatype="FP64", shape=[1, 2])
        tensor.contents.fp64_contents.extend(draw(st.lists(floats, min_size=2, max_size=2)))
    if fuzzed:
        draw(tensors(req.inference))
    return req


@st.composite
def infer_requests(draw: st.DrawFn) -> oip.ModelInferRequest:
    fuzzed = draw(st.booleans())
    req = oip.ModelInferRequest(
        model_name=draw(st.sampled_from(["classifier", "", "nope"][: 1 + 2 * fuzzed]))
    )
    if not fuzzed or draw(st.booleans()):
        tensor = req.inputs.add(name="x", datatype="INT64", shape=[2])
        tensor.contents.int64_contents.extend(draw(st.lists(int64, min_size=2, max_size=2)))
    if fuzzed:
        draw(tensors(req))
    return req


numbers = st.floats(allow_nan=True, allow_infinity=True)


@st.composite
def outcome_requests(draw: st.DrawFn, known: list[str]) -> pb.ReportOutcomeRequest:
    """Half well-formed (a served request, a configured metric, a value of its kind), half
    fuzzed (unknown or long ids and metrics, missing, mistyped or non-finite values)."""
    if not draw(st.booleans()):
        metric = draw(st.sampled_from(["converted", "revenue"]))
        req = pb.ReportOutcomeRequest(request_id=draw(st.sampled_from(known)), metric=metric)
        if metric == "converted":
            req.bool_value = draw(st.booleans())
        else:
            req.number_value = draw(st.floats(allow_nan=False, allow_infinity=False))
        return req
    req = pb.ReportOutcomeRequest(
        request_id=draw(st.one_of(st.sampled_from(known), keys)),
        metric=draw(st.one_of(st.sampled_from(["converted", "revenue", "clicks", ""]), keys)),
    )
    kind = draw(st.sampled_from(["bool", "number", "none"]))
    if kind == "bool":
        req.bool_value = draw(st.booleans())
    elif kind == "number":
        req.number_value = draw(numbers)
    return req


# ---- tests -----------------------------------------------------------------------------


@EXAMPLES
@given(request=predict_requests())
def test_random_predict_requests_get_clear_answers(
    running: Running, request: pb.PredictRequest
) -> None:
    """Any Predict message: served, or refused with a clear status and nothing counted."""
    reply = check(running, running.predict.Predict, request)
    if reply is not None:
        assert reply.variant in ("stable", "canary") and reply.request_id


@EXAMPLES
@given(request=infer_requests(), user=header_values, segment=header_values)
def test_random_front_door_requests_get_clear_answers(
    running: Running, request: oip.ModelInferRequest, user: str, segment: str
) -> None:
    """Any ModelInfer message and routing headers: served or clearly refused."""
    metadata = (("x-user-id", user), ("x-segment", segment))
    check(running, running.front.ModelInfer, request, metadata=metadata)


@pytest.fixture(scope="module")
def known_ids(running: Running) -> list[str]:
    """Request ids of a few served requests (some by override, some split)."""
    ids = []
    for key in ("vip", "u1", "u2", "", "u3"):
        req = pb.PredictRequest(context=pb.RoutingContext(targeting_key=key, segment="ios"))
        tensor = req.inference.inputs.add(name="x", datatype="FP64", shape=[1])
        tensor.contents.fp64_contents.append(1.0)
        ids.append(running.predict.Predict(req, timeout=10).request_id)
    return ids


@EXAMPLES
@given(data=st.data())
def test_random_outcome_reports_get_clear_answers(
    running: Running, known_ids: list[str], data: st.DataObject
) -> None:
    """Any ReportOutcome message: counted (or a repeat/capped), or refused with a clear
    status (INVALID_ARGUMENT, NOT_FOUND) and nothing counted."""
    request = data.draw(outcome_requests(known_ids))
    reply = check(running, running.predict.ReportOutcome, request)
    if reply is not None:
        assert request.metric in ("converted", "revenue")
        value = request.number_value if request.HasField("number_value") else 0.0
        assert math.isfinite(value)


def test_the_random_messages_reached_both_paths() -> None:
    """(Runs after the tests above.) Some random messages were served, some refused."""
    assert SEEN["served"] > 100 and SEEN["refused"] > 100, SEEN
