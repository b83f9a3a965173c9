"""Converter bounds: tensor names and shape ranks are bounded, and refusal messages stay
short whatever the client sent."""

from __future__ import annotations

import pytest

from sidecar._proto.inference import grpc_predict_v2_pb2 as oip
from sidecar.adapters.grpc.converters import (
    MAX_RANK,
    MAX_TENSOR_NAME_BYTES,
    check_infer_request,
    shown,
)
from sidecar.errors import InvalidRequest


def request(
    name: str = "x", shape: tuple[int, ...] = (2,), datatype: str = "FP64"
) -> oip.ModelInferRequest:
    req = oip.ModelInferRequest(model_name="m")
    tensor = req.inputs.add(name=name, datatype=datatype, shape=list(shape))
    tensor.contents.fp64_contents.extend([1.0, 2.0])
    return req


@pytest.mark.parametrize(
    ("req", "text"),
    [
        (
            request(name="n" * (MAX_TENSOR_NAME_BYTES + 1)),
            "input #0: name is 257 bytes; at most 256",
        ),
        (request(name="é" * 129), "input #0: name is 258 bytes"),
        (request(shape=(1,) * (MAX_RANK + 1)), "shape has 33 dimensions; at most 32"),
        (request(datatype="D" * (1 << 20)), "unknown datatype 'DDDD"),
    ],
)
def test_oversized_names_and_shapes_are_refused_briefly(
    req: oip.ModelInferRequest, text: str
) -> None:
    """Each is INVALID_ARGUMENT with a message under 300 characters naming the problem."""
    with pytest.raises(InvalidRequest) as info:
        check_infer_request(req)
    assert text in info.value.message and len(info.value.message) < 300, info.value.message


def test_the_largest_allowed_name_and_rank_pass() -> None:
    """256-byte names, 32 dimensions and requested outputs of 256 bytes are accepted."""
    req = request(name="n" * MAX_TENSOR_NAME_BYTES, shape=(2,) + (1,) * (MAX_RANK - 1))
    req.outputs.add(name="o" * MAX_TENSOR_NAME_BYTES)
    check_infer_request(req)
    req.outputs.add(name="o" * (MAX_TENSOR_NAME_BYTES + 1))
    with pytest.raises(InvalidRequest, match=r"outputs\[1\]: name is 257 bytes"):
        check_infer_request(req)
    assert shown("a" * 1000).endswith("(1000 chars)") and len(shown("a" * 1000)) < 100
