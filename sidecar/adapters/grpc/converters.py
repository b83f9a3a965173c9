"""Pure converters between wire messages and the sidecar's values. No server needed.

- `check_infer_request`: structural validation of an Open Inference Protocol request
  (datatypes, shapes against element counts, raw vs typed contents) with messages that
  name the input and what is wrong.
- `decode_outputs`: output tensors -> numpy arrays, typed or raw contents.
- Predict <-> Open Inference Protocol: the sidecar.v1 payload messages are
  wire-identical to the `inference` ones, so conversion is a re-parse of the bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np

from sidecar._proto.inference import grpc_predict_v2_pb2 as oip
from sidecar._proto.sidecar.v1 import predict_pb2 as pb
from sidecar.app.ports import Outputs
from sidecar.errors import InvalidRequest

# Open Inference Protocol datatype -> (typed contents field, numpy dtype, bytes per element).
DATATYPES: dict[str, tuple[str | None, str, int]] = {
    "BOOL": ("bool_contents", "bool", 1),
    "UINT8": ("uint_contents", "<u1", 1),
    "UINT16": ("uint_contents", "<u2", 2),
    "UINT32": ("uint_contents", "<u4", 4),
    "UINT64": ("uint64_contents", "<u8", 8),
    "INT8": ("int_contents", "<i1", 1),
    "INT16": ("int_contents", "<i2", 2),
    "INT32": ("int_contents", "<i4", 4),
    "INT64": ("int64_contents", "<i8", 8),
    "FP16": (None, "<f2", 2),
    "BF16": (None, "<u2", 2),
    "FP32": ("fp32_contents", "<f4", 4),
    "FP64": ("fp64_contents", "<f8", 8),
    "BYTES": ("bytes_contents", "object", 0),
}
CONTENT_FIELDS = (
    "bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents",
    "fp32_contents", "fp64_contents", "bytes_contents",
)  # fmt: skip


def _element_count(shape: Sequence[int]) -> int:
    return math.prod(shape) if shape else 1


def _bytes_elements(raw: bytes) -> list[bytes] | None:
    """Split a raw BYTES tensor (4-byte little-endian length prefix per element)."""
    out: list[bytes] = []
    pos = 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            return None
        (size,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + size > len(raw):
            return None
        out.append(raw[pos : pos + size])
        pos += size
    return out


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
    seen: set[str] = set()
    for index, tensor in enumerate(inputs):
        name = tensor.name
        label = f"input {name!r}" if name else f"input #{index}"
        if not name:
            raise InvalidRequest(f"{label}: name is empty")
        if name in seen:
            raise InvalidRequest(f"{label}: duplicate input name")
        seen.add(name)
        spec = DATATYPES.get(tensor.datatype)
        if spec is None:
            raise InvalidRequest(
                f"{label}: unknown datatype {tensor.datatype!r}; expected one of "
                f"{', '.join(DATATYPES)}"
            )
        field, _, size = spec
        shape = list(tensor.shape)
        if any(d < 0 for d in shape):
            raise InvalidRequest(f"{label}: shape {shape} has a negative dimension")
        count = _element_count(shape)
        filled = [f for f in CONTENT_FIELDS if len(getattr(tensor.contents, f))]
        if raw:
            if filled:
                raise InvalidRequest(f"{label}: has both raw_input_contents and typed contents")
            data = raw[index]
            if tensor.datatype == "BYTES":
                elements = _bytes_elements(data)
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
                    f"{label}: shape {shape} needs {count} elements, raw contents hold {got}"
                )
            continue
        if field is None:
            raise InvalidRequest(
                f"{label}: datatype {tensor.datatype} travels only as raw contents"
            )
        wrong = [f for f in filled if f != field]
        if wrong:
            raise InvalidRequest(
                f"{label}: datatype {tensor.datatype} takes {field}, but data is in {wrong[0]}"
            )
        got = len(getattr(tensor.contents, field))
        if got != count:
            raise InvalidRequest(
                f"{label}: shape {shape} needs {count} elements, contents hold {got}"
            )


def decode_outputs(response: oip.ModelInferResponse) -> Outputs:
    """Output tensors as numpy arrays shaped as declared (BYTES -> object arrays)."""
    out: dict[str, np.ndarray] = {}
    raw = response.raw_output_contents
    for index, tensor in enumerate(response.outputs):
        spec = DATATYPES.get(tensor.datatype)
        shape = tuple(tensor.shape)
        if spec is None:
            out[tensor.name] = np.array([f"<unknown datatype {tensor.datatype}>"], dtype=object)
            continue
        field, dtype, _ = spec
        try:
            if raw and index < len(raw):
                if tensor.datatype == "BYTES":
                    arr = np.array(_bytes_elements(raw[index]) or [], dtype=object)
                else:
                    arr = np.frombuffer(raw[index], dtype=np.dtype(dtype))
            elif field is not None:
                values = getattr(tensor.contents, field)
                if tensor.datatype == "BYTES":
                    arr = np.array(list(values), dtype=object)
                else:
                    arr = np.asarray(values, dtype=np.dtype(dtype))
            else:
                arr = np.array([], dtype=np.dtype(dtype))
            out[tensor.name] = (
                arr.reshape(shape) if shape and arr.size == _element_count(shape) else arr
            )
        except (ValueError, TypeError) as exc:
            out[tensor.name] = np.array([f"<undecodable: {exc}>"], dtype=object)
    return out


def predict_to_oip(payload: pb.InferRequest) -> oip.ModelInferRequest:
    """sidecar.v1.InferRequest -> inference.ModelInferRequest (wire-identical)."""
    return oip.ModelInferRequest.FromString(payload.SerializeToString())


def oip_to_predict(response: oip.ModelInferResponse) -> pb.InferResponse:
    """inference.ModelInferResponse -> sidecar.v1.InferResponse (wire-identical)."""
    return pb.InferResponse.FromString(response.SerializeToString())
