"""Composition root: builds the sidecar from a `Config` and runs it.

The only place that chooses implementations (upstream pool, servicers, health,
reflection) and binds addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import redis
import structlog
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NoOpTracer, Tracer

from sidecar import __version__
from sidecar._proto.sidecar.v1 import control_pb2, control_pb2_grpc, predict_pb2_grpc
from sidecar.adapters.alerts import Alerts, ModelAlerts
from sidecar.adapters.fleet import connection as fleet_connection
from sidecar.adapters.fleet.keys import FleetKeys
from sidecar.adapters.fleet.lease import LeaderLease, SharedCheckpoint
from sidecar.adapters.fleet.member import FleetMember
from sidecar.adapters.fleet.stats import (
    FleetExperiment,
    FleetStats,
    OutcomeForwarder,
    feed_windows,
)
from sidecar.adapters.fleet.stats import request_ids as fleet_request_ids
from sidecar.adapters.grpc.auth import Authenticator, AuthInterceptor
from sidecar.adapters.grpc.control import ControlServicer
from sidecar.adapters.grpc.converters import decode_outputs
from sidecar.adapters.grpc.models import ControlRouter
from sidecar.adapters.grpc.servicers import (
    GenericOnly,
    InferenceServicer,
    PredictServicer,
    add_inference_servicer,
    service_names,
)
from sidecar.adapters.store.memory import MemoryStateStore
from sidecar.adapters.store.redis import RedisStore
from sidecar.adapters.store.sqlite import SqliteStore
from sidecar.adapters.telemetry.metrics import Readings, SidecarMetrics
from sidecar.adapters.telemetry.processor import Sink, VariantStatsProcessor
from sidecar.adapters.telemetry.spans import StatsTracer
from sidecar.adapters.telemetry.tracing import INSTRUMENTATION, tracer_provider
from sidecar.adapters.upstream.oip import UpstreamPool
from sidecar.adapters.upstream.passthrough import PassThrough
from sidecar.adapters.upstream.wire import InferBytes, InferReply
from sidecar.app.control import ControlService, RolloutSetup, describe
from sidecar.app.dataplane import DataPlane
from sidecar.app.drift import DriftMonitor
from sidecar.app.experiment import (
    AlertSink,
    DriftLevels,
    ExperimentService,
    FileCheckpoint,
    Insights,
)
from sidecar.app.fastpath import FastRollback
from sidecar.app.mirror import ShadowMirror
from sidecar.app.ports import AuditEntry, RevisionConflict, StateFileError, StateStore
from sidecar.app.rollout import (
    CanaryCheckpoint,
    JudgeEvaluator,
    RolloutController,
    automatic_rollback,
    stable_baseline,
)
from sidecar.app.state import Snapshot, StateHolder
from sidecar.config import Config, ConfigError, load_config, read_drift_reference, sibling_path
from sidecar.core.canary.fastpath import HardFailureDetector
from sidecar.core.canary.merged import MergedWindows
from sidecar.core.canary.window import RollingWindows, WindowSource
from sidecar.core.experiment import Attribution, OutcomeLedger
from sidecar.core.experiment.analysis import ExperimentTracker
from sidecar.core.experiment.counters import ExperimentCounters
from sidecar.core.experiment.drift import DriftTracker
from sidecar.core.routing import FlagError
from sidecar.core.state import DesiredState
from sidecar.core.stats.lazy import warm_up
from sidecar.core.tensors import decode_inputs
from sidecar.logging import set_level
from sidecar.reload import merge, plan_reload, unit_fields

log = structlog.get_logger("sidecar")
READINESS_INTERVAL = 2.0
STOP_TASKS_S = 5.0  # how long a stop waits for the cancelled background tasks to end
# grpc.health.v1 names: "" (overall) is readiness: it follows the stable variant's model,
# like the routed services' names; LIVENESS is SERVING from start until the stop begins,
# whatever the model servers do (a Kubernetes liveness or start-up probe asks for it).
LIVENESS = "liveness"
DRIFT_INTERVAL = 0.2  # short: fewer queued requests held, smaller batches of work
FLEET_RECENT_S = 600.0  # the span of recent buckets each fleet member publishes, at least
DRIFT_SLICE = 8  # requests decoded between yields to the event loop (about 0.3 ms of work)


@dataclass
class RoutedUnit:
    """One routed model's parts, built from its per-model view of the configuration
    (`Config.for_model`): its state (store, holder, fleet membership and lead), upstream
    pool (channels shared), mirrors, experiment, insights, data plane, Control service and
    servicer, rollout controller and windows."""

    config: Config
    pool: UpstreamPool
    dataplane: DataPlane[InferBytes, InferReply]
    control: ControlService
    controller: RolloutController
    experiment: ExperimentService
    insights: Insights
    windows: RollingWindows
    readings: Readings
    fleet: FleetMember | None = None
    lead: FleetLead | None = None
    fast_rollback: FastRollback | None = None

    @property
    def name(self) -> str:
        return self.config.model

    def tasks(self) -> list[Coroutine[None, None, None]]:
        """The unit's background work (its controller runs its own loop)."""
        work = [self.controller.run(), self.experiment.run()]
        if self.insights.drift is not None:
            work.append(self.insights.drift.run(DRIFT_INTERVAL))
        if self.fleet is not None:
            work.append(self.fleet.run())
        if self.lead is not None:
            work += self.lead.tasks(self.dataplane)
        if self.fast_rollback is not None:
            work.append(self.fast_rollback.run())
        return work

    def started(self) -> dict[str, object]:
        """What the start-up log line says about this model."""
        return {
            "variants": {n: v.address for n, v in self.config.variants.items()},
            "weights": dict(self.dataplane.state.current.flag.weights),
            "shadow": self.config.shadow.variant if self.config.shadow else None,
            "state": describe(self.control.snapshot()),
        }

    def apply(self, config: Config, live: tuple[str, ...]) -> None:
        """The live fields (`sidecar.reload`) of this model's view."""
        if config.shadow is not None:
            if "shadow.sample_bp" in live and self.dataplane.mirror is not None:
                self.dataplane.mirror.set_sample_bp(config.shadow.sample_bp)
            if "shadow.noise_sample_bp" in live and self.dataplane.noise is not None:
                self.dataplane.noise.set_sample_bp(config.shadow.noise_sample_bp)
        if any(f.startswith("analysis.") for f in live):
            self.controller.reconfigure(config.analysis)
        self.config = config

    async def close_mirrors(self, grace: float) -> None:
        for mirror in (self.dataplane.mirror, self.dataplane.noise):
            if mirror is not None:
                await mirror.close(grace=min(grace, 1.0))

    async def close(self) -> None:
        """After the servers stopped: the last experiment look and checkpoint, the
        upstream channels this unit opened, the fleet lead and membership."""
        with contextlib.suppress(Exception):
            self.experiment.look()
        await self.experiment.save()
        await self.pool.close()
        if self.lead is not None:
            await self.lead.close()
        if self.fleet is not None:
            await self.fleet.close()


