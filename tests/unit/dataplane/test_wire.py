"""The front door's byte path: the top-level scan and the appended model fields, checked
against protobuf's own (generated) parser."""

from __future__ import annotations

import grpc
import pytest
from conftest import infer_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar._proto.inference import grpc_predict_v2_pb2 as oip
from sidecar.adapters.upstream.wire import (
    MAX_TOP_LEVEL_FIELDS,
    PARSED_BODY_BYTES,
    Head,
    InferBytes,
    InferReply,
    ScanError,
    head,
    scan,
    with_model,
)
from sidecar.testing.fault_upstream import FaultInjectingUpstream
from sidecar.testing.inprocess import config_dict, running_sidecar

text = st.text(max_size=40)
names = st.text(min_size=1, max_size=12)
DATATYPES = ("FP64", "FP32", "INT64", "INT32", "BYTES", "BOOL")


@st.composite
def infer_requests(draw: st.DrawFn) -> oip.ModelInferRequest:
    """Valid-looking ModelInferRequests: any names, ids, parameters, typed or raw
    contents (the parser's view: nested contents are opaque to the scan)."""
    req = oip.ModelInferRequest(model_name=draw(text), model_version=draw(text), id=draw(text))
    for key in draw(st.lists(names, max_size=3, unique=True)):
        which = draw(st.sampled_from(("bool_param", "int64_param", "string_param")))
        if which == "bool_param":
            req.parameters[key].bool_param = draw(st.booleans())
        elif which == "int64_param":
            req.parameters[key].int64_param = draw(st.integers(-(2**63), 2**63 - 1))
        else:
            req.parameters[key].string_param = draw(text)
    raw = draw(st.booleans())
    for index in range(draw(st.integers(0, 4))):
        values = draw(st.lists(st.floats(allow_nan=False), max_size=8))
        tensor = req.inputs.add(
            name=f"in-{index}", datatype=draw(st.sampled_from(DATATYPES)), shape=[len(values)]
        )
        if raw:
            req.raw_input_contents.append(draw(st.binary(max_size=64)))
        else:
            tensor.contents.fp64_contents.extend(values)
    for name in draw(st.lists(names, max_size=2, unique=True)):
        req.outputs.add(name=name)
    return req


@settings(max_examples=300, deadline=None)
@given(infer_requests(), text, text)
def test_bytes_sent_upstream_parse_to_the_original_with_only_the_model_changed(
    original: oip.ModelInferRequest, model_name: str, model_version: str
) -> None:
    data = original.SerializeToString()
    payload = InferBytes.scanned(data)
    assert payload.head == Head(original.model_name, original.model_version)
    sent = oip.ModelInferRequest.FromString(payload.to(model_name, model_version))
    expected = oip.ModelInferRequest()
    expected.CopyFrom(original)
    expected.model_name = model_name
    expected.model_version = model_version
    assert sent == expected
    assert payload.data == data  # the original is kept for the shadow
    assert payload.message() == original  # the lazy parse is the generated parser's


@settings(max_examples=200, deadline=None)
@given(infer_requests(), text, text, text)
def test_the_last_value_wins_like_protobufs_parser(
    original: oip.ModelInferRequest, first: str, second: str, routed: str
) -> None:
    """Bodies that already repeat the fields (a client appending its own): the scan reads
    what the parser reads; a response renamed for the caller parses with the new name."""
    data = with_model(original.SerializeToString(), Head("", ""), first, second)
    data = with_model(data, Head("", ""), second, first)
    parsed = oip.ModelInferRequest.FromString(data)
    assert scan(data) == Head(parsed.model_name, parsed.model_version)
    reply = oip.ModelInferResponse(model_name=first, model_version=second, id=original.id)
    renamed = oip.ModelInferResponse.FromString(InferReply(reply.SerializeToString()).named(routed))
    assert (renamed.model_name, renamed.model_version, renamed.id) == (routed, second, original.id)


def test_nothing_is_appended_when_the_model_already_matches() -> None:
    data = oip.ModelInferRequest(model_name="m", model_version="v1").SerializeToString()
    assert InferBytes.scanned(data).to("m", "v1") is data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_the_scan_agrees_with_the_parser_or_refuses(data: bytes) -> None:
    """For arbitrary bytes: whatever the scan accepts, the generated parser reads the same
    model name and version from (when it parses at all); the scan never raises anything
    but ScanError."""
    try:
        head = scan(data)
    except ScanError:
        return
    try:
        parsed = oip.ModelInferRequest.FromString(data)
    except Exception:
        return  # nested damage: the upstream's to refuse
    assert head == Head(parsed.model_name, parsed.model_version)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_the_parsed_head_agrees_with_the_scan_and_the_parser_or_refuses(data: bytes) -> None:
    """For arbitrary small bodies (read by protobuf's parser into the two head fields):
    whatever `head` accepts, the scan reads the same (unless it refuses a group, which the
    parser reads as an unknown field) and the generated parser reads the same when it
    parses at all; `head` never raises anything but ScanError."""
    try:
        got = head(data)
    except ScanError:
        return
    try:
        assert scan(data) == got
    except ScanError as exc:
        assert "wire type 3" in str(exc) or "wire type 4" in str(exc)
    try:
        parsed = oip.ModelInferRequest.FromString(data)
    except Exception:
        return  # nested damage: the upstream's to refuse
    assert got == Head(parsed.model_name, parsed.model_version)


