"""The Open Inference Protocol `ModelInfer` call as bytes: a minimal top-level field scan,
the variant's model name and version appended (protobuf's last-value-wins rule), and
request / answer values that parse only when something asks for the message.

The front door forwards the caller's bytes; only requests sampled for the shadow or for
drift are ever parsed, in the background task that handles them.

Reading the head (`head`): a body of at most `PARSED_BODY_BYTES` (16 KiB) is read by
protobuf's own C parser (upb) into a two-field message (`model_name` = 1, `model_version` =
2; every other field stays an unparsed unknown field, so nested messages are not checked);
a larger one is scanned in Python (`scan`), because upb keeps a copy of every unknown
field (2.2 ms for one 4 MiB tensor, where the scan takes 0.04 ms). For the small bodies
most requests and answers are, the parser reads the head in about a third of the scan's
CPU instructions. A body the parser refuses is scanned for a precise reason.

Scan conventions (`scan`, the same reading as the parser's): only the top level of the
message is walked (tag, wire type, length); nested messages are the upstream's to validate.
At most `MAX_TOP_LEVEL_FIELDS` (4096) fields (a valid request has about two per input
tensor plus its parameters), a field number in 1..2^29-1, no field running past the end; a
string field (model_name, model_version) must be valid UTF-8, as proto3 requires; the last
value of a field wins; field 1 or 2 with another wire type is an unknown field, as
protobuf (and so the upstream) reads it. One difference: the scan refuses groups (wire
types 3 and 4, never used by the protocol), which the parser reads as unknown fields when
they are well formed. Field numbers of `ModelInferRequest` and `ModelInferResponse` agree
for 1 (model_name) and 2 (model_version), so one reading serves both.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from sidecar._proto.inference import grpc_predict_v2_pb2 as oip
from sidecar.adapters.upstream.trailers import NO_TRAILERS, Trailers
from sidecar.errors import InvalidRequest

# A request has about two top-level fields per input tensor (the tensor and its raw
# contents) plus one per requested output and per parameter; the bound keeps a hostile
# body of tiny fields to about a millisecond of scanning.
MAX_TOP_LEVEL_FIELDS = 4096
# Bodies up to this size have their head read by protobuf's parser (see the module
# docstring); a hostile body of this size made of tiny fields costs the parser ~0.1 ms.
PARSED_BODY_BYTES = 16 * 1024
_LEN = 2  # wire type: length-delimited
_NAME_TAG = b"\x0a"  # field 1, length-delimited
_VERSION_TAG = b"\x12"  # field 2, length-delimited


class Head(NamedTuple):
    """What the scan read: the effective model name and version."""

    model_name: str
    model_version: str


# A NamedTuple's own constructor is a Python-level `__new__`; the request path builds its
# tuples with the C one (`tuple.__new__(Cls, values)`): about 1,400 fewer CPU instructions
# each (callgrind), the same object.
_new = tuple.__new__


class ScanError(InvalidRequest):
    """The body is not a well-formed protobuf message at its top level."""


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """(value, next position) of the varint at `pos`; at most 10 bytes."""
    result = shift = 0
    while pos < end and shift < 70:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise ScanError("malformed request: truncated or overlong varint")


def _skip(data: bytes, pos: int, end: int, wire: int) -> int:
    """The position after a field's value of wire type `wire` starting at `pos`."""
    if wire == 0:
        return _varint(data, pos, end)[1]
    if wire == 1:
        pos += 8
    elif wire == 5:
        pos += 4
    elif wire == _LEN:
        size, pos = _varint(data, pos, end)
        pos += size
    else:
        raise ScanError(f"malformed request: wire type {wire} is not used by the protocol")
    if pos > end:
        raise ScanError("malformed request: a field runs past the end of the message")
    return pos


def _text(data: bytes, at: tuple[int, int], field: str) -> str:
    try:
        return data[at[0] : at[1]].decode()
    except UnicodeDecodeError:
        raise ScanError(f"malformed request: {field} is not valid UTF-8") from None


