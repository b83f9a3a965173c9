"""Roles across ports: an app principal may report outcomes and nothing else; Control
principals may not report outcomes."""

from __future__ import annotations

import pytest

from sidecar.adapters.grpc.auth import APP, OPERATOR, VIEWER, Authenticator
from sidecar.config import AppTokenSpec, TokenSpec
from sidecar.errors import PermissionDenied, Unauthenticated
from sidecar.testing.credentials import OPERATOR_TOKEN, bearer, sha256_hex

APP_TOKEN = "test-app-token-0123456789abcdef"


def test_each_role_opens_only_its_own_methods() -> None:
    """app -> app only; operator -> viewer and operator; an unknown token is refused."""
    app = Authenticator([AppTokenSpec(name="shop", token_sha256=sha256_hex(APP_TOKEN))])
    ops = Authenticator(
        [TokenSpec(name="ops", role="operator", token_sha256=sha256_hex(OPERATOR_TOKEN))]
    )
    assert app.authorize(bearer(APP_TOKEN), APP, "ReportOutcome").name == "shop"
    for role in (VIEWER, OPERATOR):
        with pytest.raises(PermissionDenied, match=f"role app; GetState needs {role}"):
            app.authorize(bearer(APP_TOKEN), role, "GetState")
    assert ops.authorize(bearer(OPERATOR_TOKEN), VIEWER, "GetState").role == OPERATOR
    with pytest.raises(PermissionDenied, match="ReportOutcome needs app"):
        ops.authorize(bearer(OPERATOR_TOKEN), APP, "ReportOutcome")
    with pytest.raises(Unauthenticated):
        app.authorize(bearer(OPERATOR_TOKEN), APP, "ReportOutcome")
