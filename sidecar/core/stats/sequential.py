"""Anytime-valid sequential test for the difference of two conversion rates (mSPRT).

Mixture sequential probability ratio test with a normal mixture, after Johari, Koomen,
Pekelis and Walsh, "Always Valid Inference: Bringing Sequential Analysis to A/B Testing"
(arXiv:1512.04922, 2015/2017; Operations Research 70(3), 2022). With cumulative counts at a
look, ``d = p_B - p_A`` and the plug-in variance of ``d``

    s^2 = p_A (1 - p_A) / n_A + p_B (1 - p_B) / n_B,

the mixture likelihood ratio of ``H0: p_B - p_A = theta0`` with mixing law
``N(theta0, tau^2)`` is

    Lambda = sqrt(s^2 / (s^2 + tau^2)) * exp(tau^2 (d - theta0)^2 / (2 s^2 (s^2 + tau^2))).

With equal arms ``s^2 = V_n / n`` where ``V_n = p_A(1-p_A) + p_B(1-p_B)``, and this is the
paper's two-stream Bernoulli formula ``sqrt(V/(V + n tau^2)) exp(n^2 tau^2 d^2 /
(2 V (V + n tau^2)))``. The always-valid p-value is the running minimum of
``min(1, 1/Lambda)`` over looks; the confidence sequence is the set of ``theta0`` with
``Lambda(theta0) < 1/alpha``, i.e. ``d +- h`` with

    h^2 = s^2 (s^2 + tau^2) / tau^2 * (2 ln(1/alpha) + ln((s^2 + tau^2) / s^2)),

intersected over looks. Validity is asymptotic (normal approximation with a plug-in
variance); ``bench/ab_validity.py`` measures the false-positive rate.

Mixing variance. In z units at a look, ``|d| / s`` must exceed
``b(r) = sqrt((1 + 1/r) (2 ln(1/alpha) + ln(1 + r)))`` with ``r = tau^2 / s^2``. ``b`` is
smallest at ``r*``, the root of ``r = 2 ln(1/alpha) + ln(1 + r)`` (8.21 for alpha = 0.05,
where ``b = 3.04``). :func:`plan_sequential` sets ``tau^2 = r* V / N`` so that the boundary
is as low as possible at the planned horizon ``N``; any positive ``tau^2`` keeps validity.

Looks where an arm has fewer than ``min_events`` successes or failures (default 10) are not
evaluated (the p-value and interval carry over), because the normal approximation is poor
there; skipping looks cannot inflate the error rate.

Numeric metrics (difference of means). :func:`sequential_update_means` applies the same
mixture likelihood ratio and confidence sequence to ``d = mean_B - mean_A`` with the plug-in
variance ``s^2 = var_A / n_A + var_B / n_B`` (sample variances, ``ddof = 1``). Its state is
*unbounded* (``start_sequential(..., bounded=False)``: the running interval starts at
``(-inf, inf)`` and no look interval is clipped), because a difference of means is not
confined to ``[-1, 1]``. A look is evaluated when both arms have at least
``max(min_events, 2)`` observations and ``s^2 > 0``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, SupportsIndex

import numpy as np
import numpy.typing as npt

from ._validation import (
    check_alpha,
    check_count,
    check_finite,
    check_probability_level,
    check_rates,
)
from .intervals import Interval
from .lazy import lazy
from .power import sample_size_per_arm

if TYPE_CHECKING:
    from scipy import optimize, special
else:  # imported on first use, off the start-up path (sidecar.core.stats.lazy)
    optimize, special = lazy("scipy.optimize"), lazy("scipy.special")


__all__ = [
    "DEFAULT_MIN_EVENTS",
    "SequentialDecision",
    "SequentialLook",
    "SequentialPaths",
    "SequentialPlan",
    "SequentialState",
    "Verdict",
    "boundary_z",
    "confidence_halfwidth",
    "log_likelihood_ratio",
    "optimal_mixing_ratio",
    "plan_sequential",
    "required_variance",
    "sequential_paths",
    "sequential_paths_estimates",
    "sequential_power_lower_bound",
    "sequential_update",
    "sequential_update_estimate",
    "sequential_update_means",
    "sequential_verdict",
    "start_sequential",
]

DEFAULT_MIN_EVENTS = 10

FloatArray = npt.NDArray[np.float64]


def _check_tau_squared(tau_squared: float) -> float:
    value = float(tau_squared)
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"tau_squared must be a positive finite number; got {tau_squared!r}")
    return value


def optimal_mixing_ratio(alpha: float = 0.05) -> float:
    """``r*``, the root of ``r = 2 ln(1/alpha) + ln(1 + r)``, minimising :func:`boundary_z`."""
    alpha = check_alpha(alpha)
    two_l = 2.0 * math.log(1.0 / alpha)
    r = two_l + 1.0
    for _ in range(200):  # contraction: derivative 1 / (1 + r) < 1
        nxt = two_l + math.log1p(r)
        if abs(nxt - r) <= 1e-15 * nxt:
            return nxt
        r = nxt
    return r


def boundary_z(information_ratio: float, alpha: float = 0.05) -> float:
    """|z| = |d|/s needed to reject at a look where ``tau^2 / s^2 = information_ratio``."""
    alpha = check_alpha(alpha)
    r = float(information_ratio)
    if not r > 0.0:
        raise ValueError(f"information_ratio must be positive; got {information_ratio!r}")
    return math.sqrt((1.0 + 1.0 / r) * (2.0 * math.log(1.0 / alpha) + math.log1p(r)))


def log_likelihood_ratio(
    difference: float, variance: float, tau_squared: float, null_difference: float = 0.0
) -> float:
    """``ln Lambda`` for an estimate ``difference`` with variance ``variance`` (> 0)."""
    tau2 = _check_tau_squared(tau_squared)
    s2 = float(variance)
    if not s2 > 0.0:
        raise ValueError(f"variance must be positive; got {variance!r}")
    delta = float(difference) - float(null_difference)
    return 0.5 * math.log(s2 / (s2 + tau2)) + tau2 * delta * delta / (2.0 * s2 * (s2 + tau2))


def confidence_halfwidth(variance: float, tau_squared: float, alpha: float = 0.05) -> float:
    """Half-width ``h`` of the level-``alpha`` confidence-sequence interval at one look."""
    tau2 = _check_tau_squared(tau_squared)
    alpha = check_alpha(alpha)
    s2 = float(variance)
    if s2 < 0.0:
        raise ValueError(f"variance must be non-negative; got {variance!r}")
    if s2 == 0.0:
        return 0.0
    return math.sqrt(
        s2 * (s2 + tau2) / tau2 * (2.0 * math.log(1.0 / alpha) + math.log((s2 + tau2) / s2))
    )


# --------------------------------------------------------------------------- per-look kernel


@dataclass(frozen=True, slots=True)
class _LookArrays:
    difference: FloatArray
    variance: FloatArray
    evaluated: npt.NDArray[np.bool_]
    log_lr: FloatArray
    lower: FloatArray
    upper: FloatArray


def _look_arrays(
    sc: npt.NDArray[np.int64],
    nc: npt.NDArray[np.int64],
    st: npt.NDArray[np.int64],
    nt: npt.NDArray[np.int64],
    tau2: float,
    alpha: float,
    min_events: int,
) -> _LookArrays:
    nc_f = np.maximum(nc, 1).astype(np.float64)
    nt_f = np.maximum(nt, 1).astype(np.float64)
    pc = sc / nc_f
    pt = st / nt_f
    d = pt - pc
    s2 = pc * (1.0 - pc) / nc_f + pt * (1.0 - pt) / nt_f
    evaluated = (
        (sc >= min_events)
        & (nc - sc >= min_events)
        & (st >= min_events)
        & (nt - st >= min_events)
        & (nc > 0)
        & (nt > 0)
        & (s2 > 0.0)
    )
    safe_s2 = np.where(evaluated, s2, 1.0)
    total = safe_s2 + tau2
    log_lr = np.where(
        evaluated,
        0.5 * np.log(safe_s2 / total) + tau2 * d * d / (2.0 * safe_s2 * total),
        0.0,
    )
    half = np.sqrt(safe_s2 * total / tau2 * (2.0 * math.log(1.0 / alpha) + np.log(total / safe_s2)))
    lower = np.where(evaluated, np.clip(d - half, -1.0, 1.0), -1.0)
    upper = np.where(evaluated, np.clip(d + half, -1.0, 1.0), 1.0)
    return _LookArrays(d, s2, evaluated, log_lr, lower, upper)


def _p_from_log_lr(log_lr: FloatArray) -> FloatArray:
    return np.exp(np.minimum(0.0, -log_lr))


# --------------------------------------------------------------------------- streaming state


@dataclass(frozen=True, slots=True)
class SequentialState:
    """Running state of one mSPRT: what must survive between looks.

    ``p_value`` is the always-valid p-value (running minimum), ``ci_lower``/``ci_upper``
    the running intersection of the per-look intervals. If a new look's interval is disjoint
    from the running one, the running interval collapses to its point nearest the new one
    (this can only happen after the null was already rejected).

    ``bounded`` (default) is for differences of rates: the interval lives in ``[-1, 1]``.
    An unbounded state (numeric metrics, :func:`sequential_update_means`) starts at
    ``(-inf, inf)`` and only needs ``lower <= upper``.
    """

    alpha: float
    tau_squared: float
    min_events: int = DEFAULT_MIN_EVENTS
    looks: int = 0
    n_control: int = 0
    n_treatment: int = 0
    p_value: float = 1.0
    ci_lower: float = -1.0
    ci_upper: float = 1.0
    bounded: bool = True

    def __post_init__(self) -> None:
        check_alpha(self.alpha)
        _check_tau_squared(self.tau_squared)
        check_count(self.min_events, "min_events")
        if self.bounded:
            if not (0.0 <= self.p_value <= 1.0 and -1.0 <= self.ci_lower <= self.ci_upper <= 1.0):
                raise ValueError(
                    "inconsistent SequentialState: need 0 <= p <= 1, -1 <= lower <= upper <= 1"
                )
        elif not (0.0 <= self.p_value <= 1.0 and self.ci_lower <= self.ci_upper):
            raise ValueError("inconsistent SequentialState: need 0 <= p <= 1, lower <= upper")

    @property
    def interval(self) -> Interval:
        """The running confidence-sequence interval for ``p_B - p_A``."""
        return Interval(self.ci_lower, self.ci_upper, 1.0 - self.alpha, "msprt")


def start_sequential(
    tau_squared: float,
    alpha: float = 0.05,
    min_events: SupportsIndex = DEFAULT_MIN_EVENTS,
    *,
    bounded: bool = True,
) -> SequentialState:
    """A fresh state (no looks yet) for the given mixing variance and level.

    ``bounded=False`` gives the state for :func:`sequential_update_means` (differences of
    means): the running interval starts at ``(-inf, inf)``.
    """
    if bounded:
        lower, upper = -1.0, 1.0
    else:
        lower, upper = -math.inf, math.inf
    return SequentialState(
        alpha=check_alpha(alpha),
        tau_squared=_check_tau_squared(tau_squared),
        min_events=check_count(min_events, "min_events"),
        ci_lower=lower,
        ci_upper=upper,
        bounded=bool(bounded),
    )


@dataclass(frozen=True, slots=True)
class SequentialLook:
    """One look: this look's statistics and the updated running ``state``.

    ``interval`` is this look's own interval (``[-1, 1]`` if the look was not evaluated;
    ``(-inf, inf)`` for a numeric look); the running interval is ``state.interval``.
    For a numeric look (:func:`sequential_update_means`) ``successes_control`` and
    ``successes_treatment`` are 0 and ``difference`` is ``mean_B - mean_A``.
    """

    successes_control: int
    n_control: int
    successes_treatment: int
    n_treatment: int
    difference: float
    variance: float
    evaluated: bool
    log_likelihood_ratio: float
    interval: Interval
    state: SequentialState


def _intersect(
    prev_lower: float, prev_upper: float, lower: float, upper: float
) -> tuple[float, float]:
    new_lower = max(prev_lower, lower)
    new_upper = min(prev_upper, upper)
    if new_lower <= new_upper:
        return new_lower, new_upper
    point = prev_upper if lower > prev_upper else prev_lower
    return point, point


def _advance(
    state: SequentialState, nc: int, nt: int, p_look: float, lower: float, upper: float
) -> SequentialState:
    """The running state after one look: p-value minimum, interval intersection."""
    ci_lower, ci_upper = _intersect(state.ci_lower, state.ci_upper, lower, upper)
    return replace(
        state,
        looks=state.looks + 1,
        n_control=nc,
        n_treatment=nt,
        p_value=min(state.p_value, p_look),
        ci_lower=ci_lower,
        ci_upper=ci_upper,
    )


def sequential_update(
    state: SequentialState,
    successes_control: SupportsIndex,
    n_control: SupportsIndex,
    successes_treatment: SupportsIndex,
    n_treatment: SupportsIndex,
) -> SequentialLook:
    """Fold one look (cumulative counts per arm) into ``state``.

    Counts are cumulative since the start of the experiment and may not decrease.
    """
    sc = check_count(successes_control, "successes_control")
    nc = check_count(n_control, "n_control")
    st = check_count(successes_treatment, "successes_treatment")
    nt = check_count(n_treatment, "n_treatment")
    if sc > nc:
        raise ValueError(f"successes_control ({sc}) cannot exceed n_control ({nc})")
    if st > nt:
        raise ValueError(f"successes_treatment ({st}) cannot exceed n_treatment ({nt})")
    if nc < state.n_control or nt < state.n_treatment:
        raise ValueError(
            "counts are cumulative and cannot decrease: got "
            f"n_control={nc}, n_treatment={nt} after {state.n_control}, {state.n_treatment}"
        )
    arrays = _look_arrays(
        np.array([sc], dtype=np.int64),
        np.array([nc], dtype=np.int64),
        np.array([st], dtype=np.int64),
        np.array([nt], dtype=np.int64),
        state.tau_squared,
        state.alpha,
        state.min_events,
    )
    evaluated = bool(arrays.evaluated[0])
    log_lr = float(arrays.log_lr[0])
    lower, upper = float(arrays.lower[0]), float(arrays.upper[0])
    p_look = float(_p_from_log_lr(arrays.log_lr)[0])
    new_state = _advance(state, nc, nt, p_look, lower, upper)
    return SequentialLook(
        successes_control=sc,
        n_control=nc,
        successes_treatment=st,
        n_treatment=nt,
        difference=float(arrays.difference[0]),
        variance=float(arrays.variance[0]),
        evaluated=evaluated,
        log_likelihood_ratio=log_lr,
        interval=Interval(lower, upper, 1.0 - state.alpha, "msprt"),
        state=new_state,
    )


def sequential_update_means(
    state: SequentialState,
    n_control: SupportsIndex,
    mean_control: float,
    var_control: float,
    n_treatment: SupportsIndex,
    mean_treatment: float,
    var_treatment: float,
) -> SequentialLook:
    """Fold one look of a numeric metric (difference of means) into an unbounded ``state``.

    ``n_*`` are cumulative counts, ``mean_*`` the arms' means and ``var_*`` their sample
    variances (``ddof = 1``) over everything observed so far. With ``d = mean_B - mean_A``
    and ``s^2 = var_A / n_A + var_B / n_B`` the likelihood ratio, the always-valid p-value
    and the confidence sequence are those of :func:`sequential_update` (no clipping). The
    look is evaluated only when both arms have at least ``max(min_events, 2)`` observations
    and ``s^2 > 0``; otherwise the p-value and running interval carry over.
    """
    if state.bounded:
        raise ValueError(
            "state must be unbounded for a difference of means; "
            "use start_sequential(..., bounded=False)"
        )
    nc = check_count(n_control, "n_control")
    nt = check_count(n_treatment, "n_treatment")
    mc = check_finite(mean_control, "mean_control")
    mt = check_finite(mean_treatment, "mean_treatment")
    vc = check_finite(var_control, "var_control")
    vt = check_finite(var_treatment, "var_treatment")
    if vc < 0.0:
        raise ValueError(f"var_control must be non-negative; got {var_control!r}")
    if vt < 0.0:
        raise ValueError(f"var_treatment must be non-negative; got {var_treatment!r}")
    if nc < state.n_control or nt < state.n_treatment:
        raise ValueError(
            "counts are cumulative and cannot decrease: got "
            f"n_control={nc}, n_treatment={nt} after {state.n_control}, {state.n_treatment}"
        )
    d = mt - mc
    need = max(state.min_events, 2)
    s2 = (vc / nc if nc > 0 else 0.0) + (vt / nt if nt > 0 else 0.0)
    evaluated = nc >= need and nt >= need and s2 > 0.0 and math.isfinite(s2)
    return _estimate_look(state, nc, nt, d, s2, evaluated)


def sequential_update_estimate(
    state: SequentialState,
    n_control: SupportsIndex,
    n_treatment: SupportsIndex,
    difference: float,
    variance: float,
    evaluated: bool = True,
) -> SequentialLook:
    """Fold one look given the estimate ``d`` and its variance ``s^2`` directly.

    For estimates whose variance comes from elsewhere (user buckets, delta method:
    ``sidecar.core.stats.buckets``). The likelihood ratio, p-value and confidence sequence
    are those of :func:`sequential_update` with this ``d`` and ``s^2``; a bounded state
    clips the look's interval to ``[-1, 1]``. Not evaluated (the p-value and interval carry
    over) when ``evaluated`` is false or ``s^2`` is not a positive finite number.
    """
    nc = check_count(n_control, "n_control")
    nt = check_count(n_treatment, "n_treatment")
    if nc < state.n_control or nt < state.n_treatment:
        raise ValueError(
            "counts are cumulative and cannot decrease: got "
            f"n_control={nc}, n_treatment={nt} after {state.n_control}, {state.n_treatment}"
        )
    d = float(difference)
    s2 = float(variance)
    ok = bool(evaluated) and math.isfinite(d) and math.isfinite(s2) and s2 > 0.0
    return _estimate_look(state, nc, nt, d, s2, ok)


def _estimate_look(
    state: SequentialState, nc: int, nt: int, d: float, s2: float, ok: bool
) -> SequentialLook:
    """One look from ``d`` and ``s^2`` (checked by the caller): the likelihood ratio, the
    always-valid p-value and the confidence sequence (clipped to ``[-1, 1]`` for a bounded
    state); when not ``ok`` the p-value and interval carry over."""
    edge = 1.0 if state.bounded else math.inf
    if ok:
        log_lr = log_likelihood_ratio(d, s2, state.tau_squared)
        half = confidence_halfwidth(s2, state.tau_squared, state.alpha)
        lower, upper = max(-edge, d - half), min(edge, d + half)
        p_look = math.exp(min(0.0, -log_lr))
    else:
        log_lr, lower, upper, p_look = 0.0, -edge, edge, 1.0
    new_state = _advance(state, nc, nt, p_look, lower, upper)
    return SequentialLook(
        successes_control=0,
        n_control=nc,
        successes_treatment=0,
        n_treatment=nt,
        difference=d,
        variance=s2,
        evaluated=ok,
        log_likelihood_ratio=log_lr,
        interval=Interval(lower, upper, 1.0 - state.alpha, "msprt"),
        state=new_state,
    )


def sequential_paths_estimates(
    difference: npt.ArrayLike,
    variance: npt.ArrayLike,
    evaluated: npt.ArrayLike,
    tau_squared: float,
    alpha: float = 0.05,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Vectorised :func:`sequential_update_estimate` over paths shaped ``(..., looks)``:
    the running always-valid p-value and the running interval (lower, upper; unbounded,
    intersected over looks; an empty intersection collapses as in
    :class:`SequentialState`)."""
    tau2 = _check_tau_squared(tau_squared)
    alpha = check_alpha(alpha)
    d, s2, ev = np.broadcast_arrays(
        np.asarray(difference, dtype=np.float64),
        np.asarray(variance, dtype=np.float64),
        np.asarray(evaluated, dtype=np.bool_),
    )
    ok = ev & np.isfinite(d) & np.isfinite(s2) & (s2 > 0.0)
    safe_s2 = np.where(ok, s2, 1.0)
    safe_d = np.where(ok, d, 0.0)
    total = safe_s2 + tau2
    log_lr = np.where(
        ok, 0.5 * np.log(safe_s2 / total) + tau2 * safe_d**2 / (2.0 * safe_s2 * total), 0.0
    )
    half = np.sqrt(safe_s2 * total / tau2 * (2.0 * math.log(1.0 / alpha) + np.log(total / safe_s2)))
    lower = np.where(ok, safe_d - half, -np.inf)
    upper = np.where(ok, safe_d + half, np.inf)
    p_running = np.minimum.accumulate(_p_from_log_lr(log_lr), axis=-1)
    run_lower = np.maximum.accumulate(lower, axis=-1)
    run_upper = np.minimum.accumulate(upper, axis=-1)
    empty = run_lower > run_upper
    if np.any(empty):
        run_lower, run_upper = _collapse(lower, run_lower, run_upper, empty)
    return p_running, run_lower, run_upper


