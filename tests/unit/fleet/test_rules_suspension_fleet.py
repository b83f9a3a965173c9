"""Suspended rules in a fleet (real redis-server): a rollback on one member suspends the
user overrides for every member (the suspension is part of the shared state document),
and a restore on any member brings them back everywhere."""

from __future__ import annotations

import pytest
from test_member import Factory, flag, make, server  # noqa: F401  (fixtures)

from sidecar.app.control import ControlService
from sidecar.app.ports import AuditEntry
from sidecar.core.routing import Reason, RoutingContext, evaluate
from sidecar.core.state import DesiredState
from sidecar.testing.clock import FakeClock


def service(member: object) -> ControlService:
    async def ready(variant: str) -> bool:
        return True

    return ControlService(
        holder=member.holder,  # type: ignore[attr-defined]
        template=flag(),
        store=member.store,  # type: ignore[attr-defined]
        ready=ready,
        served=lambda: {"canary": 1},
        clock=FakeClock(),
    )


def pinned(member: object) -> tuple[str, Reason]:
    got = evaluate(member.holder.current.flag, RoutingContext("qa-1", "", "r"))  # type: ignore[attr-defined]
    return got.variant, got.reason


@pytest.mark.usefixtures("server")
async def test_a_rollback_on_one_member_suspends_the_rules_on_all(make: Factory) -> None:  # noqa: F811
    """Member a rolls back; member b follows the stored revision: the pinned user goes to
    stable there too, the override kept; a's restore reaches b the same way."""
    a, b = make("a"), make("b")
    first = DesiredState.from_flag(flag(), revision=1)
    a.store.commit(first, AuditEntry(0.0, "config", "Initialize", "r", 0, 1, {}))
    await a.sync()
    control = service(a)
    await control.set_user_override("ops", "qa", 0, "qa-1", "canary")
    await b.sync()
    assert pinned(b) == ("canary", Reason.USER_OVERRIDE)

    rolled = await control.rollback("ops", "regression", 0)
    await b.sync()
    assert b.holder.current.revision == rolled.revision
    assert b.holder.current.state.rules_suspended
    assert b.holder.current.state.rules_suspended_reason == "Rollback by ops: regression"
    assert b.holder.current.state.user_overrides == {"qa-1": "canary"}
    assert pinned(b) == ("stable", Reason.SPLIT)

    await service(b).restore_rules("ops", "fixed", 0)  # any member may restore
    await a.sync()
    assert pinned(a) == ("canary", Reason.USER_OVERRIDE)
    assert not a.holder.current.state.rules_suspended
