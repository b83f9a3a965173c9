"""Pure converters between wire messages and the sidecar's values. No server needed.

- `check_infer_request`: structural validation of an Open Inference Protocol request
  (datatypes, shapes against element counts, raw vs typed contents, tensor names of at
  most `MAX_TENSOR_NAME_BYTES`) with messages that name the input and what is wrong.
- `decode_outputs` (from `sidecar.core.tensors`): output tensors -> numpy arrays.
- Predict <-> Open Inference Protocol: the sidecar.v1 payload messages are
  wire-identical to the `inference` ones, so conversion is a re-parse of the bytes.
"""

from __future__ import annotations

from sidecar._proto.inference import grpc_predict_v2_pb2 as oip
from sidecar._proto.sidecar.v1 import predict_pb2 as pb
from sidecar.core.limits import fits, shown
from sidecar.core.tensors import (
    CONTENT_FIELDS,
    DATATYPES,
    decode_outputs,
    element_count,
    split_bytes_elements,
)
from sidecar.errors import InvalidRequest

__all__ = [
    "MAX_TENSOR_NAME_BYTES",
    "check_infer_request",
    "decode_outputs",
    "oip_to_predict",
    "predict_to_oip",
    "shown",
]

MAX_TENSOR_NAME_BYTES = 256  # input and requested output names (drift keeps input names)
MAX_RANK = 32  # dimensions of an input's shape (numpy's classic limit)


def check_infer_request(request: oip.ModelInferRequest) -> None:
    """Raise `InvalidRequest` naming the input and the problem, or return None."""
    inputs = request.inputs
    if not inputs:
        raise InvalidRequest("missing inputs: the request has no input tensors")
    raw = request.raw_input_contents
    if raw and len(raw) != len(inputs):
        raise InvalidRequest(
            f"raw_input_contents has {len(raw)} entries for {len(inputs)} inputs; "
            "with raw contents every input takes its data from there"
        )
    for index, wanted in enumerate(request.outputs):
        if _too_long(wanted.name):
            raise InvalidRequest(
                f"outputs[{index}]: name is {len(wanted.name.encode())} bytes; at most "
                f"{MAX_TENSOR_NAME_BYTES}"
            )
    seen: set[str] = set()
    for index, tensor in enumerate(inputs):
        label = _check_name(tensor, index, seen)
        field, size = _check_datatype(tensor, label)
        count = _check_shape(tensor, label)
        filled = [f for f in CONTENT_FIELDS if len(getattr(tensor.contents, f))]
        if raw:
            if filled:
                raise InvalidRequest(f"{label}: has both raw_input_contents and typed contents")
            _check_raw_contents(tensor, label, raw[index], size, count)
        else:
            _check_typed_contents(tensor, label, field, filled, count)


Tensor = oip.ModelInferRequest.InferInputTensor


def _check_name(tensor: Tensor, index: int, seen: set[str]) -> str:
    """The input's label for messages; its name must be set and unique (added to `seen`)."""
    name = tensor.name
    if _too_long(name):
        raise InvalidRequest(
            f"input #{index}: name is {len(name.encode())} bytes; at most {MAX_TENSOR_NAME_BYTES}"
        )
    label = f"input {name!r}" if name else f"input #{index}"
    if not name:
        raise InvalidRequest(f"{label}: name is empty")
    if name in seen:
        raise InvalidRequest(f"{label}: duplicate input name")
    seen.add(name)
    return label


def _too_long(name: str) -> bool:
    return not fits(name, MAX_TENSOR_NAME_BYTES)


def _check_datatype(tensor: Tensor, label: str) -> tuple[str | None, int]:
    """(typed contents field or None for raw-only, element size in bytes)."""
    spec = DATATYPES.get(tensor.datatype)
    if spec is None:
        raise InvalidRequest(
            f"{label}: unknown datatype {shown(tensor.datatype)}; "
            f"expected one of {', '.join(DATATYPES)}"
        )
    field, _, size = spec
    return field, size


def _check_shape(tensor: Tensor, label: str) -> int:
    """The element count the shape needs."""
    if len(tensor.shape) > MAX_RANK:
        raise InvalidRequest(
            f"{label}: shape has {len(tensor.shape)} dimensions; at most {MAX_RANK}"
        )
    shape = list(tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidRequest(f"{label}: shape {shape} has a negative dimension")
    return element_count(shape)


def _check_raw_contents(tensor: Tensor, label: str, data: bytes, size: int, count: int) -> None:
    if tensor.datatype == "BYTES":
        elements = split_bytes_elements(data)
        if elements is None:
            raise InvalidRequest(f"{label}: raw BYTES data is not length-prefixed")
        got = len(elements)
    else:
        if len(data) % size:
            raise InvalidRequest(
                f"{label}: {len(data)} raw bytes is not a whole number of "
                f"{tensor.datatype} elements"
            )
        got = len(data) // size
    if got != count:
        raise InvalidRequest(
            f"{label}: shape {list(tensor.shape)} needs {count} elements, raw contents hold {got}"
        )


def _check_typed_contents(
    tensor: Tensor, label: str, field: str | None, filled: list[str], count: int
) -> None:
    if field is None:
        raise InvalidRequest(f"{label}: datatype {tensor.datatype} travels only as raw contents")
    wrong = [f for f in filled if f != field]
    if wrong:
        raise InvalidRequest(
            f"{label}: datatype {tensor.datatype} takes {field}, but data is in {wrong[0]}"
        )
    got = len(getattr(tensor.contents, field))
    if got != count:
        raise InvalidRequest(
            f"{label}: shape {list(tensor.shape)} needs {count} elements, contents hold {got}"
        )


def predict_to_oip(payload: pb.InferRequest) -> oip.ModelInferRequest:
    """sidecar.v1.InferRequest -> inference.ModelInferRequest (wire-identical)."""
    return oip.ModelInferRequest.FromString(payload.SerializeToString())


def oip_to_predict(response: oip.ModelInferResponse) -> pb.InferResponse:
    """inference.ModelInferResponse -> sidecar.v1.InferResponse (wire-identical)."""
    return pb.InferResponse.FromString(response.SerializeToString())