# --------------------------------------------------------------------------- vectorised paths


@dataclass(frozen=True, slots=True)
class SequentialPaths:
    """Many experiments at once; the last axis of every array indexes looks.

    ``p_value``, ``ci_lower`` and ``ci_upper`` are the running (always-valid) quantities, the
    same as repeated :func:`sequential_update` would give.
    """

    difference: FloatArray
    variance: FloatArray
    evaluated: npt.NDArray[np.bool_]
    log_likelihood_ratio: FloatArray
    p_value: FloatArray
    ci_lower: FloatArray
    ci_upper: FloatArray


def sequential_paths(
    successes_control: npt.ArrayLike,
    n_control: npt.ArrayLike,
    successes_treatment: npt.ArrayLike,
    n_treatment: npt.ArrayLike,
    tau_squared: float,
    alpha: float = 0.05,
    min_events: SupportsIndex = DEFAULT_MIN_EVENTS,
) -> SequentialPaths:
    """Vectorised mSPRT over cumulative counts shaped ``(..., looks)`` (broadcastable)."""
    tau2 = _check_tau_squared(tau_squared)
    alpha = check_alpha(alpha)
    m = check_count(min_events, "min_events")
    sc, nc, st, nt = np.broadcast_arrays(
        np.asarray(successes_control, dtype=np.int64),
        np.asarray(n_control, dtype=np.int64),
        np.asarray(successes_treatment, dtype=np.int64),
        np.asarray(n_treatment, dtype=np.int64),
    )
    if sc.ndim == 0:
        raise ValueError("counts need a look axis (at least one dimension)")
    if np.any(sc < 0) or np.any(st < 0) or np.any(sc > nc) or np.any(st > nt):
        raise ValueError("need 0 <= successes <= n in every arm and look")
    if np.any(np.diff(nc, axis=-1) < 0) or np.any(np.diff(nt, axis=-1) < 0):
        raise ValueError("counts are cumulative and cannot decrease along the look axis")
    arrays = _look_arrays(sc, nc, st, nt, tau2, alpha, m)
    p_running = np.minimum.accumulate(_p_from_log_lr(arrays.log_lr), axis=-1)
    run_lower = np.maximum.accumulate(arrays.lower, axis=-1)
    run_upper = np.minimum.accumulate(arrays.upper, axis=-1)
    empty = run_lower > run_upper
    if np.any(empty):
        run_lower, run_upper = _collapse(arrays.lower, run_lower, run_upper, empty)
    return SequentialPaths(
        difference=arrays.difference,
        variance=arrays.variance,
        evaluated=arrays.evaluated,
        log_likelihood_ratio=arrays.log_lr,
        p_value=p_running,
        ci_lower=run_lower,
        ci_upper=run_upper,
    )


