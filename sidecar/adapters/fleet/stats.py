"""Fleet-wide statistics: every member publishes its mergeable statistics; every member
reads the others' latest, so the leader judges the fleet and any member reports it.

**What is published** (`FleetKeys.stats(member)`, one JSON document, `SET ... PX ttl`,
and the member's id in `FleetKeys.stats_index`), every `stats_interval`:

- ``windows``: per variant, the member's time buckets of the last `span` seconds
  (`RollingWindows.export`: counts, errors by status, timeouts, DDSketch buckets), keyed
  by the bucket index on the wall clock (the same index means the same seconds at every
  member);
- ``experiment``: the counters of the member's current experiment epoch
  (`ExperimentCounters`: assignments, per (metric, arm, segment) sufficient statistics,
  named plain-sum arrays), keyed by the epoch's routing key.

A document is a **snapshot** (cumulative for the epoch, the whole recent ring for the
windows), never an increment: publishing it again is harmless, a lost publish is healed by
the next, and while Redis is down nothing is lost, only held: the counters keep counting
in memory (bounded by the windows' ring and the tracker's fixed cells) and the first
publish after Redis returns carries all of it. A member's document outlives the member by
`ttl` (default one hour), so a dead member's served requests stay in the fleet's totals
for that long.

**Reading** (`refresh`): `SMEMBERS stats_index` (at most `MAX_MEMBERS`), `MGET` of their
documents, each parsed with bounds (`MAX_DOCUMENT_BYTES`; malformed ones are skipped and
counted); members whose key expired leave the index. The merged windows
(`MergedWindows.set_remote`) and the experiment's fleet view (`FleetExperiment`) read
the cached result, never Redis, so reads never wait on the network.

**Outcomes reported to another member** (`OutcomeForwarder`): in a fleet the request id
starts with the serving member's short id (`short_id(member)`, 8 hex digits, then ``-``).
A member given an outcome for another member's request id forwards it through that
member's bounded Redis stream (`XADD ... MAXLEN ~ STREAM_MAXLEN`, `PEXPIRE`); the owner
consumes its stream and applies each outcome through its own `OutcomeLedger`, exactly
like an outcome reported to it directly: counted once per request and metric, per-key
caps hold, unknown or expired ids change nothing. An id whose prefix is no live member's
is treated as a local id (so NOT_FOUND); a forged id with a live prefix reaches the owner
and is refused there. The forwarding queue, the stream and the owner's batch are all
bounded: a hostile caller can fill them (then further forwards are dropped and counted)
but cannot pin memory or count anything the owner did not serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final

import redis
import redis.asyncio
import structlog

from sidecar.adapters.fleet.connection import raise_if_cancelled
from sidecar.adapters.fleet.keys import FleetKeys
from sidecar.app.dataplane import new_request_id
from sidecar.core.canary.merged import MergedWindows
from sidecar.core.canary.window import RollingWindows, VariantWindow
from sidecar.core.experiment.analysis import ExperimentSettings, ExperimentTracker
from sidecar.core.experiment.counters import EpochKey, ExperimentCounters
from sidecar.core.experiment.outcomes import Attribution, UnknownMetric, WrongValueType

log = structlog.get_logger("sidecar.fleet")

VERSION: Final = 1
MAX_MEMBERS: Final = 256
MAX_DOCUMENT_BYTES: Final = 8 * 1024 * 1024
MAX_VARIANTS: Final = 16
STREAM_MAXLEN: Final = 100_000
FORWARD_QUEUE: Final = 10_000
CONSUME_BATCH: Final = 500
_SHORT_LEN: Final = 8


def short_id(member: str) -> str:
    """The member's short id, the prefix of the request ids it hands out (8 hex digits)."""
    return hashlib.blake2b(member.encode(), digest_size=4).hexdigest()


def request_ids(member: str) -> Callable[[], str]:
    """Request ids of a fleet member: ``<short id>-<32 hex digits>``."""
    prefix = short_id(member) + "-"
    return lambda: prefix + new_request_id()


