"""The fleet's windows: this member's live :class:`RollingWindows` plus the latest
time buckets every other member published, read like one :class:`RollingWindows`.

Pure: the caller hands in the other members' buckets (``{member: {variant: {bucket index:
window}}}``, as decoded from their published statistics) with :meth:`set_remote`, and
reads with the same ``since`` / ``window`` / ``variants`` calls the rollout controller
uses on a single sidecar. Every member indexes buckets by ``floor(end time / bucket_s)``
on the wall clock, so the same index means the same 10 s everywhere (clock skew between
hosts shifts a request by at most the skew).

**Settling.** Another member's bucket is read as it was at that member's last publish,
which may be up to one publish interval old. A bucket read while the publisher had only
part of it would be folded into a stage's running totals only partly, and never again.
So every read is shifted back by ``settle`` seconds (at least the publish interval plus
the Redis round trip): ``since(v, a, b)`` returns the complete buckets of
``[a - settle, b - settle)``. Consecutive reads still partition time exactly, and every
bucket they return was complete at every live member when it last published.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from sidecar.core.canary.window import RollingWindows, VariantWindow

__all__ = ["MergedWindows", "RemoteBuckets"]

RemoteBuckets = Mapping[str, Mapping[str, Mapping[int, VariantWindow]]]
"""member -> variant -> bucket index -> window."""


class MergedWindows:
    """`since`, `window`, `variants` and `bucket_s` like :class:`RollingWindows`, over the
    local ring and the other members' published buckets."""

    def __init__(self, local: RollingWindows, settle: float) -> None:
        if not (math.isfinite(settle) and settle >= 0):
            raise ValueError(f"settle must be a finite number >= 0, got {settle!r}")
        self.local = local
        self.settle = float(settle)
        self._remote: RemoteBuckets = {}

    def set_remote(self, remote: RemoteBuckets) -> None:
        """Replace the other members' buckets (the latest each published)."""
        self._remote = remote

    @property
    def members(self) -> int:
        """Other members whose buckets are merged."""
        return len(self._remote)

    @property
    def bucket_s(self) -> float:
        return self.local.bucket_s

    @property
    def horizon_s(self) -> float:
        """Seconds readable back from ``now``: the ring's horizon less the settling shift
        (in whole buckets), so a read from ``now - horizon_s`` never needs a bucket the
        ring no longer keeps."""
        bucket = self.local.bucket_s
        shift = math.ceil(self.settle / bucket) * bucket
        return max(bucket, self.local.horizon_s - shift)

    @property
    def variants(self) -> tuple[str, ...]:
        """Variants seen here or at any other member (local ones first)."""
        seen = dict.fromkeys(self.local.variants)
        for variants in self._remote.values():
            seen.update(dict.fromkeys(variants))
        return tuple(seen)

    def since(self, variant: str, start: float, now: float) -> VariantWindow:
        """The fleet's complete buckets of ``variant`` in ``[start - settle, now -
        settle)`` (see the module doc); raises ``ValueError`` like
        :meth:`RollingWindows.since`."""
        start, now = start - self.settle, now - self.settle
        local = self.local.since(variant, start, now)
        first, end = self.local.bucket_index(start), self.local.bucket_index(now)
        parts = [local]
        for variants in self._remote.values():
            buckets = variants.get(variant)
            if not buckets:
                continue
            parts.extend(w for i, w in buckets.items() if first <= i < end)
        if len(parts) == 1:
            return local
        return VariantWindow.merged(parts, local.relative_accuracy)

    def window(self, variant: str, now: float, span_s: float) -> VariantWindow:
        """``since(variant, now - span_s, now)``."""
        if not (math.isfinite(span_s) and span_s >= 0):
            raise ValueError(f"span_s must be a finite number >= 0, got {span_s!r}")
        return self.since(variant, now - span_s, now)