def _collapse(
    lower: FloatArray, run_lower: FloatArray, run_upper: FloatArray, empty: npt.NDArray[np.bool_]
) -> tuple[FloatArray, FloatArray]:
    """Apply the collapse rule of :class:`SequentialState` to paths that become empty."""
    looks = lower.shape[-1]
    flat_lower = lower.reshape(-1, looks)
    out_lower = run_lower.reshape(-1, looks).copy()
    out_upper = run_upper.reshape(-1, looks).copy()
    flat_empty = empty.reshape(-1, looks)
    for row in np.flatnonzero(flat_empty.any(axis=1)):
        k = int(np.argmax(flat_empty[row]))  # k >= 1: a single interval is never empty
        prev_lower, prev_upper = out_lower[row, k - 1], out_upper[row, k - 1]
        point = prev_upper if flat_lower[row, k] > prev_upper else prev_lower
        out_lower[row, k:] = point
        out_upper[row, k:] = point
    return out_lower.reshape(lower.shape), out_upper.reshape(lower.shape)


# --------------------------------------------------------------------------- verdict


class Verdict(enum.Enum):
    """Decision of the sequential test."""

    SHIP_B = "ship_b"
    KEEP_A = "keep_a"
    EQUIVALENT = "equivalent"
    CONTINUE = "continue"


