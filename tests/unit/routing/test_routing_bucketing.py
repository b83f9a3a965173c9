"""Stable bucketing: deterministic across processes, uniform, sticky when ramping."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.core.routing import BASIS_POINTS, Flag, RoutingContext, bucket, evaluate

KEYS = [f"user-{i}" for i in range(10_000)]

ASSIGN_SCRIPT = """
import hashlib, sys
from sidecar.core.routing import Flag, RoutingContext, evaluate
flag = Flag.build(key="classifier-rollout", variants=["stable", "canary"], stable="stable",
                  canary="canary", weights={"stable": 7500, "canary": 2500})
out = "\\n".join(evaluate(flag, RoutingContext(f"user-{i}")).variant for i in range(10_000))
print(hashlib.sha256(out.encode()).hexdigest())
"""


def two_variant_flag(canary_bp: int, key: str = "classifier-rollout") -> Flag:
    return Flag.build(
        key=key,
        variants=["stable", "canary"],
        stable="stable",
        canary="canary",
        weights={"stable": BASIS_POINTS - canary_bp, "canary": canary_bp},
    )


def test_assignment_identical_in_two_separate_processes() -> None:
    """10,000 keys get the same variants in two fresh interpreters with different hash seeds."""
    digests = []
    for seed in ("1", "987654"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", ASSIGN_SCRIPT], env=env, capture_output=True, text=True,
            check=True,
        )  # fmt: skip
        digests.append(done.stdout.strip())
    flag = two_variant_flag(2500)
    here = "\n".join(evaluate(flag, RoutingContext(k)).variant for k in KEYS)
    assert digests[0] == digests[1] == hashlib.sha256(here.encode()).hexdigest()


def murmur3_32_reference(data: bytes, seed: int = 0) -> int:
    """MurmurHash3 x86 32-bit, written out from the public algorithm (independent of mmh3)."""
    c1, c2, mask = 0xCC9E2D51, 0x1B873593, 0xFFFFFFFF
    h = seed
    rounded = len(data) - len(data) % 4
    for i in range(0, rounded, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * c1) & mask
        k = ((k << 15) | (k >> 17)) & mask
        k = (k * c2) & mask
        h ^= k
        h = ((h << 13) | (h >> 19)) & mask
        h = (h * 5 + 0xE6546B64) & mask
    k = 0
    tail = data[rounded:]
    for shift, byte in enumerate(tail):
        k |= byte << (8 * shift)
    if tail:
        k = (k * c1) & mask
        k = ((k << 15) | (k >> 17)) & mask
        k = (k * c2) & mask
        h ^= k
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & mask
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & mask
    h ^= h >> 16
    return h


def test_bucket_is_murmur3_of_salt_and_key_scaled_to_10000() -> None:
    """Buckets follow the documented formula, checked against an independent murmur3."""
    for key in ["alice", "bob", "user-42", "ünïcødé", "", *KEYS[:500]]:
        h = murmur3_32_reference(f"classifier-rollout/{key}".encode())
        assert bucket("classifier-rollout", key) == (h * 10_000) >> 32
    # Known-answer test for the hash itself (SMHasher's published value for "" / seed 0 is 0,
    # for "hello" it is 0x248BFA47).
    assert murmur3_32_reference(b"") == 0
    assert murmur3_32_reference(b"hello") == 0x248BFA47


def test_split_matches_weights_within_three_standard_deviations() -> None:
    """For several canary weights, the share of 10,000 keys in canary is within 3 sd."""
    n = len(KEYS)
    for canary_bp in (100, 500, 1000, 2500, 5000, 9000):
        flag = two_variant_flag(canary_bp)
        got = sum(evaluate(flag, RoutingContext(k)).variant == "canary" for k in KEYS)
        p = canary_bp / BASIS_POINTS
        sd = (n * p * (1 - p)) ** 0.5
        assert abs(got - n * p) <= 3 * sd, (canary_bp, got, n * p, sd)


def test_three_way_split_matches_weights() -> None:
    """With three served variants each share is within 3 sd of its weight."""
    flag = Flag.build(
        key="k", variants=["stable", "canary", "blue"], stable="stable", canary="canary",
        weights={"stable": 5000, "canary": 2000, "blue": 3000},
    )  # fmt: skip
    n = len(KEYS)
    counts = {"stable": 0, "canary": 0, "blue": 0}
    for k in KEYS:
        counts[evaluate(flag, RoutingContext(k)).variant] += 1
    for name, bp in flag.weights.items():
        p = bp / BASIS_POINTS
        assert abs(counts[name] - n * p) <= 3 * (n * p * (1 - p)) ** 0.5, counts


@settings(max_examples=200, deadline=None)
@given(
    low=st.integers(min_value=0, max_value=BASIS_POINTS),
    high=st.integers(min_value=0, max_value=BASIS_POINTS),
    key=st.text(min_size=1, max_size=40),
    flag_key=st.text(min_size=1, max_size=20).filter(str.strip),
)
def test_raising_canary_weight_keeps_canary_users_in_canary(
    low: int, high: int, key: str, flag_key: str
) -> None:
    """Ramp stickiness: in canary at weight w implies in canary at every weight >= w."""
    low, high = min(low, high), max(low, high)
    before = evaluate(two_variant_flag(low, flag_key), RoutingContext(key)).variant
    after = evaluate(two_variant_flag(high, flag_key), RoutingContext(key)).variant
    if before == "canary":
        assert after == "canary"
    if after == "stable":
        assert before == "stable"


def test_requests_without_targeting_key_are_split_per_request() -> None:
    """No targeting key: the per-request bucketing key spreads requests by the weights."""
    flag = two_variant_flag(5000)
    variants = [evaluate(flag, RoutingContext("", "", f"req-{i}")).variant for i in range(4000)]
    share = variants.count("canary") / len(variants)
    assert abs(share - 0.5) <= 3 * (0.25 / 4000) ** 0.5
    reasons = {evaluate(flag, RoutingContext("", "", f"req-{i}")).reason.value for i in range(10)}
    assert reasons == {"SPLIT_NO_KEY"}
