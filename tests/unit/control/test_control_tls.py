"""Control over TLS with client certificates (mTLS) on the real server; the bearer token
is still required on top."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from sidecar._proto.sidecar.v1 import control_pb2 as cpb
from sidecar._proto.sidecar.v1 import control_pb2_grpc as cpb_grpc
from sidecar.testing.credentials import OPERATOR_TOKEN, bearer
from sidecar.testing.fault_upstream import FaultInjectingUpstream
from sidecar.testing.inprocess import config_dict, running_sidecar, scripted_model
from sidecar.testing.pki import OPENSSL, make_pki

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl not installed")


async def test_control_requires_client_certificate_and_token(tmp_path: Path) -> None:
    """With control.tls.client_ca_file: a client with a certificate and a token is served;
    without a certificate the handshake fails; with a certificate but no token,
    UNAUTHENTICATED."""
    pki = make_pki(tmp_path / "pki")
    async with FaultInjectingUpstream(respond=scripted_model({"stable": 1})) as up:
        raw = config_dict({"stable": up.address}, weights={"stable": 10_000})
        raw["control"]["tls"] = {
            "cert_file": str(pki / "server.pem"),
            "key_file": str(pki / "server.key"),
            "client_ca_file": str(pki / "ca.pem"),
        }
        async with running_sidecar(raw) as sc:
            target = f"localhost:{sc.control_port}"
            ca = (pki / "ca.pem").read_bytes()
            with_cert = grpc.ssl_channel_credentials(
                ca, (pki / "client.key").read_bytes(), (pki / "client.pem").read_bytes()
            )
            stub = cpb_grpc.ControlStub(grpc.aio.secure_channel(target, with_cert))
            state = await stub.GetState(cpb.GetStateRequest(), metadata=bearer(OPERATOR_TOKEN))
            assert state.revision == 1
            with pytest.raises(grpc.aio.AioRpcError) as no_token:
                await stub.GetState(cpb.GetStateRequest())
            assert no_token.value.code() == grpc.StatusCode.UNAUTHENTICATED
            no_cert = cpb_grpc.ControlStub(
                grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(ca))
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await no_cert.GetState(
                    cpb.GetStateRequest(), metadata=bearer(OPERATOR_TOKEN), timeout=5
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            plain = cpb_grpc.ControlStub(grpc.aio.insecure_channel(target))
            with pytest.raises(grpc.aio.AioRpcError):
                await plain.GetState(
                    cpb.GetStateRequest(), metadata=bearer(OPERATOR_TOKEN), timeout=5
                )
