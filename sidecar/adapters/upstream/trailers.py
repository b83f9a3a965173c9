"""The upstream's response trailers (trailing metadata) that reach the app.

A model server may answer with trailing metadata of its own (MLServer sends the
`parameters.headers` a model puts on its response). The front door's `ModelInfer`
passes them on, on success and on failure, after this filter:

- names gRPC and HTTP/2 own are dropped: `grpc-*`, pseudo-headers (`:*`), and the
  hop-by-hop / transport names in `DROPPED` (`content-type`, `te`, ...);
- the sidecar's own `x-variant` and `x-request-id` win: the upstream's are dropped;
- at most `MAX_TRAILERS` entries and `MAX_TRAILER_BYTES` bytes of names and values in
  all, in the upstream's order (the rest is dropped): the app's gRPC client limits the
  whole metadata block (8 KiB by default), which also holds the status and its message.

No trailers (the usual case) costs nothing: the shared empty tuple, no copy.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Trailers = tuple[tuple[str, str | bytes], ...]

NO_TRAILERS: Trailers = ()
MAX_TRAILERS = 16
MAX_TRAILER_BYTES = 4096
SIDECAR_OWN = frozenset({"x-variant", "x-request-id"})
TRANSPORT = frozenset(
    {
        "content-type",
        "content-length",
        "te",
        "trailer",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "proxy-connection",
        "user-agent",
        "host",
    }
)
DROPPED = TRANSPORT | SIDECAR_OWN  # a routed answer: the sidecar sets its own


def passed_trailers(raw: Iterable[Any] | None, dropped: frozenset[str] = DROPPED) -> Trailers:
    """The entries of the upstream's trailing metadata ((key, value) pairs, as gRPC gives
    them) that the app gets (see the module); `dropped`: the names never passed (the
    pass-through, which sets no trailers of its own, passes `TRANSPORT`)."""
    if not raw:
        return NO_TRAILERS
    kept: list[tuple[str, str | bytes]] = []
    used = 0
    for key, value in raw:
        name = str(key).lower()
        if name.startswith(("grpc-", ":")) or name in dropped:
            continue
        size = len(name) + (len(value) if isinstance(value, bytes) else len(value.encode()))
        if len(kept) == MAX_TRAILERS or used + size > MAX_TRAILER_BYTES:
            break
        used += size
        kept.append((name, value))
    return tuple(kept) if kept else NO_TRAILERS