def owner_of(request_id: str) -> str | None:
    """The short id a fleet request id starts with (None for any other form)."""
    head, sep, tail = request_id.partition("-")
    if not sep or len(head) != _SHORT_LEN or len(tail) != 32:
        return None
    try:
        int(head, 16)
        int(tail, 16)
    except ValueError:
        return None
    return head


class MemberStats:
    """One other member's latest published statistics (decoded)."""

    __slots__ = ("at", "experiment", "member", "short", "windows")

    def __init__(
        self,
        member: str,
        short: str,
        at: float,
        windows: dict[str, dict[int, VariantWindow]],
        experiment: ExperimentCounters | None,
    ) -> None:
        self.member = member
        self.short = short
        self.at = at
        self.windows = windows
        self.experiment = experiment


def decode(raw: bytes) -> MemberStats:
    """A published document; ValueError when it is too large or malformed."""
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"document of {len(raw)} bytes (limit {MAX_DOCUMENT_BYTES})")
    data = json.loads(raw)
    if not isinstance(data, dict) or data.get("v") != VERSION:
        raise ValueError(f"not a version {VERSION} statistics document")
    member, short, at = data.get("member"), data.get("short"), data.get("at")
    if not isinstance(member, str) or not isinstance(short, str) or len(short) != _SHORT_LEN:
        raise ValueError("member and short: strings")
    if isinstance(at, bool) or not isinstance(at, int | float):
        raise ValueError("at: a number")
    raw_windows = data.get("windows", {})
    if not isinstance(raw_windows, dict) or len(raw_windows) > MAX_VARIANTS:
        raise ValueError(f"windows: at most {MAX_VARIANTS} variants")
    windows: dict[str, dict[int, VariantWindow]] = {}
    for variant, buckets in raw_windows.items():
        if not isinstance(buckets, dict) or len(buckets) > 10_000:
            raise ValueError(f"windows.{variant}: an object of buckets")
        windows[str(variant)] = {int(i): VariantWindow.from_dict(w) for i, w in buckets.items()}
    experiment = data.get("experiment")
    counters = None if experiment is None else ExperimentCounters.from_dict(experiment)
    return MemberStats(member, short, float(at), windows, counters)


class FleetStats:
    """Publishes this member's statistics and caches every other member's (see the
    module doc). `run()` does both every `interval` seconds."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        keys: FleetKeys,
        member: str,
        *,
        windows: RollingWindows,
        experiment: Callable[[], ExperimentCounters | None],
        span: float,
        interval: float,
        ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.keys = keys
        self.member = member
        self.short = short_id(member)
        self.windows = windows
        self.experiment = experiment
        self.span = span
        self.interval = interval
        self.ttl_ms = max(1, round(ttl * 1000))
        self.clock = clock
        self.others: dict[str, MemberStats] = {}
        self.published = 0
        self.publish_failures = 0
        self.malformed = 0
        self.on_refresh: list[Callable[[FleetStats], None]] = []

    def document(self) -> bytes:
        """This member's statistics, as published."""
        now = self.clock()
        first = self.windows.bucket_index(now - self.span)
        counters = self.experiment()
        return json.dumps(
            {
                "v": VERSION,
                "member": self.member,
                "short": self.short,
                "at": now,
                "windows": {
                    variant: {str(i): w.to_dict() for i, w in buckets.items()}
                    for variant, buckets in self.windows.export(first).items()
                },
                "experiment": None if counters is None else counters.to_dict(),
            },
            separators=(",", ":"),
        ).encode()

    async def publish(self) -> bool:
        """SET the document with its TTL and register in the index; False when Redis
        cannot be reached (the counts stay in memory for the next publish)."""
        document = self.document()
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.set(self.keys.stats(self.member), document, px=self.ttl_ms)
                pipe.sadd(self.keys.stats_index, self.member)
                await pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self.publish_failures += 1
            if self.publish_failures == 1 or self.publish_failures % 100 == 0:
                log.warning("fleet.stats_publish_failed", error=str(exc))
            return False
        self.published += 1
        return True

    async def refresh(self) -> bool:
        """Read every other member's latest document into the cache; False (cache kept)
        when Redis cannot be reached."""
        try:
            found = await self.client.smembers(self.keys.stats_index)
            members = sorted(_as_text(m) for m in found)
            members = [m for m in members if m != self.member][:MAX_MEMBERS]
            raws = await self.client.mget([self.keys.stats(m) for m in members]) if members else []
        except (redis.RedisError, OSError, UnicodeDecodeError):
            return False
        others: dict[str, MemberStats] = {}
        gone: list[str] = []
        for member, raw in zip(members, raws, strict=True):
            if raw is None:
                gone.append(member)
                continue
            try:
                others[member] = decode(raw if isinstance(raw, bytes) else str(raw).encode())
            except (ValueError, TypeError, RecursionError) as exc:
                self.malformed += 1
                log.warning("fleet.stats_malformed", member=member[:64], error=str(exc)[:200])
        if gone:
            with contextlib.suppress(redis.RedisError, OSError):
                await self.client.srem(self.keys.stats_index, *gone)
        self.others = others
        for listener in self.on_refresh:
            listener(self)
        return True

    @property
    def owners(self) -> dict[str, str]:
        """Short id -> member id of the other members with published statistics."""
        return {s.short: s.member for s in self.others.values()}

    async def run(self) -> None:
        while True:
            await self.publish()
            await self.refresh()
            raise_if_cancelled()
            await asyncio.sleep(self.interval)