@dataclass
class Sidecar:
    """A built, not yet started, sidecar: the shared servers, telemetry and alerts, and
    one `RoutedUnit` per routed model (the primary first). The single-model attributes
    (`dataplane`, `control`, ...) are the primary's."""

    config: Config
    units: list[RoutedUnit]
    predict_server: grpc.aio.Server
    control_server: grpc.aio.Server
    health: health_aio.HealthServicer
    tracer_provider: TracerProvider
    stats: VariantStatsProcessor
    metrics: SidecarMetrics
    alerts: Alerts
    predict_port: int = 0
    control_port: int = 0
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # routed model -> its stable's last readiness (absent: not probed yet)
    _ready: dict[str, bool] = field(default_factory=dict)
    _all_ready: bool | None = None

    @property
    def primary(self) -> RoutedUnit:
        return self.units[0]

    @property
    def pool(self) -> UpstreamPool:
        return self.primary.pool

    @property
    def dataplane(self) -> DataPlane[InferBytes, InferReply]:
        return self.primary.dataplane

    @property
    def control(self) -> ControlService:
        return self.primary.control

    @property
    def controller(self) -> RolloutController:
        return self.primary.controller

    @property
    def experiment(self) -> ExperimentService:
        return self.primary.experiment

    @property
    def insights(self) -> Insights:
        return self.primary.insights

    @property
    def fleet(self) -> FleetMember | None:
        return self.primary.fleet

    @property
    def lead(self) -> FleetLead | None:
        return self.primary.lead

    @property
    def fast_rollback(self) -> FastRollback | None:
        return self.primary.fast_rollback

    def unit(self, model: str) -> RoutedUnit:
        """The routed unit of `model` (KeyError when it is not routed)."""
        for unit in self.units:
            if unit.name == model:
                return unit
        raise KeyError(model)

    async def start(self) -> None:
        """Start serving; on any failure, stop what was started and raise."""
        try:
            await self._start()
        except BaseException:
            await self._abort_start()
            raise

    async def _start(self) -> None:
        await self.predict_server.start()
        await self.control_server.start()
        metrics_port = None
        if self.config.metrics_address:
            try:
                metrics_port = self.metrics.serve(self.config.metrics_address)
            except OSError as exc:
                raise StartupError(
                    f"listen.metrics: cannot listen on {self.config.metrics_address}: "
                    f"{exc.strerror or exc}"
                ) from None
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await self.refresh_readiness()  # "" answers for the stables from the start
        for unit in self.units:
            self._tasks.append(asyncio.create_task(self._watch_readiness(unit)))
            self._tasks += [asyncio.create_task(work) for work in unit.tasks()]
        primary = self.primary.started()
        log.info(
            "sidecar.started",
            predict=f"{_host(self.config.predict_address)}:{self.predict_port}",
            control=f"{_host(self.config.control_address)}:{self.control_port}",
            model=self.config.model,
            **primary,
            models={u.name: u.started() for u in self.units[1:]} or None,
            metrics=f"{_host(self.config.metrics_address)}:{metrics_port}"
            if metrics_port
            else None,
        )

    async def _abort_start(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(self.predict_server.stop(None), self.control_server.stop(None))
        for unit in self.units:
            await unit.pool.close()
        self.metrics.close()

    def all_ready(self) -> bool:
        """Every routed model's stable is ready (the one place this is decided)."""
        return all(self._ready.get(unit.name, False) for unit in self.units)

    async def refresh_readiness(self) -> bool:
        """Ask every routed model's stable now and publish the health status; whether all
        are ready."""
        for unit in self.units:
            await self._probe(unit)
        await self._publish_readiness()
        return self.all_ready()

    async def _watch_readiness(self, unit: RoutedUnit) -> None:
        """Keep one routed model's stable readiness current (asked every
        READINESS_INTERVAL); grpc.health.v1 follows `all_ready()`."""
        while True:
            await asyncio.sleep(READINESS_INTERVAL)
            await self._probe(unit)
            await self._publish_readiness()

    async def _probe(self, unit: RoutedUnit) -> None:
        """One routed model's stable readiness (ModelReady on its model server)."""
        ready = await unit.dataplane.stable_ready(self.config.upstream.connect_timeout or 1.0)
        if ready == self._ready.get(unit.name):
            return
        self._ready[unit.name] = ready
        if unit.fleet is not None:
            unit.fleet.ready = ready
        log.info(
            "stable.readiness",
            ready=ready,
            model=unit.name,
            variant=unit.dataplane.state.current.flag.stable,
        )

    async def _publish_readiness(self) -> None:
        """The overall status (service "", what a Kubernetes readiness probe asks) and
        every routed service's: SERVING when `all_ready()`, else NOT_SERVING. Liveness is
        apart (service `liveness`, OIP ServerLive). After `stop` began, the health
        servicer keeps NOT_SERVING whatever is set."""
        ready = self.all_ready()
        if ready == self._all_ready:
            return
        self._all_ready = ready
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *service_names()):
            await self.health.set(name, status)

    def reload(self) -> None:
        """SIGHUP: re-read the configuration file; apply what can change live (see
        `sidecar.reload`; per routed model), keep the rest, and on an invalid file change
        nothing and log why, naming the field. Never raises: the process keeps serving."""
        path = self.config.source
        try:
            new = load_config(path)
        except ConfigError as exc:
            log.error(
                "config.reload_refused",
                file=path,
                problems=exc.problems,
                message="invalid configuration; the one in force is kept",
            )
            return
        except Exception as exc:  # never let a reload end the process
            log.exception("config.reload_failed", file=path, error=str(exc))
            return
        plan = plan_reload(self.config, new)
        merged = merge(self.config, new, plan.live)
        self._apply(merged, plan.live)
        self.config = merged
        log.info(
            "config.reloaded",
            file=path,
            applied=list(plan.live),
            ignored_stored_state_wins=list(plan.ignored),
            restart_needed=list(plan.restart),
        )
        if plan.restart:
            log.warning(
                "config.reload_needs_restart",
                fields=list(plan.restart),
                message="these changes take effect only after a restart",
            )

    def _apply(self, config: Config, live: tuple[str, ...]) -> None:
        if "server.log_level" in live:
            set_level(config.server.log_level)
        for unit in self.units:
            unit.apply(config.for_model(unit.name), unit_fields(live, unit.name, config.model))

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, refuse new calls, drain in-flight within `grace`."""
        grace = self.config.server.shutdown_grace if grace is None else grace
        log.info("sidecar.stopping", grace_seconds=grace)
        await self.health.enter_graceful_shutdown()
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # bounded: a task that swallowed its cancellation cannot hold the stop
            ended, stuck = await asyncio.wait(self._tasks, timeout=STOP_TASKS_S)
            for task in ended:  # retrieved, as gather(return_exceptions=True) would
                if not task.cancelled():
                    task.exception()
            if stuck:
                log.warning("sidecar.tasks_not_stopped", tasks=sorted(t.get_name() for t in stuck))
        await asyncio.gather(self.predict_server.stop(grace), self.control_server.stop(grace))
        for unit in self.units:
            await unit.close_mirrors(grace)
        for unit in self.units:
            await unit.close()
        await self.alerts.drain()
        await asyncio.to_thread(self.tracer_provider.shutdown)  # flushes the exporter
        self.metrics.close()
        log.info("sidecar.stopped")


def _rollout_reading(snapshot: Snapshot, stalled: str = "") -> dict[str, str | bool]:
    r = snapshot.state.rollout
    if r is None:
        return {}
    return {
        "stage": r.stage.name if r.stage else "",
        "phase": r.phase.value,
        "deadline_exceeded": bool(stalled),
    }


def _host(address: str) -> str:
    return address.rpartition(":")[0]


class StartupError(Exception):
    """The sidecar cannot start safely; the message says why and what to do."""


def _stores(config: Config) -> StateStore:
    if config.state.backend == "memory":
        return MemoryStateStore()
    if config.state.backend == "redis":
        return _redis_store(config)
    return SqliteStore(config.state.path)


def _redis_store(config: Config) -> RedisStore:
    """The fleet store, with Redis reached and the password accepted (else one line
    naming the setting)."""
    r = config.state.redis
    try:
        client = fleet_connection.sync_client(r)
    except ValueError as exc:  # the password's env variable or file
        raise StartupError(str(exc)) from None
    store = RedisStore(client, FleetKeys(r.fleet), r.url)
    try:
        client.ping()
    except redis.RedisError as exc:
        if not isinstance(exc, redis.AuthenticationError) and "AUTH" not in str(exc):
            raise StartupError(f"state.redis.url: cannot reach {store.name}: {exc}") from None
        if r.password_env is None and r.password_file is None:
            raise StartupError(
                f"state.redis.password_env / password_file: {store.name} requires a password "
                "and neither is set"
            ) from None
        setting = "state.redis.password_env" if r.password_env else "state.redis.password_file"
        raise StartupError(f"{setting}: {store.name} refused the password: {exc}") from None
    return store


def _fleet(config: Config, store: StateStore, holder: StateHolder) -> FleetMember | None:
    """This sidecar's fleet membership when the state is shared (state.backend: redis)."""
    if not isinstance(store, RedisStore):
        return None
    r = config.state.redis
    member_id, host = r.member()
    return FleetMember(
        client=fleet_connection.async_client(r),
        store=store,
        keys=store.keys,
        holder=holder,
        template=config.flag,
        member_id=member_id,
        host=host,
        version=__version__,
        heartbeat_interval=r.heartbeat_interval,
        member_ttl=r.member_ttl,
        resync_interval=r.resync_interval,
    )


