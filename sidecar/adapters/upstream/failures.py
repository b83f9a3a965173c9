"""What an upstream failure tells the app, and what it tells the operator.

The app (Predict and the OIP front door) learns the status and the variant's name, never
the model server's address or gRPC's debug string: `app_message` builds that text.
Transport failures (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED: gRPC's own words, which
name the peer) get a fixed sentence; any other status is the model server's answer (a
tensor it refused, a model it does not have), passed on with every address-like part
replaced by "<upstream>".

The operator gets the whole story in the sidecar's log: `FailureLog` writes one warning
`upstream.failed` (variant, address, status, the upstream's details, gRPC's debug string)
for the first failure of a kind (variant, status) and then at most one per `every`
seconds for that kind, with `suppressed`: how many were not logged since the last one. A
dead canary under load is one line every 10 s, not thousands.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger("sidecar.upstream")

TRANSPORT = {
    "UNAVAILABLE": "is unavailable",
    "DEADLINE_EXCEEDED": "did not answer in time",
    "CANCELLED": "call was cancelled",
}
"""Statuses whose details are gRPC's own transport text -> what the app is told instead."""

HIDDEN = "<upstream>"
_ADDRESS = re.compile(
    r"(?:ipv4|ipv6|unix|unix-abstract|dns|vsock):[^\s,;()\"']+"  # gRPC's peer strings
    r"|\[[0-9A-Fa-f:.%]+\](?::\d+)?"  # [::1]:9000
    r"|\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"  # 10.0.0.7:9000
)


def app_message(variant: str, status: str, what: str, details: str, address: str) -> str:
    """The failure as the app sees it: the variant named, no address (see the module)."""
    fixed = TRANSPORT.get(status)
    if fixed is not None:
        return f"variant {variant!r} {fixed}"
    return f"variant {variant!r} {what}: {scrub(details, address)}"


def scrub(text: str, address: str) -> str:
    """`text` with the configured `address` (and its host) and anything address-like
    replaced by "<upstream>"."""
    host = address.rpartition(":")[0] if ":" in address else address
    for known in (address, host):
        if known:
            text = text.replace(known, HIDDEN)
    return _ADDRESS.sub(HIDDEN, text)


class FailureLog:
    """Rate-limited warnings about upstream failures: per kind (variant, status), the
    first at once, then at most one per `every` seconds (`clock`), each saying how many
    of that kind were not logged since. Kinds are bounded by the configuration (variants
    times gRPC status codes)."""

    def __init__(
        self,
        every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        logger: Any = None,
    ) -> None:
        self.every = every
        self._clock = clock
        self._log = logger if logger is not None else log
        self._next: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def failed(self, variant: str, status: str, **fields: object) -> bool:
        """Log this failure unless its kind was logged within `every` seconds (then count
        it). Returns whether it was logged."""
        kind = (variant, status)
        now = self._clock()
        due = self._next.get(kind)
        if due is not None and now < due:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return False
        self._next[kind] = now + self.every
        self._log.warning(
            "upstream.failed",
            variant=variant,
            status=status,
            suppressed=self._suppressed.pop(kind, 0),
            **fields,
        )
        return True
