"""Drift keeps no client-chosen name of unbounded size: tensors named with more than
MAX_NAME_CHARS characters are skipped (counted), and skipped names are counted through
fixed-size hashes, at most 1,024 of them."""

from __future__ import annotations

import sys

import numpy as np

from sidecar.core.experiment.drift import (
    MAX_NAME_CHARS,
    DriftSettings,
    DriftTracker,
    bounded_name,
    extract_features,
)

MIB = 1 << 20


def test_unique_huge_tensor_names_are_counted_not_kept() -> None:
    """300 requests, each with a numeric and a string tensor under unique 1 MiB names (and
    1,000 more unique short string names): nothing is monitored under a long name, the
    skipped count saturates at 1,024 and what is held is 1,024 integers, not names."""
    tracker = DriftTracker(DriftSettings(max_features=4))
    values = np.ones((2, 1))
    for i in range(300):
        big = f"{i:08d}".ljust(MIB, "n")
        tracker.observe(
            "stable",
            {"x": values, big: values, big + "s": np.array(["a", "b"])},
            {"y": values},
        )
    for i in range(1000):
        tracker.observe("stable", {"x": values, f"text-{i}": np.array(["a"])}, {"y": values})
    result = tracker.report()
    assert {f.name for f in result.features} == {"x", "y"}
    assert result.skipped_features == 1024
    held = tracker._skipped_names
    assert len(held) == 1024 and all(isinstance(h, int) for h in held)
    assert sys.getsizeof(held) + sum(sys.getsizeof(h) for h in held) < 100 * 1024


def test_long_names_get_a_bounded_label() -> None:
    """A long tensor name is skipped under a label of bounded size; short names pass."""
    big = "n" * MIB
    extracted = extract_features({big: np.ones(3), "x": np.ones(3)}, max_features=8)
    assert list(extracted.values) == ["x"]
    (label,) = extracted.skipped
    assert label.startswith("n" * 64) and len(label) < 100
    assert bounded_name("x" * MAX_NAME_CHARS) == "x" * MAX_NAME_CHARS
    assert bounded_name(big) == label and bounded_name(big + "m") != label