@given(infer_requests())
@settings(max_examples=100, deadline=None)
def test_small_and_large_bodies_read_the_same_head(request: oip.ModelInferRequest) -> None:
    """A request read by the parser (small) and the same request grown past
    `PARSED_BODY_BYTES` with raw contents (scanned) give the head the parser reads."""
    small = request.SerializeToString()
    large_request = oip.ModelInferRequest()
    large_request.CopyFrom(request)
    large_request.raw_input_contents.append(b"\0" * (PARSED_BODY_BYTES + 1))
    large = large_request.SerializeToString()
    expected = Head(request.model_name, request.model_version)
    if len(small) <= PARSED_BODY_BYTES:
        assert head(small) == expected
    assert len(large) > PARSED_BODY_BYTES and head(large) == expected


@pytest.mark.parametrize("size", [10, PARSED_BODY_BYTES + 100])
def test_field_1_of_another_wire_type_is_an_unknown_field_as_protobuf_reads_it(
    size: int,
) -> None:
    """Small (parsed) and large (scanned) bodies alike: a varint or fixed field 1 or 2 is
    skipped as protobuf skips it; a string field 1 after it still names the model."""
    padding = oip.ModelInferRequest(raw_input_contents=[b"x" * size]).SerializeToString()
    body = b"\x08\x05" + b"\x11" + b"\0" * 8 + padding + b"\x0a\x01m"
    assert head(body) == Head("m", "") == scan(body)
    assert oip.ModelInferRequest.FromString(body).model_name == "m"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x0a\x05ab", "past the end"),
        (b"\x0a\x02\xff\xfe", "UTF-8"),
        (b"\x0b", "wire type 3"),
        (b"\x00\x01", "field number 0"),
    ],
)
def test_a_small_body_the_parser_refuses_gets_the_scans_reason(body: bytes, reason: str) -> None:
    with pytest.raises(ScanError, match=reason):
        head(body)


def test_the_scan_is_bounded_by_field_count() -> None:
    with pytest.raises(ScanError, match="top-level fields"):
        scan(b"\x18\x01" * (MAX_TOP_LEVEL_FIELDS + 1))  # field 3 as varints
    assert scan(b"\x18\x01" * 10) == Head("", "")


async def test_the_sidecar_sends_the_callers_bytes_with_the_variants_model() -> None:
    """Through the in-process sidecar: the bytes the upstream receives are the caller's
    followed by the variant's model name and version, and parse to the original with only
    those changed."""
    received: list[bytes] = []

    def respond(method: str, data: bytes) -> bytes:
        if method == "ModelInfer":
            received.append(data)
            req = oip.ModelInferRequest.FromString(data)
            return oip.ModelInferResponse(
                model_name=req.model_name, model_version=req.model_version, id=req.id
            ).SerializeToString()
        return oip.ModelReadyResponse(ready=True).SerializeToString()

    async with FaultInjectingUpstream(respond=respond) as up:
        raw = config_dict({"stable": up.address, "canary": up.address}, weights={"stable": 10_000})
        raw["variants"]["stable"]["model_name"] = "classifier-upstream"
        async with running_sidecar(raw) as sc:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{sc.predict_port}")
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            request = infer_request()
            request.id = "abc"
            body = request.SerializeToString()
            answer = oip.ModelInferResponse.FromString(await call(body))
            await channel.close()
    assert received and received[0].startswith(body)
    sent = oip.ModelInferRequest.FromString(received[0])
    request.model_name, request.model_version = "classifier-upstream", "stable"
    assert sent == request
    # the caller sees the routed model's name, the variant's version, its own id
    assert (answer.model_name, answer.model_version, answer.id) == ("classifier", "stable", "abc")


async def test_a_malformed_answer_is_the_upstreams_error() -> None:
    """An upstream answering bytes whose top level is malformed: INTERNAL naming the
    variant, nothing counted as served."""

    def respond(method: str, data: bytes) -> bytes:
        if method == "ModelInfer":
            return b"\x0a\x09classifier"  # a name running past the end
        return oip.ModelReadyResponse(ready=True).SerializeToString()

    async with FaultInjectingUpstream(respond=respond) as up:
        raw = config_dict({"stable": up.address, "canary": up.address}, weights={"stable": 10_000})
        async with running_sidecar(raw) as sc:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{sc.predict_port}")
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(infer_request().SerializeToString())
            await channel.close()
            assert info.value.code() == grpc.StatusCode.INTERNAL
            assert "variant 'stable'" in (info.value.details() or "")
            assert "malformed" in (info.value.details() or "")
            assert sum(sc.dataplane.served.values()) == 0
