"""Shadow mirroring: a processor that decides when to mirror, feeding the shadow upstream.

A sampled request is copied to the shadow variant only after the primary answer is known,
in a task of its own; the primary never waits for it. At most `max_in_flight` shadow calls
run at once: beyond that the copy is dropped and counted, never queued. Every failure of
the shadow side is recorded and logged, never raised (OpenTelemetry's `on_end` contract).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Generic

import structlog
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, Tracer

from sidecar.app import attributes as attr
from sidecar.app.ports import Outputs, Req, Resp, Upstream
from sidecar.config import ShadowConfig
from sidecar.core.routing import shadow_sampled
from sidecar.core.shadow import Comparator, Comparison, ShadowRecorder, load_comparator
from sidecar.errors import UpstreamError

log = structlog.get_logger("sidecar.mirror")


class ShadowMirror(Generic[Req, Resp]):
    def __init__(
        self,
        settings: ShadowConfig,
        upstream: Upstream[Req, Resp],
        decode: Callable[[Resp], Outputs],
        *,
        salt: str,
        comparator: Comparator | None = None,
        clock: Callable[[], float] = time.perf_counter,
        wall_clock: Callable[[], float] = time.time,
        tracer: Tracer | None = None,
    ) -> None:
        self._tracer = tracer or trace.get_tracer(__name__)
        self.settings = settings
        self.upstream = upstream
        self._decode = decode
        self._salt = salt
        self._compare = comparator or load_comparator(
            settings.comparator, settings.rtol, settings.atol
        )
        self._clock = clock
        self._wall = wall_clock
        self.recorder = ShadowRecorder(
            settings.variant, settings.comparator, keep_examples=settings.keep_examples
        )
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._failures = 0
        self._open_until = 0.0
        self._probing = False
        self._cooldown = settings.breaker_cooldown

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def set_sample_bp(self, sample_bp: int) -> None:
        """A new sampling share from the next offered request (configuration reload)."""
        self.settings = self.settings.model_copy(update={"sample_bp": sample_bp})

    def offer(
        self,
        request: Req,
        primary: Resp,
        *,
        primary_latency: float,
        primary_variant: str,
        bucketing_key: str,
        targeting_key: str,
        request_id: str,
    ) -> None:
        """Mirror `request` if it is sampled and a slot is free. Never blocks or raises."""
        try:
            if not shadow_sampled(self._salt, bucketing_key, self.settings.sample_bp):
                return
            self.recorder.sampled()
            if self._in_flight >= self.settings.max_in_flight or not self._breaker_allows():
                self.recorder.dropped()
                return
            self._in_flight += 1
            self.recorder.started()
            primary_span = trace.get_current_span().get_span_context()
            task = asyncio.get_running_loop().create_task(
                self._traced(
                    primary_span,
                    request,
                    primary,
                    primary_latency,
                    primary_variant,
                    targeting_key,
                    request_id,
                )
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        except Exception:
            log.exception("shadow.offer_failed", request_id=request_id)

    async def _traced(
        self,
        primary_span: SpanContext,
        request: Req,
        primary: Resp,
        primary_latency: float,
        primary_variant: str,
        targeting_key: str,
        request_id: str,
    ) -> None:
        """The shadow call in a trace of its own, linked to (not under) the primary span,
        so a slow shadow never stretches the request's trace."""
        with self._tracer.start_as_current_span(
            "sidecar.shadow",
            context=Context(),
            kind=SpanKind.INTERNAL,
            links=[Link(primary_span)] if primary_span.is_valid else [],
            attributes={
                attr.SHADOW: True,
                attr.SHADOW_VARIANT: self.settings.variant,
                attr.REQUEST_ID: request_id,
                attr.FLAG_VARIANT: primary_variant,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            outcome = await self._run(
                request, primary, primary_latency, primary_variant, targeting_key, request_id
            )
            if isinstance(outcome, Comparison):
                span.set_attribute(attr.SHADOW_AGREED, outcome.agreed)
            else:
                span.set_status(Status(StatusCode.ERROR, outcome))

    async def _run(
        self,
        request: Req,
        primary: Resp,
        primary_latency: float,
        primary_variant: str,
        targeting_key: str,
        request_id: str,
    ) -> Comparison | str:
        """Call the shadow and compare; returns the comparison or the failure status."""
        status = "OK"
        comparison: Comparison | None = None
        try:
            started = self._clock()
            try:
                shadow = await self.upstream.infer(
                    request, timeout=self.settings.deadline, metadata=()
                )
            except UpstreamError as exc:
                status = exc.status
                return status
            latency = self._clock() - started
            primary_out, shadow_out = self._decode(primary), self._decode(shadow)
            try:
                comparison = self._compare(primary_out, shadow_out)
            except Exception as exc:
                comparison = Comparison(False, f"comparator error: {exc!r}")
            self.recorder.finished_compared(
                comparison,
                primary_latency,
                latency,
                request_id=request_id,
                targeting_key=targeting_key,
                primary_variant=primary_variant,
                primary=primary_out,
                shadow=shadow_out,
                unix_time=self._wall(),
            )
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        except Exception:
            status = "INTERNAL"
            log.exception("shadow.failed", request_id=request_id)
        finally:
            self._in_flight -= 1
            if status != "OK":
                self.recorder.finished_error(status)
            self._breaker_result(status)
        return comparison if comparison is not None else status

    # ---- circuit breaker: a dead or hanging shadow is left alone ---------------------

    BREAKER_STATUSES = frozenset({"DEADLINE_EXCEEDED", "UNAVAILABLE"})

    def _breaker_allows(self) -> bool:
        """Closed: mirror. Open: drop until the cool-down ends, then let one probe through."""
        if self._open_until == 0.0:
            return True
        now = self._clock()
        if now < self._open_until or self._probing:
            return False
        self._probing = True
        return True

    def _breaker_result(self, status: str) -> None:
        threshold = self.settings.breaker_failures
        if threshold <= 0:
            return
        if status not in self.BREAKER_STATUSES:
            if self._open_until:
                log.info("shadow.breaker_closed", variant=self.settings.variant)
            self._failures = 0
            self._open_until = 0.0
            self._cooldown = self.settings.breaker_cooldown
            self._probing = False
            return
        self._failures += 1
        if self._probing or (self._open_until == 0.0 and self._failures >= threshold):
            if self._probing:
                self._cooldown = min(self._cooldown * 2, 30.0)
            self._open_until = self._clock() + self._cooldown
            self._probing = False
            log.warning(
                "shadow.breaker_open",
                variant=self.settings.variant,
                consecutive_failures=self._failures,
                last_status=status,
                cooldown_seconds=self._cooldown,
            )

    async def close(self, grace: float) -> None:
        """Wait up to `grace` seconds for running shadow calls, then cancel the rest."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
