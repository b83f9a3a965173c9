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
    ) -> None:
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

    @property
    def in_flight(self) -> int:
        return self._in_flight

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
            if self._in_flight >= self.settings.max_in_flight:
                self.recorder.dropped()
                return
            self._in_flight += 1
            self.recorder.started()
            task = asyncio.get_running_loop().create_task(
                self._run(
                    request, primary, primary_latency, primary_variant, targeting_key, request_id
                )
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        except Exception:
            log.exception("shadow.offer_failed", request_id=request_id)

    async def _run(
        self,
        request: Req,
        primary: Resp,
        primary_latency: float,
        primary_variant: str,
        targeting_key: str,
        request_id: str,
    ) -> None:
        status = "OK"
        try:
            started = self._clock()
            try:
                shadow = await self.upstream.infer(
                    request, timeout=self.settings.deadline, metadata=()
                )
            except UpstreamError as exc:
                status = exc.status
                return
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

    async def close(self, grace: float) -> None:
        """Wait up to `grace` seconds for running shadow calls, then cancel the rest."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
