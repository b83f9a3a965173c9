"""The unit of analysis: a stable 64-bit hash of the routed targeting key (or, for a request
without a key, of its request id), the same on every sidecar of a fleet.

BLAKE2b with its own personalisation, so the unit's bucket is independent of the routing
hash (murmur3) that chose the arm: every bucket holds users of both arms in the split's
proportions. Python's ``hash`` is not used: it differs between processes, and the fleet
merges bucket totals by addition, which needs a user in the same bucket everywhere.
"""

from __future__ import annotations

from hashlib import blake2b

__all__ = ["bucket_of", "unit_hash", "unit_of"]

_PERSON = b"sidecar-ab-unit"


def unit_hash(text: str) -> int:
    """A stable unsigned 64-bit hash of ``text`` (UTF-8)."""
    digest = blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, person=_PERSON)
    return int.from_bytes(digest.digest(), "little")


def unit_of(targeting_key: str) -> int | None:
    """The unit of a request with this routed targeting key: its `unit_hash`, or None for
    a keyless request (its own unit, hashed from its request id where needed). The request
    path computes it once and hands it to the outcome ledger's `admit` and `remember`."""
    return unit_hash(targeting_key) if targeting_key else None


def bucket_of(unit: int, buckets: int) -> int:
    """The bucket of a unit hash among ``buckets``."""
    return unit % buckets