@dataclass(frozen=True)
class FleetLead:
    """The fleet's one rollout driver and its statistics (state.backend: redis): the
    leader lease, this member's published statistics and the others' (merged windows,
    the experiment's fleet view), and outcome forwarding between members."""

    lease: LeaderLease
    stats: FleetStats
    windows: MergedWindows
    experiment: FleetExperiment
    forwarder: OutcomeForwarder
    request_ids: Callable[[], str]
    budget: SharedCheckpoint

    def forward(self, request_id: str, metric: str, value: bool | float) -> Attribution | None:
        return self.forwarder.offer(request_id, metric, value)

    def tasks(
        self, dataplane: DataPlane[InferBytes, InferReply]
    ) -> list[Coroutine[None, None, None]]:
        return [
            self.lease.run(),
            self.stats.run(),
            self.forwarder.run(),
            self.forwarder.consume(dataplane.report_outcome),
        ]

    async def close(self) -> None:
        """Hand the lease over at once and publish the last statistics."""
        await self.lease.release()
        await self.forwarder.send()
        await self.stats.publish()
        await self.stats.client.aclose()


def _lead(
    config: Config,
    fleet: FleetMember | None,
    windows: RollingWindows,
    counters: Callable[[], ExperimentCounters | None],
) -> FleetLead | None:
    """The leader lease and the fleet statistics of a fleet member (None alone)."""
    if fleet is None:
        return None
    r, a = config.state.redis, config.analysis
    client = fleet_connection.async_client(r)
    member = fleet.member_id
    # Buckets the leader may still read: the lookback (or a recent span of up to 10
    # minutes), one tick since the last read, and the bucket still settling.
    span = min(a.horizon, max(a.lookback, FLEET_RECENT_S) + a.interval + 2 * a.bucket)
    stats = FleetStats(
        client, fleet.keys, member, windows=windows, experiment=counters, span=span,
        interval=r.stats_interval, ttl=max(config.experiment.ttl_seconds, 10 * r.stats_interval),
    )  # fmt: skip
    merged = MergedWindows(windows, settle=r.stats_interval + 1.0)
    stats.on_refresh.append(feed_windows(merged))
    forwarder = OutcomeForwarder(
        client,
        fleet.keys,
        stats,
        {m.name: m.kind for m in config.experiment.metrics},
        stream_ttl=config.experiment.ttl_seconds,
        block=min(1.0, r.connect_timeout / 2),
    )
    return FleetLead(
        lease=LeaderLease(client, fleet.keys, member, r.lease_ttl),
        stats=stats,
        windows=merged,
        experiment=FleetExperiment(config.experiment, stats),
        forwarder=forwarder,
        request_ids=fleet_request_ids(member),
        budget=SharedCheckpoint(fleet_connection.sync_client(r), fleet.keys, "canary-budget"),
    )


