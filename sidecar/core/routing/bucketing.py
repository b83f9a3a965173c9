"""Deterministic bucketing on a stable hash (flagd's fractional evaluation, integer-exact).

A targeting key maps to one of 10,000 buckets: ``(murmur3_32(salt + "/" + key) * 10000)
>> 32``. The hash is MurmurHash3 x86 32-bit, seed 0, unsigned, of the UTF-8 bytes; the
same key gives the same bucket in every process, on every machine, after restarts. Never
Python's ``hash()``, which is salted per process.
"""

from __future__ import annotations

import mmh3

from sidecar.core.routing.model import BASIS_POINTS


def bucket(salt: str, key: str) -> int:
    """Bucket in [0, 10000) of `key` under `salt`."""
    h: int = mmh3.hash(f"{salt}/{key}", 0, False)
    return (h * BASIS_POINTS) >> 32


def shadow_sampled(salt: str, key: str, sample_bp: int) -> bool:
    """Whether a request with bucketing key `key` is mirrored, at `sample_bp` basis points.

    Uses its own salt (``salt + ":shadow"``), so shadow sampling is independent of the
    variant split.
    """
    if sample_bp >= BASIS_POINTS:
        return True
    if sample_bp <= 0:
        return False
    return bucket(f"{salt}:shadow", key) < sample_bp
