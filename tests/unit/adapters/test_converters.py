"""Converters, tested without a server: request checks, output decoding, wire identity."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from sidecar._proto.inference import grpc_predict_v2_pb2 as oip
from sidecar._proto.sidecar.v1 import predict_pb2 as pb
from sidecar.adapters.grpc.converters import (
    check_infer_request,
    decode_outputs,
    oip_to_predict,
    predict_to_oip,
)
from sidecar.core.tensors import fill_input
from sidecar.errors import InvalidRequest


def request_with(
    datatype: str, shape: list[int], **contents: list[object]
) -> oip.ModelInferRequest:
    req = oip.ModelInferRequest(model_name="m")
    t = req.inputs.add(name="x", datatype=datatype, shape=shape)
    for field, values in contents.items():
        getattr(t.contents, field).extend(values)
    return req


GOOD = [
    request_with("FP64", [2, 2], fp64_contents=[1.0, 2.0, 3.0, 4.0]),
    request_with("FP32", [3], fp32_contents=[1.0, 2.0, 3.0]),
    request_with("INT8", [2], int_contents=[1, -1]),
    request_with("UINT64", [1], uint64_contents=[7]),
    request_with("BOOL", [2], bool_contents=[True, False]),
    request_with("BYTES", [2], bytes_contents=[b"a", b"bc"]),
    request_with("FP64", [], fp64_contents=[1.0]),
]


@pytest.mark.parametrize("request_", GOOD)
def test_well_formed_requests_pass(request_: oip.ModelInferRequest) -> None:
    """Typed contents in the datatype's field with the shape's element count pass."""
    check_infer_request(request_)


def test_raw_contents_are_checked_against_shape() -> None:
    """Raw inputs: byte length must be shape x element size; BYTES must be length-prefixed."""
    req = request_with("FP32", [2, 2])
    req.raw_input_contents.append(np.zeros(4, "<f4").tobytes())
    check_infer_request(req)
    req.raw_input_contents[0] = np.zeros(3, "<f4").tobytes()
    with pytest.raises(InvalidRequest, match="needs 4 elements, raw contents hold 3"):
        check_infer_request(req)
    req.raw_input_contents[0] = b"\x00" * 7
    with pytest.raises(InvalidRequest, match="whole number"):
        check_infer_request(req)
    bytes_req = request_with("BYTES", [2])
    bytes_req.raw_input_contents.append(struct.pack("<I", 1) + b"a" + struct.pack("<I", 2) + b"bc")
    check_infer_request(bytes_req)
    bytes_req.raw_input_contents[0] = struct.pack("<I", 9) + b"a"
    with pytest.raises(InvalidRequest, match="length-prefixed"):
        check_infer_request(bytes_req)


BAD = [
    (oip.ModelInferRequest(model_name="m"), "missing inputs"),
    (request_with("FLOAT", [1], fp32_contents=[1.0]), "unknown datatype 'FLOAT'"),
    (request_with("FP64", [2, 2], fp64_contents=[1.0]), "needs 4 elements, contents hold 1"),
    (request_with("FP64", [2], fp32_contents=[1.0, 2.0]), "takes fp64_contents"),
    (request_with("FP64", [-1, 2], fp64_contents=[1.0, 2.0]), "negative dimension"),
    (request_with("FP16", [1], fp32_contents=[1.0]), "only as raw contents"),
]


@pytest.mark.parametrize(("request_", "message"), BAD)
def test_malformed_requests_are_named(request_: oip.ModelInferRequest, message: str) -> None:
    """Each structural problem is an InvalidRequest naming the input and the problem."""
    with pytest.raises(InvalidRequest, match=message):
        check_infer_request(request_)


def test_raw_count_and_mixed_contents_are_refused() -> None:
    """raw_input_contents must cover every input, and never mix with typed contents."""
    req = request_with("FP64", [1], fp64_contents=[1.0])
    req.raw_input_contents.append(np.zeros(1).tobytes())
    with pytest.raises(InvalidRequest, match="both raw_input_contents and typed"):
        check_infer_request(req)
    req.inputs.add(name="y", datatype="FP64", shape=[1])
    with pytest.raises(InvalidRequest, match="1 entries for 2 inputs"):
        check_infer_request(req)
    dup = request_with("FP64", [1], fp64_contents=[1.0])
    dup.inputs.add(name="x", datatype="FP64", shape=[1]).contents.fp64_contents.append(2.0)
    with pytest.raises(InvalidRequest, match="duplicate"):
        check_infer_request(dup)


def test_decode_outputs_typed_raw_and_bytes() -> None:
    """Outputs decode to numpy with their declared shapes, from typed or raw contents."""
    typed = oip.ModelInferResponse()
    out = typed.outputs.add(name="predict", datatype="INT64", shape=[2, 1])
    out.contents.int64_contents.extend([3, 4])
    got = decode_outputs(typed)["predict"]
    assert got.shape == (2, 1) and got.tolist() == [[3], [4]]

    raw = oip.ModelInferResponse()
    raw.outputs.add(name="proba", datatype="FP32", shape=[1, 3])
    raw.outputs.add(name="names", datatype="BYTES", shape=[2])
    raw.raw_output_contents.append(np.array([0.1, 0.2, 0.7], "<f4").tobytes())
    raw.raw_output_contents.append(struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c")
    decoded = decode_outputs(raw)
    np.testing.assert_allclose(decoded["proba"], [[0.1, 0.2, 0.7]], rtol=1e-6)
    assert decoded["names"].tolist() == [b"ab", b"c"]

    broken = oip.ModelInferResponse()
    broken.outputs.add(name="z", datatype="NOPE", shape=[1])
    assert "unknown datatype" in str(decode_outputs(broken)["z"][0])


def test_predict_payload_is_wire_identical_to_oip() -> None:
    """sidecar.v1.InferRequest/InferResponse have the OIP field numbers and types, so the
    bytes of one parse losslessly as the other."""
    pairs = [
        (pb.InferRequest.DESCRIPTOR, oip.ModelInferRequest.DESCRIPTOR),
        (pb.InferResponse.DESCRIPTOR, oip.ModelInferResponse.DESCRIPTOR),
        (pb.InferParameter.DESCRIPTOR, oip.InferParameter.DESCRIPTOR),
        (pb.InferTensorContents.DESCRIPTOR, oip.InferTensorContents.DESCRIPTOR),
    ]

    def shape(desc: object, depth: int = 0) -> list[tuple[object, ...]]:
        fields = []
        for f in desc.fields:  # type: ignore[attr-defined]
            sub = shape(f.message_type, depth + 1) if f.message_type and depth < 3 else []
            fields.append((f.number, f.name, f.type, f.is_repeated, tuple(sub)))
        return sorted(fields)

    for ours, theirs in pairs:
        assert shape(ours) == shape(theirs), ours.full_name

    req = pb.InferRequest(model_name="m", id="7")
    fill_input(req.inputs.add(), "x", np.arange(6, dtype=np.float64).reshape(2, 3))
    req.parameters["p"].int64_param = 3
    converted = predict_to_oip(req)
    assert converted.inputs[0].shape == [2, 3] and converted.parameters["p"].int64_param == 3
    resp = oip.ModelInferResponse(model_name="m")
    resp.outputs.add(name="o", datatype="FP64", shape=[1]).contents.fp64_contents.append(1.5)
    assert oip_to_predict(resp).outputs[0].contents.fp64_contents[0] == 1.5