def initial_snapshot(config: Config, store: StateStore, *, safe_mode: bool) -> Snapshot:
    """The state to start with: the stored one; the configuration's on first start; in
    safe mode (explicit option) stable only with the kill switch on when the stored state
    is unreadable (its revision continues from the highest one the store had seen). A
    stored kill switch is never reset. Storage that cannot be written is a StartupError."""
    try:
        return _initial_snapshot(config, store, safe_mode=safe_mode)
    except OSError as exc:
        where = str(getattr(store, "path", "store"))
        named = str(exc) if where in str(exc) else f"state {where}: {exc}"
        raise StartupError(named) from None


def _initial_snapshot(config: Config, store: StateStore, *, safe_mode: bool) -> Snapshot:
    now = time.time()
    try:
        stored = store.load()
        if stored is not None:
            try:
                flag = stored.to_flag(config.flag)
            except FlagError as exc:
                where = getattr(store, "path", "store")
                raise StateFileError(
                    str(where), f"does not fit the configuration: {exc.field}: {exc.message}"
                ) from None
            log.info("state.loaded", revision=stored.revision, kill_switch=stored.kill_switch)
            return Snapshot(flag, stored)
    except StateFileError as exc:
        if not safe_mode:
            raise StartupError(
                f"{exc}. Fix or remove the file, or start with --safe-mode "
                "(stable only, kill switch on)"
            ) from None
        return _safe_mode(config, store, exc, now)
    migrated = _migrate_file_state(config, store, now)
    if migrated is not None:
        return migrated
    initial = DesiredState.from_flag(config.flag, unix_time=now)
    try:
        store.commit(
            initial,
            AuditEntry(now, "config", "Initialize", "initial state from configuration", 0, 1, {}),
        )
    except RevisionConflict:  # another fleet member initialised the shared state first
        if store.load() is not None:
            return _initial_snapshot(config, store, safe_mode=safe_mode)
        lost = StateFileError(
            str(getattr(store, "path", "store")),
            "no state document, but the audit log goes past revision 1 (the document was "
            "lost or deleted); a running member re-seeds it",
        )
        if not safe_mode:
            raise StartupError(
                f"{lost}. Start again once it is re-seeded, or with --safe-mode"
            ) from None
        return _safe_mode(config, store, lost, now)
    log.info("state.initialised", source=config.source)
    return Snapshot(config.flag, initial)


