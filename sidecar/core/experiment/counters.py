"""An experiment epoch's counts as plain, mergeable data: what each fleet member
publishes, and what the fleet's report is computed from.

`ExperimentCounters` holds one epoch of one member (or of several, merged):

- ``key``: the epoch's identity across members, ``(control, treatment, sorted weights of
  the serving variants)``. Epoch *numbers* are per process (a member started later counts
  from 1), so members merge counters only when their keys are equal. Convention: a
  routing change that comes back to the same key (50/50 -> 0 -> 50/50) is a new epoch at
  every member that saw the change; counters merge by key, so a member that missed the
  intermediate state would merge its older counts into the new epoch (as it would count
  them locally).
- ``assigned``: requests the weighted split routed, per variant (plain sums).
- ``users``: first assignments of a targeting key in the epoch, per variant (plain sums:
  the sample-ratio check's unit when routing is sticky per user). A user that two members
  both served counts once at each (the fleet total over-counts such users; their arm is
  the same everywhere, so the ratio the check tests is unchanged in expectation).
- ``keyless``: requests without a targeting key, per variant (plain sums; checked apart).
- ``cells``: per (metric, arm, segment), ``(n, successes, mean, m2)`` — the tracker's own
  sufficient statistics. They merge with Chan et al.'s parallel formula (exact, and
  better conditioned than sums of squares), which is associative like an addition.
- ``sums``: named arrays of plain sums merged element-wise (the slot for per-user
  hash-bucket totals: each bucket holds whole users, so bucket totals of several members
  add up to the fleet's buckets).

The one interface a fleet needs is `Mergeable`: ``merge`` (associative, commutative),
``to_dict`` / ``from_dict`` of plain JSON numbers, bounded on the way in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, Self

from sidecar.core.stats.buckets import MAX_BUCKETS

__all__ = [
    "MAX_CELLS",
    "MAX_SUM_LENGTH",
    "EpochKey",
    "ExperimentCounters",
    "Mergeable",
    "chan_merge",
]

MAX_CELLS: Final = 64 * 2 * 65 * 2
"""Cells accepted from a published document (64 metrics, 2 arms, 64 segments + other,
with room): more is refused as malformed."""
MAX_SUM_LENGTH: Final = 1 + 4 * MAX_BUCKETS
"""Entries of one named plain-sum array (one cell's user buckets, flattened)."""
MAX_SUM_ARRAYS: Final = 4096
"""Named plain-sum arrays (one per metric, arm and segment with user buckets)."""
MAX_NAMES: Final = 256
"""Variants in ``assigned``, and named arrays in ``sums``."""
MAX_NAME_BYTES: Final = 256

EpochKey = tuple[str, str | None, tuple[tuple[str, int], ...]]
Cell = tuple[int, int, float, float]  # n, successes, mean, m2


class Mergeable(Protocol):
    """Counters that several members publish and a reader adds up."""

    def merge(self, other: Self) -> Self: ...

    def to_dict(self) -> dict[str, Any]: ...


def chan_merge(a: Cell, b: Cell) -> Cell:
    """Chan et al.'s combination of two ``(n, successes, mean, m2)`` summaries."""
    na, sa, mean_a, m2a = a
    nb, sb, mean_b, m2b = b
    if nb == 0:
        return a
    if na == 0:
        return b
    n = na + nb
    delta = mean_b - mean_a
    return (n, sa + sb, mean_a + delta * nb / n, m2a + m2b + delta * delta * na * nb / n)


@dataclass(frozen=True)
class ExperimentCounters:
    """One epoch's counts (see the module doc). Immutable; `merge` returns a new one."""

    key: EpochKey | None
    assigned: Mapping[str, int] = field(default_factory=dict)
    cells: Mapping[tuple[str, str, str], Cell] = field(default_factory=dict)
    sums: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    users: Mapping[str, int] = field(default_factory=dict)
    keyless: Mapping[str, int] = field(default_factory=dict)

    def merge(self, other: ExperimentCounters) -> ExperimentCounters:
        """Both members' counts; ValueError when the epochs differ."""
        if other.key != self.key:
            raise ValueError(f"cannot merge epoch {other.key!r} into epoch {self.key!r}")
        assigned = dict(self.assigned)
        for variant, n in other.assigned.items():
            assigned[variant] = assigned.get(variant, 0) + n
        cells = dict(self.cells)
        for where, cell in other.cells.items():
            mine = cells.get(where)
            cells[where] = cell if mine is None else chan_merge(mine, cell)
        sums = dict(self.sums)
        for name, values in other.sums.items():
            mine_sums = sums.get(name)
            if mine_sums is None:
                sums[name] = values
            elif len(mine_sums) != len(values):
                raise ValueError(f"sums.{name}: {len(values)} entries, expected {len(mine_sums)}")
            else:
                sums[name] = tuple(x + y for x, y in zip(mine_sums, values, strict=True))
        return ExperimentCounters(
            self.key,
            assigned,
            cells,
            sums,
            _add(self.users, other.users),
            _add(self.keyless, other.keyless),
        )

    @staticmethod
    def merged(parts: Iterable[ExperimentCounters], key: EpochKey | None) -> ExperimentCounters:
        """The sum of the parts whose epoch is `key` (others are skipped)."""
        out = ExperimentCounters(key)
        for part in parts:
            if part.key == key:
                out = out.merge(part)
        return out

    # ---- plain data ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        key = self.key
        return {
            "key": None if key is None else [key[0], key[1], [list(w) for w in key[2]]],
            "assigned": dict(self.assigned),
            "cells": [[m, v, s, *cell] for (m, v, s), cell in self.cells.items()],
            "sums": {name: list(values) for name, values in self.sums.items()},
            "users": dict(self.users),
            "keyless": dict(self.keyless),
        }

    @staticmethod
    def from_dict(data: Any) -> ExperimentCounters:
        """ValueError naming the field when `data` is not a well-formed, bounded document."""
        if not isinstance(data, Mapping):
            raise ValueError("experiment: must be an object")
        key = _key(data.get("key"))
        assigned_raw = _object(data.get("assigned", {}), "assigned")
        assigned = {_name(k, "assigned"): _int(v, f"assigned.{k}") for k, v in assigned_raw.items()}
        cells_raw = data.get("cells", [])
        if not isinstance(cells_raw, list) or len(cells_raw) > MAX_CELLS:
            raise ValueError(f"cells: a list of at most {MAX_CELLS} cells")
        cells: dict[tuple[str, str, str], Cell] = {}
        for item in cells_raw:
            where, cell = _cell(item)
            cells[where] = cell if where not in cells else chan_merge(cells[where], cell)
        sums_raw = _object(data.get("sums", {}), "sums", MAX_SUM_ARRAYS)
        sums = {_name(k, "sums"): _floats(v, f"sums.{k}") for k, v in sums_raw.items()}
        users = _counts(data.get("users", {}), "users")  # absent from older members
        keyless = _counts(data.get("keyless", {}), "keyless")
        return ExperimentCounters(key, assigned, cells, sums, users, keyless)


def _add(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    out = dict(a)
    for variant, n in b.items():
        out[variant] = out.get(variant, 0) + n
    return out


def _counts(value: Any, name: str) -> dict[str, int]:
    raw = _object(value, name)
    return {_name(k, name): _int(v, f"{name}.{k}") for k, v in raw.items()}


def _object(value: Any, name: str, limit: int = MAX_NAMES) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or len(value) > limit:
        raise ValueError(f"{name}: an object of at most {limit} entries")
    return value


def _name(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value or len(value.encode()) > MAX_NAME_BYTES:
        raise ValueError(f"{name}: names are non-empty strings of at most {MAX_NAME_BYTES} bytes")
    return value


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise ValueError(f"{name}: must be an integer >= 0, got {value!r}")
    return value


def _float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number, got {value!r}")
    return float(value)


def _floats(value: Any, name: str) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) > MAX_SUM_LENGTH:
        raise ValueError(f"{name}: a list of at most {MAX_SUM_LENGTH} numbers")
    return tuple(_float(x, name) for x in value)


def _key(raw: Any) -> EpochKey | None:
    if raw is None:
        return None
    if not (isinstance(raw, list) and len(raw) == 3 and isinstance(raw[2], list)):
        raise ValueError("key: [control, treatment, [[variant, weight], ...]]")
    control = _name(raw[0], "key.control")
    treatment = None if raw[1] is None else _name(raw[1], "key.treatment")
    if len(raw[2]) > MAX_NAMES:
        raise ValueError(f"key.weights: at most {MAX_NAMES} variants")
    weights: list[tuple[str, int]] = []
    for pair in raw[2]:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise ValueError("key.weights: [variant, weight] pairs")
        weights.append((_name(pair[0], "key.weights"), _int(pair[1], "key.weights")))
    return control, treatment, tuple(sorted(weights))


def _cell(item: Any) -> tuple[tuple[str, str, str], Cell]:
    if not (isinstance(item, list) and len(item) == 7):
        raise ValueError("cells: [metric, variant, segment, n, successes, mean, m2] entries")
    metric, variant = _name(item[0], "cells.metric"), _name(item[1], "cells.variant")
    segment = item[2]
    if not isinstance(segment, str) or len(segment.encode()) > MAX_NAME_BYTES:
        raise ValueError("cells.segment: a string")
    n, successes = _int(item[3], "cells.n"), _int(item[4], "cells.successes")
    mean, m2 = _float(item[5], "cells.mean"), _float(item[6], "cells.m2")
    if successes > n or m2 < 0:
        raise ValueError("cells: needs successes <= n and m2 >= 0")
    return (metric, variant, segment), (n, successes, mean, m2)
