"""One rollout driver: two members' controllers share one Redis state store (real
redis-server); only the lease holder acts, with its fencing token, so a deposed leader's
late write is refused (nothing changes) and the new leader continues the plan from the
shared progress and the same canary budget (kept in Redis). The members' lease clocks
are fake clocks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio

from sidecar.adapters.fleet.keys import FleetKeys
from sidecar.adapters.fleet.lease import LeaderLease, SharedCheckpoint
from sidecar.adapters.store.redis import RedisStore
from sidecar.app.control import ControlService, RolloutSetup
from sidecar.app.ports import AuditEntry
from sidecar.app.rollout import CONTROLLER, JudgeEvaluator, RolloutController, stable_baseline
from sidecar.app.state import Snapshot, StateHolder
from sidecar.config import Config, parse_config
from sidecar.core.canary.window import RollingWindows
from sidecar.core.rollout import Phase, Stage, StageKind
from sidecar.core.shadow.report import ShadowThresholds
from sidecar.core.state import DesiredState
from sidecar.errors import SidecarError
from sidecar.testing.clock import FakeClock
from sidecar.testing.inprocess import FAST_ANALYSIS, config_dict
from sidecar.testing.redis import RedisServer

ADDRESS = "127.0.0.1:1"
PLAN = (
    Stage("c5", StageKind.CANARY, 500, min_duration_s=0.0, min_samples=1),
    Stage("c25", StageKind.CANARY, 2500, min_duration_s=0.0, min_samples=10**9),
    Stage("promote", StageKind.PROMOTE),
)


class Alerts:
    def alert(self, event: str, fields: object) -> None:
        return None


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


@pytest.fixture
async def aclient(server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    c = redis.asyncio.Redis.from_url(server.url)
    await c.flushall()
    yield c
    await c.aclose()


class Member:
    def __init__(
        self, name: str, config: Config, store: RedisStore, aclient: redis.asyncio.Redis
    ) -> None:
        a = config.analysis
        self.clock = FakeClock()
        self.lease_clock = FakeClock(0.0)
        self.lease = LeaderLease(aclient, store.keys, name, 5.0, clock=self.lease_clock)
        self.windows = RollingWindows(a.bucket, a.horizon)
        stored = store.load()
        assert stored is not None
        self.holder = StateHolder(config.flag, stored)
        # the deployment's budget, shared: a new leader continues it
        self.budget = SharedCheckpoint(store.client, store.keys, "canary-budget")
        self.store = store
        self.control = ControlService(
            holder=self.holder, template=config.flag, store=store,
            ready=self._ready, served=lambda: {"canary": 1}, clock=self.clock,
            rollouts=RolloutSetup(
                has_shadow=False, has_experiment=False,
                baseline=stable_baseline(self.windows, a.lookback),
            ),
        )  # fmt: skip
        self.controller = RolloutController(
            control=self.control, windows=self.windows,
            evaluator_factory=lambda: JudgeEvaluator(a.deployment(), self.budget), analysis=a,
            shadow_thresholds=ShadowThresholds(), alerts=Alerts(), clock=self.clock,
            leadership=self.lease,
        )  # fmt: skip
        self.config = config

    async def _ready(self, variant: str) -> bool:
        return True

    def follow(self) -> None:
        """What the fleet follower does: apply the newest shared state."""
        state = self.store.load()
        assert state is not None
        self.holder.follow(Snapshot(state.to_flag(self.config.flag), state))

    async def tick(self) -> bool:
        self.clock.advance(1.0)
        self.windows.record_many("canary", self.clock(), "OK", [0.01], [40])
        self.windows.record_many("stable", self.clock(), "OK", [0.01], [400])
        return await self.controller.lead()


def state(store: RedisStore) -> DesiredState:
    loaded = store.load()
    assert loaded is not None
    return loaded


async def test_only_the_leader_drives_and_a_deposed_leader_cannot_write(
    server: RedisServer, aclient: redis.asyncio.Redis
) -> None:
    raw = config_dict(
        {"stable": ADDRESS, "canary": ADDRESS},
        weights={"stable": 10_000, "canary": 0},
        analysis=dict(FAST_ANALYSIS),
    )
    config = parse_config(raw, "<test>")
    store = RedisStore(redis.Redis.from_url(server.url), FleetKeys("lead"), server.url)
    initial = DesiredState.from_flag(config.flag, unix_time=FakeClock()())
    store.commit(initial, AuditEntry(0.0, "config", "Initialize", "init", 0, 1, {}))
    a, b = Member("a", config, store, aclient), Member("b", config, store, aclient)
    await a.control.start_rollout("ops", "ship", 0, PLAN, force=False)
    b.follow()
    assert await a.lease.step() and not await b.lease.step()

    assert not await b.tick()  # a follower never acts
    assert await a.tick()  # the leader enters stage c5
    assert state(store).weights["canary"] == 500
    b.follow()

    # a is deposed (its lease expired in Redis, e.g. a long pause); b takes over
    await aclient.delete(store.keys.lease)
    assert await b.lease.step()
    # a still believes it leads (its own deadline has not passed): its write is fenced out
    revision = state(store).revision
    assert a.lease.is_leader()
    refused = None
    for _ in range(30):  # a's gates pass once it has its samples; its advance is refused
        try:
            await a.tick()
        except SidecarError as exc:
            refused = exc
            break
    assert refused is not None and "not the leader" in refused.message
    assert state(store).revision == revision
    assert state(store).rollout is not None

    # b continues the plan from the shared progress, audited as the rollout controller
    for _ in range(30):
        await b.tick()
        b.follow()
        if state(store).weights["canary"] == 2500:
            break
    rollout = state(store).rollout
    assert rollout is not None and rollout.phase is Phase.RUNNING
    assert rollout.stage is not None and rollout.stage.name == "c25"
    assert state(store).weights["canary"] == 2500
    entries = store.read_audit(0, 100, 1 << 20)
    moves = [e for e in entries if e.method in ("RolloutAdvance", "RolloutStage")]
    assert moves and all(e.principal == CONTROLLER for e in moves)
    assert [e.method for e in moves][-2:] == ["RolloutAdvance", "RolloutStage"]
    # a learns it lost on its next renewal and stays quiet
    assert not await a.lease.step()
    assert not await a.tick()


async def test_a_new_leader_continues_the_same_canary_budget(
    server: RedisServer, aclient: redis.asyncio.Redis
) -> None:
    """No plan, canary at 10%: the leader's checks spend one deployment budget, kept in
    Redis; after a takeover the new leader restores it and checks on (never a new budget
    because the leader changed)."""
    raw = config_dict(
        {"stable": ADDRESS, "canary": ADDRESS},
        weights={"stable": 9000, "canary": 1000},
        analysis=dict(FAST_ANALYSIS),
    )
    config = parse_config(raw, "<test>")
    store = RedisStore(redis.Redis.from_url(server.url), FleetKeys("budget"), server.url)
    initial = DesiredState.from_flag(config.flag, unix_time=FakeClock()())
    store.commit(initial, AuditEntry(0.0, "config", "Initialize", "init", 0, 1, {}))
    a, b = Member("a", config, store, aclient), Member("b", config, store, aclient)
    assert await a.lease.step()
    for _ in range(4):
        assert await a.tick()
    spent = a.controller.evaluator.analysis
    assert spent is not None and spent.checks >= 3
    await aclient.delete(store.keys.lease)
    assert await b.lease.step()
    b.clock.advance(a.clock() - b.clock())  # the same wall time
    assert await b.tick()
    continued = b.controller.evaluator.analysis
    assert continued is not None and continued.deployment == spent.deployment
    assert continued.checks == spent.checks + 1