@dataclass(frozen=True, slots=True)
class SequentialDecision:
    """Verdict plus the evidence behind it.

    ``additional_per_arm`` (CONTINUE only) is a rough estimate of further users per arm
    before the interval can decide, assuming the observed difference and variance persist;
    ``None`` when it cannot be estimated (no variance yet).
    """

    verdict: Verdict
    p_value: float
    interval: Interval
    difference: float
    minimum_effect: float
    additional_per_arm: int | None
    reason: str


def _additional_per_arm(look: SequentialLook, minimum_effect: float) -> int | None:
    s2 = look.variance
    if not s2 > 0.0:
        return None
    state = look.state
    d = abs(look.difference)
    target = max(d, minimum_effect - d)

    def gap(scale: float) -> float:
        return confidence_halfwidth(s2 / scale, state.tau_squared, state.alpha) - target

    if gap(1.0) <= 0.0:
        return 0
    hi = 2.0
    while gap(hi) > 0.0:
        hi *= 2.0
        if hi > 1e12:
            return None
    scale = float(optimize.brentq(gap, 1.0, hi, xtol=1e-9, rtol=1e-12))
    n_now = max(look.n_control, look.n_treatment)
    return max(0, math.ceil(n_now * (scale - 1.0)))


def sequential_verdict(look: SequentialLook, minimum_effect: float) -> SequentialDecision:
    """Ship B / Keep A / Equivalent / Continue from the running confidence sequence.

    * SHIP_B: the running interval lies above 0 (always-valid p < alpha, B better).
    * KEEP_A: the running interval lies below 0 (B significantly worse).
    * EQUIVALENT: the running interval lies inside ``(-minimum_effect, +minimum_effect)``.
    * CONTINUE: otherwise, with :attr:`SequentialDecision.additional_per_arm`.
    """
    mde = float(minimum_effect)
    if not (math.isfinite(mde) and mde > 0.0):
        raise ValueError(f"minimum_effect must be a positive finite number; got {minimum_effect!r}")
    state = look.state
    interval = state.interval
    if interval.lower > 0.0:
        verdict, reason = Verdict.SHIP_B, "interval above 0"
    elif interval.upper < 0.0:
        verdict, reason = Verdict.KEEP_A, "interval below 0"
    elif -mde < interval.lower and interval.upper < mde:
        verdict, reason = Verdict.EQUIVALENT, f"interval inside +-{mde:g}"
    else:
        verdict = Verdict.CONTINUE
        reason = "interval contains 0 and reaches beyond the minimum effect"
    additional = _additional_per_arm(look, mde) if verdict is Verdict.CONTINUE else None
    return SequentialDecision(
        verdict=verdict,
        p_value=state.p_value,
        interval=interval,
        difference=look.difference,
        minimum_effect=mde,
        additional_per_arm=additional,
        reason=reason,
    )