def feed_windows(merged: MergedWindows) -> Callable[[FleetStats], None]:
    """A refresh listener that hands the others' buckets to the merged windows."""

    def listener(stats: FleetStats) -> None:
        merged.set_remote({m: s.windows for m, s in stats.others.items()})

    return listener


class FleetExperiment:
    """The experiment tracker of the whole fleet: this member's counts plus the others'
    latest counters of the same epoch, loaded into a tracker of its own (whose sequential
    states and history carry on across looks). `ExperimentService(fleet=...)` calls it."""

    def __init__(self, settings: ExperimentSettings, stats: FleetStats) -> None:
        self.view = ExperimentTracker(settings)
        self.stats = stats
        self.members = 1
        # Per member, its latest counters of the current epoch key, kept when its document
        # disappears (expired, or Redis unreachable), so the fleet's counts never go down
        # because a member stopped publishing; a member whose counts went down (restarted
        # without its checkpoint) has its earlier counters kept apart in `_retired`.
        self._key: EpochKey | None = None
        self._last: dict[str, ExperimentCounters] = {}
        self._retired: list[ExperimentCounters] = []

    def __call__(self, local: ExperimentTracker, now: float) -> ExperimentTracker:
        mine = local.counters()
        if mine.key != self._key:
            self._key, self._last, self._retired = mine.key, {}, []
        for member, snapshot in self.stats.others.items():
            counters = snapshot.experiment
            if counters is None or counters.key != mine.key:
                continue
            before = self._last.get(member)
            if before is not None and not _covers(counters, before):
                self._retired.append(before)
                del self._retired[:-RETIRED_KEPT]
            self._last[member] = counters
        parts = [mine, *self._last.values(), *self._retired]
        self.members = 1 + len(self._last)
        self.view.load_counters(ExperimentCounters.merged(parts, mine.key), now)
        return self.view


RETIRED_KEPT = 256
"""Earlier incarnations of restarted members kept in the fleet's counts (bounded)."""


def _covers(new: ExperimentCounters, old: ExperimentCounters) -> bool:
    """Whether `new` counts at least what `old` did (the same member, carrying on)."""
    if any(new.assigned.get(v, 0) < n for v, n in old.assigned.items()):
        return False
    return all(new.cells.get(w, (0, 0, 0.0, 0.0))[0] >= c[0] for w, c in old.cells.items())


