"""Open Inference Protocol tensors <-> numpy, over any message with the protocol's field
names (``inference.*`` or the wire-identical ``sidecar.v1.*``). Pure: numpy only.

Datatype conventions (Open Inference Protocol "Tensor Data Types"): typed contents use
the field named in `DATATYPES`; raw contents are little-endian, row-major; BYTES raw
elements carry a 4-byte little-endian length prefix; FP16 and BF16 travel raw only
(BF16 is decoded as its uint16 bit pattern).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# datatype -> (typed contents field or None, numpy dtype, bytes per element; 0 = variable)
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
_NUMPY_TO_DATATYPE = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
}


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape) if shape else 1


def split_bytes_elements(raw: bytes) -> list[bytes] | None:
    """Split a raw BYTES tensor into its elements; None when it is not length-prefixed."""
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


def datatype_of(array: np.ndarray) -> str:
    """The protocol datatype for a numpy array (object/str/bytes arrays are BYTES)."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    try:
        return _NUMPY_TO_DATATYPE[array.dtype]
    except KeyError:
        raise ValueError(f"no Open Inference Protocol datatype for numpy {array.dtype}") from None


def fill_input(tensor: Any, name: str, array: np.ndarray) -> None:
    """Fill an input tensor message (name, datatype, shape, typed contents) from numpy."""
    datatype = datatype_of(array)
    field = DATATYPES[datatype][0]
    if field is None:
        raise ValueError(f"{datatype} travels only as raw contents")
    tensor.name = name
    tensor.datatype = datatype
    tensor.shape.extend(array.shape)
    flat = array.reshape(-1)
    if datatype == "BYTES":
        values = [v if isinstance(v, bytes) else str(v).encode() for v in flat.tolist()]
        getattr(tensor.contents, field).extend(values)
    else:
        getattr(tensor.contents, field).extend(flat.tolist())


def _decode_tensors(
    tensors: Any, raw: Sequence[bytes], *, strict_raw: bool
) -> Mapping[str, np.ndarray]:
    """Tensors as numpy arrays, shaped as declared; never raises (an undecodable tensor
    becomes a one-element object array describing the problem). `strict_raw`: when raw
    contents are used at all, every tensor must have its raw entry, and BYTES must be
    length-prefixed (the protocol's rule for requests)."""
    out: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(tensors):
        spec = DATATYPES.get(tensor.datatype)
        shape = tuple(tensor.shape)
        if spec is None:
            out[tensor.name] = np.array([f"<unknown datatype {tensor.datatype}>"], dtype=object)
            continue
        field, dtype, _ = spec
        try:
            if raw and (strict_raw or index < len(raw)):
                if index >= len(raw):
                    raise ValueError(f"no raw contents entry for tensor {index}")
                if tensor.datatype == "BYTES":
                    elements = split_bytes_elements(raw[index])
                    if elements is None and strict_raw:
                        raise ValueError("BYTES raw contents are not length-prefixed")
                    arr = np.array(elements or [], dtype=object)
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
            if shape and arr.size == element_count(shape):
                arr = arr.reshape(shape)
            out[tensor.name] = arr
        except (ValueError, TypeError, OverflowError) as exc:
            out[tensor.name] = np.array([f"<undecodable: {exc}>"], dtype=object)
    return out


def decode_outputs(response: Any) -> Mapping[str, np.ndarray]:
    """Output tensors of a ModelInferResponse-like message as numpy arrays, shaped as
    declared. Never raises: an undecodable tensor becomes a one-element object array
    describing the problem (so a comparison reports it instead of crashing)."""
    return _decode_tensors(response.outputs, response.raw_output_contents, strict_raw=False)


def decode_inputs(request: Any) -> Mapping[str, np.ndarray]:
    """Input tensors of a ModelInferRequest-like message as numpy arrays, shaped as
    declared: the request side of `decode_outputs`, with the same conventions. When
    `raw_input_contents` is used every input takes its data from there (FP16/BF16 travel
    only that way), else from the typed `contents`. BYTES become object arrays of bytes.
    Never raises: an undecodable tensor becomes a one-element object array describing
    the problem (non-numeric, so numeric consumers skip it)."""
    return _decode_tensors(request.inputs, request.raw_input_contents, strict_raw=True)