# --------------------------------------------------------------------------- planning


def _bernoulli_pair_variance(p1: float, p2: float) -> float:
    return p1 * (1.0 - p1) + p2 * (1.0 - p2)


def sequential_power_lower_bound(
    n_per_arm: float,
    baseline: float,
    minimum_effect: float,
    tau_squared: float,
    alpha: float = 0.05,
) -> float:
    """Closed-form lower bound on the mSPRT's power by ``n_per_arm`` users per arm.

    ``Phi(|delta| sqrt(n / V) - b(n tau^2 / V))``: the probability of crossing at the final
    look alone (normal approximation, plug-in variance at its expectation
    ``V = p_A(1-p_A) + p_B(1-p_B)``). Crossing at an earlier look also counts, so the real
    power is higher.
    """
    p1, p2 = check_rates(baseline, minimum_effect)
    tau2 = _check_tau_squared(tau_squared)
    alpha = check_alpha(alpha)
    n = float(n_per_arm)
    if not n > 0.0:
        raise ValueError(f"n_per_arm must be positive; got {n_per_arm!r}")
    v = _bernoulli_pair_variance(p1, p2)
    drift = abs(float(minimum_effect)) * math.sqrt(n / v)
    return float(special.ndtr(drift - boundary_z(n * tau2 / v, alpha)))


