"""The bounds of every Control input and answer, declared once.

Each input is checked against its bound before anything changes (`check_text`,
`check_count`, `check_finite` raise `LimitError` naming the field and the limit); each
answer is built to fit the message limit (`clip` shortens a text for display with a
marker, `excerpt` quotes a refused value in an error message without echoing it whole).
docs/limits.md lists every limit, what it bounds, its default and how to change it.

Pure: no I/O, no gRPC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

KIB = 1024


@dataclass(frozen=True)
class ControlLimits:
    """Bounds of Control requests and of what Control answers show."""

    #: A write's `reason` (it goes to the state, the audit log and every State answer).
    reason_bytes: int = 1 * KIB
    #: A targeting key in SetUserOverride / ClearUserOverride / ListUserOverrides.prefix.
    key_bytes: int = 256
    #: A variant, segment, metric or stage name given in a request.
    name_bytes: int = 256
    #: User overrides kept in the state (SetUserOverride of a new key beyond it is refused).
    user_overrides: int = 100_000
    #: Segment rules kept in the state (one per declared segment at most).
    segment_rules: int = 1_000
    #: Entries of a SetWeights map.
    weights: int = 64
    #: Stages of a StartRollout plan.
    plan_stages: int = 32
    #: Metric names in a GetExperimentReport request.
    report_metrics: int = 64
    #: GetAuditLog page_size (default 50) and ListUserOverrides page_size (default 100).
    audit_page: int = 1_000
    audit_page_default: int = 50
    overrides_page: int = 1_000
    overrides_page_default: int = 100
    #: Page tokens a client sends back.
    page_token_bytes: int = 1 * KIB
    #: User overrides listed in a State answer (GetState, WatchState, every write's answer):
    #: the first ones by targeting key; `ListUserOverrides` pages through all of them.
    state_overrides_shown: int = 100
    #: Promotions listed in a State answer (the newest ones).
    state_promotions_shown: int = 50
    #: Fleet members listed by ListFleetMembers (a fleet of more lists the first by id).
    fleet_members_listed: int = 1_000
    #: Free texts (reasons, messages) shown in any answer: longer ones are clipped with a
    #: marker (older states may hold longer texts than `reason_bytes` allows today).
    shown_text_bytes: int = 4 * KIB
    #: Room kept free in every answer for the fields outside a bounded list (headers,
    #: totals, tokens, framing): a paged list fills at most max_message_bytes - this.
    answer_headroom_bytes: int = 16 * KIB


CONTROL_LIMITS = ControlLimits()

#: A gRPC status message (both ports): it travels in the trailers, which a client accepts
#: only up to a few KiB; longer ones are clipped with the marker.
STATUS_MESSAGE_BYTES = 2 * KIB

TRUNCATED = "…[truncated]"


class LimitError(ValueError):
    """An input over its bound (or not a finite number): `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def fits(text: str, max_bytes: int) -> bool:
    """Whether `text` is at most `max_bytes` UTF-8 bytes (encoded only when it might not
    be: a character is at most 4 bytes)."""
    return len(text) * 4 <= max_bytes or utf8_len(text) <= max_bytes


def clip(text: str, max_bytes: int) -> str:
    """`text` if it fits in `max_bytes` UTF-8 bytes, else its longest prefix that fits with
    the `TRUNCATED` marker (whole characters only)."""
    if fits(text, max_bytes):
        return text
    room = max(0, max_bytes - utf8_len(TRUNCATED))
    head = text.encode("utf-8", "surrogatepass")[:room].decode("utf-8", "ignore")
    return head + TRUNCATED


def shown(text: str, limit: int = 64) -> str:
    """`text` quoted for an error message on the predict port, cut to `limit` characters
    (answers stay small whatever a client sends)."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} chars)"


def excerpt(text: str, max_chars: int = 64) -> str:
    """A refused value quoted for an error message: repr of at most `max_chars` characters."""
    if len(text) <= max_chars:
        return repr(text)
    return f"{text[:max_chars]!r}… ({utf8_len(text)} bytes)"


def check_text(field: str, text: str, max_bytes: int) -> str:
    """`text` when it is at most `max_bytes` UTF-8 bytes, else LimitError."""
    if not fits(text, max_bytes):
        raise LimitError(field, f"at most {max_bytes} bytes (UTF-8), got {utf8_len(text)}")
    return text


def check_count(field: str, count: int, limit: int, what: str = "entries") -> None:
    if count > limit:
        raise LimitError(field, f"at most {limit} {what}, got {count}")


def check_finite(field: str, value: float) -> float:
    """`value` when it is a finite number, else LimitError (NaN and +-inf are refused)."""
    if not math.isfinite(value):
        raise LimitError(field, f"must be a finite number, got {value!r}")
    return value
