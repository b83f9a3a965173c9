"""The request path: route -> forward -> respond, with the shadow copy offered afterwards.

Both front doors (sidecar.v1.Predict and the Open Inference Protocol) call
`DataPlane.infer`; neither holds routing logic of its own. The path reads one state
snapshot, takes no lock, does no I/O besides the upstream call, and never waits on the
shadow.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from typing import Generic, NamedTuple

from opentelemetry import trace

from sidecar.app import attributes as attr
from sidecar.app.drift import DriftMonitor
from sidecar.app.experiment import ExperimentService
from sidecar.app.mirror import ShadowMirror
from sidecar.app.ports import Metadata, Req, Resp, Upstream
from sidecar.app.state import StateHolder
from sidecar.config import UpstreamConfig, VariantSpec
from sidecar.core.experiment import Attribution, OutcomeError, OutcomeLedger, UnknownRequest
from sidecar.core.experiment.units import unit_hash
from sidecar.core.limits import fits, shown, utf8_len
from sidecar.core.routing import (
    Flag,
    Reason,
    Resolution,
    RoutingContext,
    evaluate,
    served_variants,
    variants_for_version,
)
from sidecar.errors import ErrorCode, InvalidRequest, NotFound, SidecarError


class Served(NamedTuple, Generic[Resp]):
    response: Resp
    request_id: str
    resolution: Resolution
    variant: VariantSpec
    latency: float
    flag: Flag


_SPLIT = (Reason.SPLIT, Reason.SPLIT_NO_KEY)
# NamedTuples built on the request path with the C constructor: a NamedTuple's own is a
# Python-level `__new__` (about 1,400 more CPU instructions each, callgrind).
_new = tuple.__new__


class _RandomHex:
    """32 hex digits at a time from the OS's CSPRNG, read `batch` ids at once: one
    `getrandom` system call per `batch` requests instead of one per request. Every id is
    still 128 fresh random bits, never reused; the buffer is dropped in a forked child."""

    def __init__(self, batch: int = 256) -> None:
        self._size = 32 * batch
        self._hex = ""
        self._at = self._size
        os.register_at_fork(after_in_child=self._drop)

    def _drop(self) -> None:
        self._hex, self._at = "", self._size

    def __call__(self) -> str:
        at = self._at
        if at >= self._size:
            self._hex, at = os.urandom(self._size // 2).hex(), 0
        self._at = at + 32
        return self._hex[at : at + 32]


_random_hex = _RandomHex()


def new_request_id() -> str:
    """32 hex digits, 128 random bits (unguessable: outcome reports name requests by it),
    from os.urandom read in batches (`_RandomHex`): a tenth of what uuid4().hex costs."""
    return _random_hex()


MAX_KEY_BYTES = 256  # default of `predict.max_key_bytes`


def check_key(field: str, value: str, limit: int) -> None:
    """Raise `InvalidRequest` when `value` is longer than `limit` bytes (UTF-8)."""
    if not fits(value, limit):
        raise InvalidRequest(
            f"{field}: {utf8_len(value)} bytes; at most {limit} (predict.max_key_bytes)"
        )


class DataPlane(Generic[Req, Resp]):
    def __init__(
        self,
        *,
        model: str,
        state: StateHolder,
        variants: Mapping[str, VariantSpec],
        upstreams: Mapping[str, Upstream[Req, Resp]],
        upstream_config: UpstreamConfig,
        mirror: ShadowMirror[Req, Resp] | None = None,
        outcomes: OutcomeLedger | None = None,
        experiment: ExperimentService | None = None,
        drift: DriftMonitor[Req, Resp] | None = None,
        noise: ShadowMirror[Req, Resp] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        request_ids: Callable[[], str] = new_request_id,
        max_key_bytes: int = MAX_KEY_BYTES,
        forward: Callable[[str, str, bool | float], Attribution | None] | None = None,
    ) -> None:
        missing = set(variants) - set(upstreams)
        if missing:
            raise ValueError(f"no upstream for variants {sorted(missing)}")
        self.model = model
        self.state = state
        self.variants = variants
        self.upstreams = upstreams
        self.limits = upstream_config
        self.mirror = mirror
        self._clock = clock
        self._request_ids = request_ids
        self.served: dict[str, int] = dict.fromkeys(variants, 0)
        # `is not None`: an empty ledger is falsy (it has a length), and must be kept
        self.outcomes = outcomes if outcomes is not None else OutcomeLedger()
        self.experiment = experiment
        self.drift = drift
        self.noise = noise
        self.max_key_bytes = max_key_bytes
        # In a fleet: hands an outcome for another member's request id to that member
        # (None: the id is this sidecar's, its own ledger decides).
        self._forward = forward
        self._versions = {name: spec.model_version for name, spec in variants.items()}
        self._shadow = mirror.settings.variant if mirror is not None else None
        self._mirrors = tuple(m for m in (mirror, noise) if m is not None)

    def timeout_for(self, time_remaining: float | None) -> float:
        """The caller's deadline, capped by the configured maximum (default when unset)."""
        return self.limits.timeout_for(time_remaining)

    async def infer(
        self,
        request: Req,
        *,
        targeting_key: str,
        segment: str,
        time_remaining: float | None,
        metadata: Metadata,
        version: str = "",
        traced: bool = True,
    ) -> Served[Resp]:
        """Route one request and return the chosen variant's answer. A `version` (the
        model version the request names) is served by the served variant with that
        `model_version` (reason VERSION_REQUESTED, outside the experiment) unless the kill
        switch is on.

        Raises `UpstreamError` (the upstream's status passes through) or `SidecarError`
        (`InvalidRequest` for a key or segment over `max_key_bytes`, `NotFound` for a
        version no served variant has, before anything is counted). `traced=False`: the
        caller has no span for the decision (the front door's span-free path), so the
        current span is not looked up.
        """
        if (len(targeting_key) + len(segment)) * 4 > self.max_key_bytes:
            self._check_keys(targeting_key, segment)  # else both fit: 4 bytes a character at most
        timeout = self.timeout_for(time_remaining)
        if timeout <= 0.0:  # refused before routing: no variant is charged with it
            raise SidecarError("deadline already expired", ErrorCode.DEADLINE_EXCEEDED)
        snapshot = self.state.current
        flag = snapshot.flag
        named = self.requested(flag, version) if version else ()
        request_id = self._request_ids()
        resolution = evaluate(
            flag,
            _new(
                RoutingContext,
                (targeting_key, segment, request_id, named[0] if len(named) == 1 else ""),
            ),
        )
        if len(named) > 1 and not flag.routing.rules_suspended:
            resolution = self._within(named, resolution)  # a version variants share
        variant = resolution.variant
        epoch = -1  # part of the A/B experiment only when the weighted split chose
        unit = None  # the targeting key's unit hash, computed once (also remembered)
        if self.experiment is not None and resolution.reason in _SPLIT:
            epoch = self.experiment.on_snapshot(snapshot)
            unit = unit_hash(targeting_key) if targeting_key else None
            admitted, first = self.outcomes.enter(unit, epoch)
            if admitted:  # first: a new user for the sample-ratio check (None: keyless)
                self.experiment.tracker.assigned(variant, first)
            else:  # the key's share of this epoch is full: served, not in the experiment
                epoch = -1
        if traced:
            span = trace.get_current_span()
            if span.is_recording():  # the decision goes on the caller's server span
                span.set_attributes(
                    {
                        attr.FLAG_KEY: flag.key,
                        attr.FLAG_VARIANT: variant,
                        attr.FLAG_REASON: resolution.reason.value,
                        attr.FLAG_PROVIDER: attr.PROVIDER,
                        attr.REQUEST_ID: request_id,
                        attr.ROUTED_MODEL: self.model,
                    }
                )
        upstream = self.upstreams.get(variant)
        if upstream is None:  # the flag names only configured variants; defensive
            raise SidecarError(f"variant {variant!r} has no upstream", ErrorCode.INTERNAL)
        started = self._clock()
        response = await upstream.infer(request, timeout=timeout, metadata=metadata)
        done = self._clock()
        latency = done - started
        self.served[variant] += 1
        self.outcomes.remember(request_id, variant, segment, done, epoch, targeting_key, unit)
        for mirror in self._mirrors:
            if mirror is self.noise and variant != mirror.settings.variant:
                continue  # the noise mirror compares its model (stable) with itself only
            mirror.offer(
                request,
                response,
                primary_latency=latency,
                primary_variant=variant,
                bucketing_key=targeting_key or request_id,
                targeting_key=targeting_key,
                request_id=request_id,
            )
        if self.drift is not None:
            self.drift.offer(request, response, variant)
        return _new(
            Served, (response, request_id, resolution, self.variants[variant], latency, flag)
        )

    def _check_keys(self, targeting_key: str, segment: str) -> None:
        limit = self.max_key_bytes
        check_key("targeting key (context.targeting_key, x-user-id)", targeting_key, limit)
        check_key("segment (context.segment, x-segment)", segment, limit)

    def report_outcome(self, request_id: str, metric: str, value: bool | float) -> Attribution:
        """Attribute an outcome the app reports to the variant and segment that served
        `request_id` (counted once per request and metric, and at most the ledger's cap
        per targeting key). Refusals (NotFound, InvalidRequest) count nothing."""
        check_key("request_id", request_id, self.max_key_bytes)
        check_key("metric", metric, self.max_key_bytes)
        try:
            if self._forward is not None:
                forwarded = self._forward(request_id, metric, value)
                if forwarded is not None:
                    return forwarded
            attribution = self.outcomes.report(request_id, metric, value, self._clock())
        except UnknownRequest as exc:
            raise NotFound(str(exc)) from None
        except OutcomeError as exc:
            raise InvalidRequest(str(exc)) from None
        if self.experiment is not None and attribution.counted and attribution.epoch >= 0:
            self.experiment.tracker.outcome(
                attribution.epoch,
                attribution.variant,
                attribution.segment,
                metric,
                value,
                unit=attribution.unit,
                keyless=attribution.keyless,
                new_user=attribution.new_user,
            )
        return attribution

    @staticmethod
    def _within(named: tuple[str, ...], resolution: Resolution) -> Resolution:
        """The usual choice when it has the requested version (or the kill switch chose);
        else the first variant that has it (stable first)."""
        if resolution.variant in named or resolution.reason is Reason.KILL_SWITCH:
            return resolution
        return Resolution(named[0], Reason.VERSION_REQUESTED)

    def requested(self, flag: Flag, version: str) -> tuple[str, ...]:
        """The served variants whose model version is `version` (stable first), else
        `NotFound` (as the model server answers a version it does not have)."""
        variants = variants_for_version(flag, self._versions, version, self._shadow)
        if not variants:
            served = [self._versions[v] for v in served_variants(flag, self._shadow)]
            raise NotFound(
                f"model {shown(self.model)} has no version {shown(version)} here; served "
                f"versions: {', '.join(repr(v) for v in served if v) or 'none named'}"
            )
        return variants

    def serving(self, version: str) -> str:
        """The variant that answers ready / metadata calls for `version`: the stable one
        when empty, else the served variant with that version (`NotFound` otherwise)."""
        flag = self.state.current.flag
        return self.requested(flag, version)[0] if version else flag.stable

    async def stable_ready(self, timeout: float) -> bool:
        """Whether the stable variant's model is ready (ready means stable is ready)."""
        return await self.variant_ready(self.state.current.flag.stable, timeout)

    async def version_ready(self, version: str, timeout: float) -> bool:
        """Whether the variant answering `version` is ready (the stable one when empty);
        false for a version no served variant has."""
        try:
            variant = self.serving(version)
        except NotFound:
            return False
        return await self.variant_ready(variant, timeout)

    async def versions_ready(self, timeout: float) -> list[tuple[str, bool]]:
        """(model version, ready) of each served variant, one entry per version (ready
        when every variant with it is), stable first."""
        names = served_variants(self.state.current.flag, self._shadow)
        ready = await asyncio.gather(*(self.variant_ready(n, timeout) for n in names))
        out: dict[str, bool] = {}
        for name, ok in zip(names, ready, strict=True):
            version = self._versions[name]
            out[version] = out.get(version, True) and ok
        return list(out.items())

    async def variant_ready(self, variant: str, timeout: float) -> bool:
        upstream = self.upstreams.get(variant)
        return upstream is not None and await upstream.ready(timeout=timeout)