@dataclass(frozen=True, slots=True)
class SequentialPlan:
    """Sample-size plan for the mSPRT with its fixed-horizon counterpart.

    ``n_per_arm`` is the horizon at which :func:`sequential_power_lower_bound` reaches
    ``power``; ``planned_power`` is that bound at ``n_per_arm``; ``inflation`` is
    ``n_per_arm / fixed_n_per_arm``; ``boundary_z`` is the |z| needed at the horizon.
    """

    baseline: float
    treatment_rate: float
    minimum_effect: float
    alpha: float
    power: float
    fixed_n_per_arm: int
    n_per_arm: int
    inflation: float
    tau_squared: float
    boundary_z: float
    planned_power: float

    def start(self, min_events: SupportsIndex = DEFAULT_MIN_EVENTS) -> SequentialState:
        """A fresh :class:`SequentialState` with this plan's alpha and tau^2."""
        return start_sequential(self.tau_squared, self.alpha, min_events)


def plan_sequential(
    baseline: float,
    minimum_effect: float,
    alpha: float = 0.05,
    power: float = 0.8,
    tau_squared: float | None = None,
) -> SequentialPlan:
    """Users per arm so the mSPRT reaches ``power`` against ``minimum_effect``.

    With ``tau_squared=None`` the mixing variance is tuned to the horizon: with
    ``r* = optimal_mixing_ratio(alpha)`` and ``b* = boundary_z(r*)``, the horizon is
    ``N = ceil(V ((b* + z_power) / delta)^2)`` and ``tau^2 = r* V / N``. With an explicit
    ``tau_squared`` the smallest integer ``N`` whose power bound reaches ``power`` is found.
    """
    p1, p2 = check_rates(baseline, minimum_effect)
    alpha = check_alpha(alpha)
    power = check_probability_level(power, "power")
    mde = float(minimum_effect)
    fixed = sample_size_per_arm(p1, mde, alpha, power)
    v = _bernoulli_pair_variance(p1, p2)
    delta = abs(mde)
    z_power = float(special.ndtri(power))
    if tau_squared is None:
        r_star = optimal_mixing_ratio(alpha)
        b_star = boundary_z(r_star, alpha)
        n = max(1, math.ceil(v * ((b_star + z_power) / delta) ** 2))
        tau2 = r_star * v / n
    else:
        tau2 = _check_tau_squared(tau_squared)

        def shortfall(n_cont: float) -> float:
            drift = delta * math.sqrt(n_cont / v)
            return drift - boundary_z(n_cont * tau2 / v, alpha) - z_power

        hi = float(fixed.n_per_arm)
        while shortfall(hi) < 0.0:
            hi *= 2.0
            if hi > 1e15:
                raise ValueError("no horizon reaches the requested power with this tau_squared")
        lo = 1e-9 * v / tau2
        root = float(optimize.brentq(shortfall, lo, hi, xtol=1e-9, rtol=1e-14))
        n = max(1, math.ceil(root))
        while shortfall(float(n)) < 0.0:  # guard the rounding at the root
            n += 1
    planned = sequential_power_lower_bound(n, p1, mde, tau2, alpha)
    return SequentialPlan(
        baseline=p1,
        treatment_rate=p2,
        minimum_effect=mde,
        alpha=alpha,
        power=power,
        fixed_n_per_arm=fixed.n_per_arm,
        n_per_arm=n,
        inflation=n / fixed.n_per_arm,
        tau_squared=tau2,
        boundary_z=boundary_z(n * tau2 / v, alpha),
        planned_power=planned,
    )


