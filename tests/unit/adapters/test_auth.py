"""Control auth as an interceptor: one method -> role table covering the service, deny by
default, the principal handed to the servicer, exact refusal statuses and texts."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping

import grpc
import pytest

from sidecar._proto.sidecar.v1 import control_pb2 as cpb
from sidecar._proto.sidecar.v1 import control_pb2_grpc as cpb_grpc
from sidecar.adapters.grpc.auth import (
    CONTROL_ROLES,
    CONTROL_SERVICE,
    OPERATOR,
    VIEWER,
    Authenticator,
    AuthInterceptor,
    current_principal,
)
from sidecar.config import TokenSpec
from sidecar.testing.credentials import OPERATOR_TOKEN, VIEWER_TOKEN, bearer

TOKENS = [
    TokenSpec(
        name="ops", role=OPERATOR, token_sha256=hashlib.sha256(OPERATOR_TOKEN.encode()).hexdigest()
    ),
    TokenSpec(
        name="dash", role=VIEWER, token_sha256=hashlib.sha256(VIEWER_TOKEN.encode()).hexdigest()
    ),
]


def test_the_table_names_every_control_method_once() -> None:
    """Every method of the Control service descriptor has a role, viewer or operator, and
    the table names nothing else."""
    service = cpb.DESCRIPTOR.services_by_name["Control"]
    assert service.full_name == CONTROL_SERVICE
    assert set(CONTROL_ROLES) == {m.name for m in service.methods}
    assert set(CONTROL_ROLES.values()) == {VIEWER, OPERATOR}


class WhoAmI(cpb_grpc.ControlServicer):  # type: ignore[misc]
    """Answers with the principal the interceptor handed over; counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def GetState(self, request: cpb.GetStateRequest, context: object) -> cpb.State:
        self.calls += 1
        return cpb.State(updated_by=current_principal().name)

    async def SetKillSwitch(self, request: cpb.SetKillSwitchRequest, context: object) -> cpb.State:
        self.calls += 1
        return cpb.State(updated_by=current_principal().name)

    async def Promote(self, request: cpb.PromoteRequest, context: object) -> cpb.State:
        self.calls += 1
        return cpb.State(updated_by=current_principal().name)

    async def WatchState(
        self, request: cpb.WatchStateRequest, context: object
    ) -> AsyncIterator[cpb.State]:
        for _ in range(2):
            self.calls += 1
            yield cpb.State(updated_by=current_principal().name)


@pytest.fixture
async def served() -> AsyncIterator[tuple[cpb_grpc.ControlStub, WhoAmI]]:
    """WhoAmI behind the interceptor, with Promote left out of the table."""
    roles: Mapping[str, str] = {k: v for k, v in CONTROL_ROLES.items() if k != "Promote"}
    server = grpc.aio.server(interceptors=[AuthInterceptor(Authenticator(TOKENS), roles)])
    servicer = WhoAmI()
    cpb_grpc.add_ControlServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield cpb_grpc.ControlStub(channel), servicer
    await server.stop(None)


async def test_the_principal_reaches_the_servicer(
    served: tuple[cpb_grpc.ControlStub, WhoAmI],
) -> None:
    """Unary and streaming methods see who called; a viewer may read, an operator write."""
    stub, _ = served
    assert (
        await stub.GetState(cpb.GetStateRequest(), metadata=bearer(VIEWER_TOKEN))
    ).updated_by == "dash"
    kill = cpb.SetKillSwitchRequest(reason="r", on=True)
    assert (await stub.SetKillSwitch(kill, metadata=bearer(OPERATOR_TOKEN))).updated_by == "ops"
    watched = [
        s.updated_by
        async for s in stub.WatchState(cpb.WatchStateRequest(), metadata=bearer(VIEWER_TOKEN))
    ]
    assert watched == ["dash", "dash"]


REFUSALS = [
    ("no token", "SetKillSwitch", (), grpc.StatusCode.UNAUTHENTICATED,
     "missing credentials: send metadata 'authorization: Bearer <token>'"),
    ("no scheme", "GetState", (("authorization", OPERATOR_TOKEN),), grpc.StatusCode.UNAUTHENTICATED,
     "missing credentials: send metadata 'authorization: Bearer <token>'"),
    ("unknown token", "GetState", bearer("not-a-real-token-at-all"), grpc.StatusCode.UNAUTHENTICATED,
     "unknown credentials: the bearer token is not accepted"),
    ("viewer writing", "SetKillSwitch", bearer(VIEWER_TOKEN), grpc.StatusCode.PERMISSION_DENIED,
     "principal 'dash' has role viewer; SetKillSwitch needs operator"),
    ("method not in the table", "Promote", bearer(OPERATOR_TOKEN), grpc.StatusCode.PERMISSION_DENIED,
     "Promote: no role may call this method"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "method", "metadata", "code", "text"), REFUSALS)
async def test_refusals_keep_their_status_and_text(
    served: tuple[cpb_grpc.ControlStub, WhoAmI],
    name: str,
    method: str,
    metadata: tuple[tuple[str, str], ...],
    code: grpc.StatusCode,
    text: str,
) -> None:
    """Refused calls never reach the servicer, and the token never appears in the answer."""
    stub, servicer = served
    requests = {
        "GetState": cpb.GetStateRequest(),
        "SetKillSwitch": cpb.SetKillSwitchRequest(reason="r", on=True),
        "Promote": cpb.PromoteRequest(reason="r"),
    }
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await getattr(stub, method)(requests[method], metadata=metadata)
    assert (info.value.code(), info.value.details()) == (code, text)
    assert OPERATOR_TOKEN not in text and VIEWER_TOKEN not in text
    assert servicer.calls == 0


async def test_a_refused_stream_yields_nothing(
    served: tuple[cpb_grpc.ControlStub, WhoAmI],
) -> None:
    """A stream without credentials ends UNAUTHENTICATED before its first message."""
    stub, servicer = served
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _ = [s async for s in stub.WatchState(cpb.WatchStateRequest())]
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert servicer.calls == 0


def test_no_principal_outside_an_intercepted_call() -> None:
    """A servicer run without the interceptor fails loudly instead of acting as nobody."""
    with pytest.raises(RuntimeError, match="AuthInterceptor"):
        current_principal()
