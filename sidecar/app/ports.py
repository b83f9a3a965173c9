"""The I/O boundaries the application layer talks to, as Protocols.

Adapters implement them (`sidecar/adapters/...`); tests and `sidecar/testing` provide
in-memory ones. The application layer never imports an adapter or generated code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, TypeVar

import numpy as np

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Req_contra = TypeVar("Req_contra", contravariant=True)
Resp_co = TypeVar("Resp_co", covariant=True)

Metadata = Sequence[tuple[str, str]]
Outputs = Mapping[str, np.ndarray]


class Upstream(Protocol[Req_contra, Resp_co]):
    """One model variant's upstream: an Open Inference Protocol model server.

    `infer` may set the request's model name and version for this variant (the upstream
    takes ownership of the request for the duration of the call). Failures raise
    `sidecar.errors.UpstreamError` carrying the upstream's status.
    """

    name: str

    async def infer(
        self, request: Req_contra, *, timeout: float, metadata: Metadata
    ) -> Resp_co: ...

    async def ready(self, *, timeout: float) -> bool: ...