def scan(data: bytes, max_fields: int = MAX_TOP_LEVEL_FIELDS) -> Head:
    """The model name and version of a serialised `ModelInferRequest` (or response);
    `ScanError` (INVALID_ARGUMENT) when its top level is malformed. One-byte keys and
    lengths (the common case) are read inline; a field takes at least two bytes, so the
    field count is only checked for bodies longer than `2 * max_fields` bytes."""
    name_at = version_at = None
    pos, end = 0, len(data)
    fields = 0 if end > 2 * max_fields else -(1 << 62)  # short bodies: the bound holds
    while pos < end:
        fields += 1
        if fields > max_fields:
            raise ScanError(f"malformed request: more than {max_fields} top-level fields")
        tag = data[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = _varint(data, pos, end)
        wire = tag & 7
        if wire == _LEN and 8 <= tag < 1 << 32:  # length-delimited, field 1..2^29-1
            size = data[pos] if pos < end else 0x80
            if size < 0x80:
                pos += 1
            else:
                size, pos = _varint(data, pos, end)
            start, pos = pos, pos + size
            if pos > end:
                raise ScanError("malformed request: a field runs past the end of the message")
            if tag == 0x0A:
                name_at = (start, pos)
            elif tag == 0x12:
                version_at = (start, pos)
            continue
        number = tag >> 3
        if not 0 < number < 1 << 29:
            raise ScanError(f"malformed request: field number {number}")
        pos = _skip(data, pos, end, wire)  # field 1 or 2 of another type too: unknown
    return _new(
        Head,
        (
            _text(data, name_at, "model_name") if name_at else "",
            _text(data, version_at, "model_version") if version_at else "",
        ),
    )


def _head_message() -> type[Message]:
    """A message type with only the two head fields (built here: no generated code)."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="sidecar/internal/head.proto", package="sidecar.internal", syntax="proto3"
    )
    message = proto.message_type.add(name="Head")
    for number, name in ((1, "model_name"), (2, "model_version")):
        message.field.add(
            name=name,
            number=number,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)  # type: ignore[no-untyped-call]
    found = pool.FindMessageTypeByName("sidecar.internal.Head")  # type: ignore[no-untyped-call]
    return message_factory.GetMessageClass(found)


# its fields are read by name: Any (the class is built at run time, no stub has it)
_parse_head: Callable[[bytes], Any] = _head_message().FromString


def head(data: bytes) -> Head:
    """The model name and version of a serialised `ModelInferRequest` (or response): read
    by protobuf's parser when `data` is at most `PARSED_BODY_BYTES`, else by `scan`;
    `ScanError` (INVALID_ARGUMENT) when its top level is malformed."""
    if len(data) > PARSED_BODY_BYTES:
        return scan(data)
    try:
        parsed = _parse_head(data)
    except DecodeError:
        scan(data)  # raises with the precise reason
        raise ScanError("malformed request: protobuf cannot parse its top level") from None
    return _new(Head, (parsed.model_name, parsed.model_version))


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@functools.lru_cache(maxsize=256)
def string_field(tag: bytes, value: str) -> bytes:
    """One length-delimited field (`tag` is its encoded key). Cached: the request path
    appends only configured names (variants' models and versions, routed models), never
    a caller's words, so the cache holds a bounded set."""
    raw = value.encode()
    return tag + _encode_varint(len(raw)) + raw


def with_model(data: bytes, head: Head, model_name: str, model_version: str) -> bytes:
    """`data` with `model_name` / `model_version` in effect: appended fields (last value
    wins) where `head` (the scan of `data`) differs; `data` itself when both already
    match."""
    suffix = b""
    if head.model_name != model_name:
        suffix = string_field(_NAME_TAG, model_name)
    if head.model_version != model_version:
        suffix += string_field(_VERSION_TAG, model_version)
    return data + suffix if suffix else data


class InferBytes:
    """A `ModelInferRequest` as the caller sent it, parsed only on demand."""

    __slots__ = ("_message", "data", "head")

    def __init__(self, data: bytes, head: Head, message: oip.ModelInferRequest | None = None):
        self.data = data
        self.head = head
        self._message = message

    @classmethod
    def scanned(cls, data: bytes) -> InferBytes:
        """From the caller's bytes: `ScanError` when its top level is malformed."""
        return cls(data, head(data))

    @classmethod
    def of(cls, message: oip.ModelInferRequest) -> InferBytes:
        """From a message (the Predict API): serialised once, the message kept."""
        return cls(
            message.SerializeToString(),
            Head(message.model_name, message.model_version),
            message,
        )

    def message(self) -> oip.ModelInferRequest:
        """The parsed request (off the request path: shadow and drift tasks)."""
        if self._message is None:
            self._message = oip.ModelInferRequest.FromString(self.data)
        return self._message

    def to(self, model_name: str, model_version: str) -> bytes:
        """The bytes to send a variant's model."""
        return with_model(self.data, self.head, model_name, model_version)


class InferReply:
    """An upstream's `ModelInferResponse` bytes, parsed only on demand, and the trailing
    metadata the app gets from it (`trailers.passed_trailers`; usually none)."""

    __slots__ = ("_head", "_message", "data", "trailers")

    def __init__(self, data: bytes, trailers: Trailers = NO_TRAILERS) -> None:
        self.data = data
        self.trailers = trailers
        self._head: Head | None = None
        self._message: oip.ModelInferResponse | None = None

    @property
    def head(self) -> Head:
        """The answer's model name and version (scanned once)."""
        if self._head is None:
            self._head = head(self.data)
        return self._head

    @property
    def model_version(self) -> str:
        return self.head.model_version

    def message(self) -> oip.ModelInferResponse:
        if self._message is None:
            self._message = oip.ModelInferResponse.FromString(self.data)
        return self._message

    def named(self, model_name: str) -> bytes:
        """The answer's bytes with `model_name` in effect (the sidecar's routed name)."""
        head = self.head
        return with_model(self.data, head, model_name, head.model_version)
