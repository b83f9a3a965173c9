"""Fixed Control credentials for tests and the demo (never for production)."""

from __future__ import annotations

import hashlib
from typing import Any

OPERATOR_TOKEN = "test-operator-token-0123456789"
VIEWER_TOKEN = "test-viewer-token-0123456789ab"


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def control_section() -> dict[str, Any]:
    """`control:` configuration with an operator ("ops") and a viewer ("dash")."""
    return {
        "auth": {
            "tokens": [
                {"name": "ops", "role": "operator", "token_sha256": sha256_hex(OPERATOR_TOKEN)},
                {"name": "dash", "role": "viewer", "token_sha256": sha256_hex(VIEWER_TOKEN)},
            ]
        }
    }


def bearer(token: str = OPERATOR_TOKEN) -> tuple[tuple[str, str]]:
    """gRPC metadata carrying `token`."""
    return (("authorization", f"Bearer {token}"),)