def _migrate_file_state(config: Config, store: StateStore, now: float) -> Snapshot | None:
    """Once, on the first start with the SQLite store: the state of the old file store
    (`state.json` in the database's folder) is committed as it was, so an upgrade keeps
    the kill switch, weights and overrides in force. Its audit log (`audit.jsonl`) is left
    where it is, named in the `Migrate` entry; leftover temporary files are removed."""
    if config.state.backend != "sqlite" or config.unit:  # the old store held the primary only
        return None
    folder = Path(config.state.path).parent
    old = folder / "state.json"
    for leftover in folder.glob(".state.json.*.tmp"):
        leftover.unlink(missing_ok=True)
    if not old.is_file():
        return None
    try:
        state = DesiredState.from_json(old.read_text(encoding="utf-8"))
        flag = state.to_flag(config.flag)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise StartupError(
            f"old state file {old} (to migrate into {config.state.path}): {exc}. "
            "Fix it, or move it away to start from the configuration"
        ) from None
    reason = f"migrated from the file store {old} (its audit log stays in {folder / 'audit.jsonl'})"
    store.commit(state, AuditEntry(now, "sidecar", "Migrate", reason, 0, state.revision, {}))
    log.warning("state.migrated", source=str(old), revision=state.revision)
    return Snapshot(flag, state)


def _safe_mode(config: Config, store: StateStore, exc: StateFileError, now: float) -> Snapshot:
    """Stable only, kill switch on, persisted and audited, at a revision above any the
    damaged store had (so an old `expected_revision` cannot match again)."""
    last = store.last_revision()
    kept = store.quarantine()
    reason = f"safe mode: state unreadable ({exc.reason}); kept as {kept}"
    flag = config.flag.replace(kill_switch=True)
    revision = last + 1
    safe = DesiredState.from_flag(flag, revision=revision, unix_time=now).evolve(
        kill_switch_reason=reason, updated_by="sidecar", update_reason=reason
    )
    store.commit(
        safe,
        AuditEntry(
            now, "sidecar", "SafeMode", reason, last, revision, {"kill_switch": [None, True]}
        ),
    )
    log.error(
        "state.SAFE_MODE",
        message="STARTED IN SAFE MODE: all traffic to stable, kill switch ON",
        file=exc.where,
        error=exc.reason,
        quarantined=str(kept),
        revision=revision,
    )
    return Snapshot(flag, safe, safe_mode=True)


@dataclass(frozen=True)
class _Telemetry:
    """Spans feed each routed model's variant windows and request metrics (one shared
    registry and tracer provider; the processor keeps the models apart)."""

    metrics: SidecarMetrics
    windows: Mapping[str, RollingWindows]  # routed model -> its windows
    stats: VariantStatsProcessor
    provider: TracerProvider
    tracer: Tracer
    detailed: bool  # an exporter is configured: CLIENT and shadow spans are recorded too
    server_tracer: Tracer  # SERVER spans: `tracer`, or stats-only spans when not exported


@dataclass(frozen=True)
class _Mirrors:
    shadow: ShadowMirror[InferBytes, InferReply] | None = None
    noise: ShadowMirror[InferBytes, InferReply] | None = None


@dataclass(frozen=True)
class _Servers:
    predict: grpc.aio.Server
    control: grpc.aio.Server
    health: health_aio.HealthServicer
    predict_port: int
    control_port: int


@dataclass(frozen=True)
class _Shared:
    """What every routed unit shares: telemetry, alerts, upstream channels by address."""

    telemetry: _Telemetry
    alerts: Alerts
    channels: dict[str, grpc.aio.Channel]


def build(config: Config, *, safe_mode: bool = False) -> Sidecar:
    """Wire every part from `config` (one `RoutedUnit` per routed model) and bind the
    listen addresses (port 0 allowed)."""
    telemetry = _telemetry(config)
    a = config.analysis
    shared = _Shared(telemetry, Alerts(a.webhook_url, a.webhook_timeout, a.webhook_retries), {})
    units = [
        _unit(config.for_model(name), shared, safe_mode=safe_mode) for name in config.routed_models
    ]
    telemetry.metrics.bind({unit.name: unit.readings for unit in units})
    with _phase("binding the listen addresses (listen)"):
        servers = _servers(
            config, units, telemetry.server_tracer, _passthrough(config, units[0].pool)
        )
    for unit in units:
        if unit.fleet is not None:  # heartbeats carry the address operators and members dial
            unit.fleet.control_address = config.state.redis.advertised_control(
                config.control_address, servers.control_port
            )
    return Sidecar(
        config=config,
        units=units,
        predict_server=servers.predict,
        control_server=servers.control,
        health=servers.health,
        tracer_provider=telemetry.provider,
        stats=telemetry.stats,
        metrics=telemetry.metrics,
        alerts=shared.alerts,
        predict_port=servers.predict_port,
        control_port=servers.control_port,
    )


def _of_model(config: Config, what: str) -> str:
    """A start-up phase, naming the routed model when it is not the primary."""
    return f"{what} of model {config.model!r}" if config.unit else what


