"""Every Redis key of one fleet, in one place (the prefix is `state.redis.fleet`).

Keys share a hash tag (`{fleet}`) so a Lua script touching several of them also runs on a
Redis Cluster (all of a fleet's keys live in one slot).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FleetKeys:
    fleet: str

    @property
    def prefix(self) -> str:
        return f"sidecar:{{{self.fleet}}}"

    @property
    def state(self) -> str:
        """The desired state document (JSON) with its revision."""
        return f"{self.prefix}:state"

    @property
    def audit(self) -> str:
        """The append-only audit stream (XADD), one entry per committed change."""
        return f"{self.prefix}:audit"

    @property
    def changes(self) -> str:
        """Pub/sub channel: the new revision, published with each commit."""
        return f"{self.prefix}:changes"

    @property
    def members(self) -> str:
        """Hash: member id -> heartbeat JSON (liveness is judged by its `seen` time)."""
        return f"{self.prefix}:members"

    @property
    def reseed(self) -> str:
        """SET NX PX guard: the one member re-seeding a Redis that lost the state."""
        return f"{self.prefix}:reseed"

    @property
    def lease(self) -> str:
        """The rollout leader's lease (SET NX PX); its value is the fencing token."""
        return f"{self.prefix}:lease"

    @property
    def lease_counter(self) -> str:
        """INCR source of fencing tokens (monotonic across leaders)."""
        return f"{self.prefix}:lease-counter"

    def stats(self, member: str) -> str:
        """One member's mergeable statistics (with a TTL)."""
        return f"{self.prefix}:stats:{member}"

    @property
    def stats_index(self) -> str:
        """Set of members that published statistics."""
        return f"{self.prefix}:stats-members"