class OutcomeForwarder:
    """Outcomes for request ids another member served go to that member's stream (see
    the module doc). `offer` is the synchronous hook `DataPlane` calls; `run` sends the
    queue; `consume` applies the outcomes other members forwarded to this one."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        keys: FleetKeys,
        stats: FleetStats,
        kinds: Mapping[str, str],
        *,
        stream_ttl: float,
        block: float = 1.0,
    ) -> None:
        self.client = client
        self.keys = keys
        self.stats = stats
        self.kinds = dict(kinds)
        self.stream_ttl_ms = max(1, round(stream_ttl * 1000))
        self.block_ms = max(10, round(block * 1000))  # below the client's socket timeout
        self._queue: deque[tuple[str, str, str, str]] = deque()
        self._ready = asyncio.Event()
        self.forwarded = 0
        self.dropped = 0
        self.applied = 0
        self.refused = 0

    def stream(self, short: str) -> str:
        return f"{self.keys.prefix}:outcomes:{short}"

    def offer(self, request_id: str, metric: str, value: bool | float) -> Attribution | None:
        """None when the request id is this member's (or no live member's): the caller's
        own ledger decides. Otherwise the outcome is queued for its owner and the
        attribution says so (variant unknown here; `counted` False: the owner counts it).
        Raises UnknownMetric / WrongValueType like the ledger, before anything is queued."""
        owner = owner_of(request_id)
        if owner is None or owner == self.stats.short or owner not in self.stats.owners:
            return None
        kind = self.kinds.get(metric)
        if kind is None:
            raise UnknownMetric(
                f"metric: {metric[:64]!r} is not configured; configured metrics: "
                f"{', '.join(self.kinds) or 'none'}"
            )
        got = "bool" if isinstance(value, bool) else "number"
        if got != kind:
            raise WrongValueType(f"value: metric {metric!r} is {kind}, got a {got} value")
        if len(self._queue) >= FORWARD_QUEUE:
            self.dropped += 1
        else:
            encoded = ("1" if value else "0") if isinstance(value, bool) else repr(float(value))
            self._queue.append((owner, request_id, metric, f"{kind}:{encoded}"))
            self._ready.set()
        return Attribution(request_id, "", "", counted=False)

    async def send(self) -> bool:
        """XADD the queued outcomes to their owners' streams; False (kept queued) when
        Redis cannot be reached."""
        batch = list(self._queue)
        if not batch:
            return True
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for owner, request_id, metric, value in batch:
                    stream = self.stream(owner)
                    pipe.xadd(
                        stream,
                        {"id": request_id, "metric": metric, "value": value},
                        maxlen=STREAM_MAXLEN,
                        approximate=True,
                    )
                    pipe.pexpire(stream, self.stream_ttl_ms)
                await pipe.execute()
        except (redis.RedisError, OSError):
            return False
        for _ in batch:
            self._queue.popleft()
        self.forwarded += len(batch)
        return True

    async def run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            sent = await self.send()
            raise_if_cancelled()
            if not sent:
                self._ready.set()
                await asyncio.sleep(0.5)

    async def consume(self, apply: Callable[[str, str, bool | float], object]) -> None:
        """Apply the outcomes forwarded to this member with `apply` (the data plane's own
        `report_outcome`), for ever (cancel to stop)."""
        stream = self.stream(self.stats.short)
        last = "0"
        while True:
            try:
                got: Any = await self.client.xread(
                    {stream: last}, count=CONSUME_BATCH, block=self.block_ms
                )
            except (redis.RedisError, OSError):
                raise_if_cancelled()
                await asyncio.sleep(0.5)
                continue
            raise_if_cancelled()
            for _, entries in got or []:
                ids = []
                for entry_id, fields in entries:
                    ids.append(entry_id)
                    self._apply(fields, apply)
                if ids:
                    last = ids[-1].decode() if isinstance(ids[-1], bytes) else str(ids[-1])
                    with contextlib.suppress(redis.RedisError, OSError):
                        await self.client.xdel(stream, *ids)

    def _apply(
        self, fields: Mapping[Any, Any], apply: Callable[[str, str, bool | float], object]
    ) -> None:
        try:
            request_id = _text(fields, "id")
            metric = _text(fields, "metric")
            kind, _, raw = _text(fields, "value").partition(":")
            value: bool | float = raw == "1" if kind == "bool" else float(raw)
            apply(request_id, metric, value)
            self.applied += 1
        except Exception:  # unknown or expired id, refused metric, malformed entry
            self.refused += 1


def _as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _text(fields: Mapping[Any, Any], name: str) -> str:
    value = fields.get(name.encode(), fields.get(name))
    if isinstance(value, bytes):
        value = value.decode()
    if not isinstance(value, str) or len(value) > 1024:
        raise ValueError(name)
    return value