def _unit(config: Config, shared: _Shared, *, safe_mode: bool) -> RoutedUnit:
    """One routed model's parts from its view of the configuration (`Config.for_model`)."""
    with _phase(_of_model(config, "loading the state") + " (state.path)"):
        store = _stores(config)
        snapshot = initial_snapshot(config, store, safe_mode=safe_mode)
    state = StateHolder(snapshot.flag, snapshot.state, safe_mode=snapshot.safe_mode)
    fleet = _fleet(config, store, state)
    telemetry, alerts = shared.telemetry, ModelAlerts(shared.alerts, config.model)
    metrics = telemetry.metrics.models[config.model]
    own_windows = telemetry.windows[config.model]
    fast = _fast_rollback(config, state, alerts, lambda: control)
    if fast is not None:  # one more sink of this model's finished requests
        telemetry.stats.models[config.model].append(fast.record)
    lead = _lead(config, fleet, own_windows, lambda: experiment.tracker.counters())
    pool = UpstreamPool(
        config.variants, config.server.max_message_bytes, telemetry.tracer,
        client_spans=telemetry.detailed, observe=metrics.observe_upstream,
        channels=shared.channels,
    )  # fmt: skip
    mirrors = _mirrors(config, pool, snapshot.flag.stable, telemetry, metrics.observe_shadow)
    checkpoint = _of_model(config, "loading the experiment checkpoint")
    with _phase(f"{checkpoint} (state.experiment_path)"):
        experiment = _experiment(config, state, alerts, lead)
    insights = _insights(config, state, own_windows, mirrors, experiment, alerts)
    dataplane = _dataplane(config, state, pool, mirrors, experiment, insights.drift, lead)
    windows = own_windows if lead is None else lead.windows  # the fleet's, when leading
    control = ControlService(
        holder=state,
        template=config.flag,
        store=store,
        ready=lambda variant: dataplane.variant_ready(
            variant, config.upstream.connect_timeout or 1.0
        ),
        served=lambda: dataplane.served,
        rollouts=RolloutSetup(
            has_shadow=mirrors.shadow is not None,
            has_experiment=bool(config.experiment.metrics),
            baseline=stable_baseline(windows, config.analysis.lookback),
        ),
    )
    controller = _controller(config, control, windows, alerts, insights, mirrors, lead)
    outcomes = dataplane.outcomes.stats
    readings = _readings(control, controller, experiment, insights, mirrors, outcomes)
    return RoutedUnit(
        config=config, pool=pool, dataplane=dataplane, control=control, controller=controller,
        experiment=experiment, insights=insights, windows=own_windows, readings=readings,
        fleet=fleet, lead=lead, fast_rollback=fast,
    )  # fmt: skip


def _passthrough(config: Config, pool: UpstreamPool) -> PassThrough | None:
    """The upstream for models no flag routes (`passthrough:`), on the pool's channels."""
    settings = config.passthrough
    if settings is None:
        return None
    return PassThrough(settings, config.upstream, pool.channel(settings.address))


def _fast_rollback(
    config: Config,
    state: StateHolder,
    alerts: AlertSink,
    control: Callable[[], ControlService],
) -> FastRollback | None:
    """The fast path for a hard canary failure (`analysis.fast_rollback`): a sink of every
    finished request that rolls back through the ControlService (built later: `control`)."""
    settings = config.analysis.fast_rollback
    if not settings.enabled:
        return None
    return FastRollback(
        HardFailureDetector(settings),
        snapshot=lambda: state.current,
        rollback=lambda principal, reason: automatic_rollback(control(), principal, reason),
        alerts=alerts,
    )


def _telemetry(config: Config) -> _Telemetry:
    metrics = SidecarMetrics(
        versions={n: v.model_version for n, v in config.variants.items()}, model=config.model
    )
    windows: dict[str, RollingWindows] = {}
    sinks: dict[str, list[Sink]] = {}
    for name in config.routed_models:
        view = config.for_model(name)
        model_metrics = metrics.models.get(name) or metrics.add_model(
            name, {n: v.model_version for n, v in view.variants.items()}
        )
        windows[name] = RollingWindows(config.analysis.bucket, config.analysis.horizon)
        sinks[name] = [model_metrics.record, windows[name].record]
    stats = VariantStatsProcessor([], models=sinks)
    provider = tracer_provider(config.telemetry, [stats])
    # Without an exporter only the SERVER spans (which feed the statistics) are recorded,
    # as stats-only spans (no SDK span); CLIENT and shadow spans would only cost CPU.
    tracer = provider.get_tracer(INSTRUMENTATION, __version__)
    return _Telemetry(
        metrics=metrics,
        windows=windows,
        stats=stats,
        provider=provider,
        tracer=tracer,
        detailed=config.telemetry.export,
        server_tracer=(
            tracer if config.telemetry.export else StatsTracer(stats.record_span, stats.record)
        ),
    )


def reply_outputs(reply: InferReply) -> Mapping[str, np.ndarray]:
    """An answer's output tensors, parsed here (off the request path: shadow, drift)."""
    return decode_outputs(reply.message())


def request_inputs(request: InferBytes) -> Mapping[str, np.ndarray]:
    """A request's input tensors, parsed here (off the request path: drift)."""
    return decode_inputs(request.message())


def _mirrors(
    config: Config,
    pool: UpstreamPool,
    stable: str,
    telemetry: _Telemetry,
    observe: Callable[[str, float, str], None],
) -> _Mirrors:
    """The shadow mirror, and the noise mirror (the stable model compared with itself);
    `observe`: the model's mirrored-call latency metric."""
    shadow = config.shadow
    if shadow is None:
        return _Mirrors()
    tracer = telemetry.tracer if telemetry.detailed else NoOpTracer()
    mirror = ShadowMirror(
        shadow, pool.upstreams[shadow.variant].observed_by(observe), reply_outputs,
        salt=config.flag.salt,
        tracer=tracer,
    )  # fmt: skip
    if not shadow.noise_sample_bp:
        return _Mirrors(mirror)
    noise = ShadowMirror(
        shadow.model_copy(update={"variant": stable, "sample_bp": shadow.noise_sample_bp}),
        pool.upstreams[stable].observed_by(observe),
        reply_outputs,
        salt=f"{config.flag.salt}/noise",
        tracer=tracer,
    )
    return _Mirrors(mirror, noise)