def required_variance(
    minimum_effect: float, tau_squared: float, alpha: float = 0.05, power: float = 0.8
) -> float:
    """The variance ``s^2`` of the estimated difference at which the mSPRT's power bound
    (:func:`sequential_power_lower_bound`: ``Phi(delta / s - b(tau^2 / s^2)) = power``)
    is reached. With unit variances ``v_A``, ``v_B`` per outcome (or per user-level
    outcome, with the design effect) and a split ``n_B = rho n_A``, the control needs
    ``n_A = (v_A + v_B / rho) / s^2`` outcomes and the treatment ``rho n_A``: the
    allocation-aware horizon. For equal arms and the planner's ``tau^2`` this is
    :func:`plan_sequential`'s horizon."""
    tau2 = _check_tau_squared(tau_squared)
    alpha = check_alpha(alpha)
    power = check_probability_level(power, "power")
    delta = abs(float(minimum_effect))
    if not (math.isfinite(delta) and delta > 0.0):
        raise ValueError(f"minimum_effect must be non-zero and finite; got {minimum_effect!r}")
    z_power = float(special.ndtri(power))

    def shortfall(log_precision: float) -> float:  # precision = 1 / s^2, log scale
        s2 = math.exp(-log_precision)
        return delta / math.sqrt(s2) - boundary_z(tau2 / s2, alpha) - z_power

    lo, hi = math.log(1e-12 / tau2), math.log(1e12 / tau2) + 2.0 * math.log(1.0 / delta)
    if shortfall(hi) < 0.0:
        raise ValueError("no variance reaches the requested power with this tau_squared")
    if shortfall(lo) >= 0.0:
        return math.exp(-lo)
    root = float(optimize.brentq(shortfall, lo, hi, xtol=1e-13, rtol=1e-15, maxiter=500))
    return math.exp(-root)