def _insights(
    config: Config,
    state: StateHolder,
    windows: RollingWindows,
    mirrors: _Mirrors,
    experiment: ExperimentService,
    alerts: ModelAlerts,
) -> Insights:
    a = config.analysis
    levels = DriftLevels(alerts)
    return Insights(
        experiment,
        shadow=mirrors.shadow.recorder if mirrors.shadow else None,
        noise=mirrors.noise.recorder if mirrors.noise else None,
        drift=_drift(config, levels, lambda: state.current.flag.stable),
        drift_levels=levels,
        primary_error_rate=lambda: (
            windows.window(state.current.flag.stable, time.time(), a.horizon - a.bucket).error_rate
        ),
        shadow_thresholds=a.shadow_thresholds(),
    )


def _dataplane(
    config: Config,
    state: StateHolder,
    pool: UpstreamPool,
    mirrors: _Mirrors,
    experiment: ExperimentService,
    drift: DriftMonitor[InferBytes, InferReply] | None,
    lead: FleetLead | None = None,
) -> DataPlane[InferBytes, InferReply]:
    e, p = config.experiment, config.predict
    fleet_ids = {} if lead is None else {"request_ids": lead.request_ids, "forward": lead.forward}
    return DataPlane(
        model=config.model,
        state=state,
        variants=config.variants,
        upstreams=pool.upstreams,
        upstream_config=config.upstream,
        mirror=mirrors.shadow,
        outcomes=OutcomeLedger(
            e.max_requests,
            e.ttl_seconds,
            kinds={m.name: m.kind for m in e.metrics},
            segments=(*config.flag_config.segments, *e.segments),
            max_per_key=p.max_per_key,
            max_keys=p.max_tracked_keys,
        ),
        experiment=experiment,
        drift=drift,
        noise=mirrors.noise,
        max_key_bytes=p.max_key_bytes,
        **fleet_ids,  # type: ignore[arg-type]
    )


def _controller(
    config: Config,
    control: ControlService,
    windows: WindowSource,
    alerts: ModelAlerts,
    insights: Insights,
    mirrors: _Mirrors,
    lead: FleetLead | None = None,
) -> RolloutController:
    a = config.analysis
    mirror = mirrors.shadow
    deployment = a.deployment()
    # The deployment's budget state, next to the experiment's checkpoint; in a fleet, in
    # Redis, so a new leader continues the same budget.
    canary = Path(config.state.experiment_path).with_name("canary.json")
    budget: CanaryCheckpoint | None = (
        FileCheckpoint(sibling_path(str(canary), config.unit) if config.unit else canary)
        if config.state.backend != "memory"
        else None
    )
    if lead is not None:
        budget = lead.budget
    return RolloutController(
        control=control,
        windows=windows,
        evaluator_factory=lambda: JudgeEvaluator(deployment, budget, alerts),
        analysis=a,
        shadow_thresholds=insights.shadow_thresholds,
        alerts=alerts,
        shadow=insights.shadow_reading,
        reset_shadow=lambda: mirror.recorder.reset() if mirror else None,
        ab_gate=insights.ab_gate if config.experiment.metrics else None,
        drift_gate=insights.drift_gate,
        leadership=None if lead is None else lead.lease,
    )


def _readings(
    control: ControlService,
    controller: RolloutController,
    experiment: ExperimentService,
    insights: Insights,
    mirrors: _Mirrors,
    outcomes: Callable[[], Mapping[str, int]],
) -> Readings:
    """What /metrics reads at scrape time."""
    mirror = mirrors.shadow
    return Readings(
        shadow=lambda: mirror.recorder.summary() if mirror else None,
        state=lambda: describe(control.snapshot()),
        verdicts=lambda: dict(controller.verdicts),
        rollout=lambda: _rollout_reading(
            control.snapshot(), controller.stalled(control.snapshot().state)
        ),
        experiment=lambda: experiment.readings,
        drift=insights.drift_levels.current,
        outcomes=outcomes,
    )


def _servers(
    config: Config, units: list[RoutedUnit], tracer: Tracer, passthrough: PassThrough | None = None
) -> _Servers:
    """The predict server (front door, Predict, health, reflection) routing every unit's
    model (others to `passthrough`, when configured), and the Control server (one
    `ControlServicer` per unit, chosen per call by the `x-model` header), bound to their
    addresses."""
    options = [
        ("grpc.max_receive_message_length", config.server.max_message_bytes),
        ("grpc.max_send_message_length", config.server.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    predict_server = grpc.aio.server(options=options)
    generic = GenericOnly(predict_server)  # the data path: generic handlers only
    health_servicer = health_aio.HealthServicer()
    routes = {unit.name: unit.dataplane for unit in units}
    add_inference_servicer(
        InferenceServicer(routes, tracer, config.upstream.default_deadline, passthrough),
        generic,
    )
    predict_pb2_grpc.add_PredictServicer_to_server(
        PredictServicer(config, routes, tracer),
        generic,
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, generic)
    # what enable_server_reflection adds for an aio server (it checks the server type)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        ReflectionServicer((*service_names(), health.SERVICE_NAME, reflection.SERVICE_NAME)),
        generic,
    )
    control_server = grpc.aio.server(
        options=options, interceptors=[AuthInterceptor(Authenticator(config.control.auth.tokens))]
    )
    control_pb2_grpc.add_ControlServicer_to_server(
        ControlRouter([_control_servicer(unit) for unit in units]), control_server
    )
    reflection.enable_server_reflection(
        (control_pb2.DESCRIPTOR.services_by_name["Control"].full_name, reflection.SERVICE_NAME),
        control_server,
    )
    predict_port = _bind(
        "listen.predict", config.predict_address,
        lambda: predict_server.add_insecure_port(config.predict_address),
    )  # fmt: skip
    control_port = _bind(
        "listen.control", config.control_address, lambda: _bind_control(control_server, config)
    )
    return _Servers(predict_server, control_server, health_servicer, predict_port, control_port)


def _control_servicer(unit: RoutedUnit) -> ControlServicer:
    dataplane = unit.dataplane
    return ControlServicer(
        unit.config,
        unit.control,
        served=lambda: dataplane.served,
        insights=unit.insights,
        controller=unit.controller,
        fleet=unit.fleet,
    )


def _bind(field: str, address: str, bind: Callable[[], int]) -> int:
    """The bound port; a StartupError naming the field when the address cannot be bound.
    Tried first with a plain socket, for the reason (gRPC says only "Failed to bind",
    after logging its own multi-line error)."""
    _check_bindable(field, address)
    try:
        return bind()
    except RuntimeError:
        raise StartupError(
            f"{field}: cannot listen on {address} (address in use, or not an address of this host)"
        ) from None


def _check_bindable(field: str, address: str) -> None:
    """Raise StartupError naming `field` unless some address `address` resolves to can be
    bound (gRPC listens on every one it can)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(
            host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise StartupError(f"{field}: cannot resolve {host!r}: {exc}") from None
    problem = ""
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                problem = problem or str(exc.strerror or exc)
                continue
            return
    raise StartupError(f"{field}: cannot listen on {address}: {problem or 'no address'}")


def _bind_control(server: grpc.aio.Server, config: Config) -> int:
    tls = config.control.tls
    if tls is None:
        return server.add_insecure_port(config.control_address)
    credentials = grpc.ssl_server_credentials(
        [(Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())],
        root_certificates=Path(tls.client_ca_file).read_bytes() if tls.client_ca_file else None,
        require_client_auth=bool(tls.client_ca_file),
    )
    return server.add_secure_port(config.control_address, credentials)


def _experiment(
    config: Config, state: StateHolder, alerts: ModelAlerts, lead: FleetLead | None = None
) -> ExperimentService:
    settings = config.experiment
    checkpoint = (
        FileCheckpoint(config.state.experiment_path) if config.state.backend != "memory" else None
    )

    def make(data: dict[str, object] | None) -> ExperimentTracker:
        if data is None:
            return ExperimentTracker(settings)
        return ExperimentTracker.from_dict(data, settings)

    tracker = ExperimentService.restore(make, checkpoint)
    return ExperimentService(
        tracker,
        snapshot=lambda: state.current,
        alerts=alerts,
        checkpoint=checkpoint,
        interval=settings.look_interval,
        fleet=None if lead is None else lead.experiment,
        alerting=lambda: lead is None or lead.lease.is_leader(),
    )


def _drift(
    config: Config, levels: DriftLevels, stable: Callable[[], str]
) -> DriftMonitor[InferBytes, InferReply] | None:
    settings = config.drift
    if not settings.enabled:
        return None
    tracker = DriftTracker(settings)
    tracker.set_reference_variant(stable())
    if settings.reference_file:
        try:
            tracker.set_configured_reference(read_drift_reference(settings))
        except ValueError as exc:
            raise StartupError(f"drift.reference_file: {exc}") from None
    return DriftMonitor(
        tracker,
        request_inputs,
        reply_outputs,
        sample_every=settings.sample_every,
        slice_size=DRIFT_SLICE,
        on_level_change=levels.on_change,
        reference_variant=stable,
    )


async def serve(
    config: Config,
    *,
    safe_mode: bool = False,
    stop_requested: Callable[[], bool] = lambda: False,
) -> int:
    """Run until SIGTERM or SIGINT; drain and return 0. SIGHUP reloads the
    configuration file (`Sidecar.reload`).

    The signal handlers are installed before anything is built or bound, so a signal at
    any point of start-up (even in the first milliseconds after `sidecar.started`) stops
    the sidecar cleanly. `stop_requested` tells whether a signal came even earlier (the
    CLI remembers those); then nothing is built."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if stop_requested():
        log.info("sidecar.stopping", grace_seconds=0.0, before_start=True)
        log.info("sidecar.stopped", before_start=True)
        return 0
    sidecar = build(config, safe_mode=safe_mode)
    with _phase("starting the servers (listen.metrics)"):
        await sidecar.start()
    # SERVING now; the statistics' scipy modules load in a worker thread meanwhile
    # (sidecar.core.stats.lazy), instead of before serving or on the event loop at first use.
    warm = asyncio.get_running_loop().run_in_executor(None, warm_up)
    with contextlib.suppress(NotImplementedError):  # SIGHUP: reload, never exit
        loop.add_signal_handler(signal.SIGHUP, sidecar.reload)
    # Everything built so far lives as long as the process: move it out of the cyclic
    # collector's reach, so full collections stay short (measured: 47-57 ms pauses
    # without this under load, none over 8 ms with it).
    gc.collect()
    gc.freeze()
    await stop.wait()
    await sidecar.stop()
    with contextlib.suppress(Exception):
        await warm
    return 0


@contextlib.contextmanager
def _phase(what: str) -> Iterator[None]:
    """An unexpected error while doing `what` stops start-up as a `StartupError` naming
    the phase (and, for file errors, the file): one line, no traceback."""
    try:
        yield
    except StartupError as exc:
        raise StartupError(f"{what}: {exc}") from exc
    except RecursionError as exc:
        raise StartupError(f"{what}: data nested too deeply ({exc})") from exc
    except Exception as exc:
        raise StartupError(f"{what}: {type(exc).__name__}: {exc}") from exc
