"""The `predict:` section: defaults, bounds named by field, app tokens apart from Control's."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.config import ConfigError, parse_config
from sidecar.testing.credentials import OPERATOR_TOKEN, sha256_hex
from sidecar.testing.inprocess import config_dict

APP = sha256_hex("test-app-token-0123456789abcdef")


def raw(**predict: Any) -> dict[str, Any]:
    return config_dict({"stable": "127.0.0.1:1"}, weights={"stable": 10_000}, predict=predict)


def test_defaults_bound_keys_and_cap_units_and_hide_the_detail() -> None:
    """Without a `predict:` section: 256-byte keys, 20 per key, no app tokens, no detail."""
    p = parse_config(raw()).predict
    assert (p.max_key_bytes, p.max_per_key, p.max_tracked_keys) == (256, 20, 100_000)
    assert p.auth.tokens == () and not p.expose_reason_detail


def test_app_tokens_have_role_app() -> None:
    """An app token defaults to role app and is kept as its SHA-256 only."""
    (token,) = parse_config(
        raw(auth={"tokens": [{"name": "shop", "token_sha256": APP}]})
    ).predict.auth.tokens
    assert token.role == "app" and token.sha256.hex() == APP


@pytest.mark.parametrize(
    ("predict", "problem"),
    [
        ({"max_key_bytes": 8}, "predict.max_key_bytes: must be 16..65536, got 8"),
        ({"max_per_key": -1}, "predict.max_per_key: must be >= 0"),
        ({"max_tracked_keys": 0}, "predict.max_tracked_keys: must be >= 1"),
        ({"expose_reason_detail": "yes"}, "predict.expose_reason_detail: must be true or false"),
        (
            {"auth": {"tokens": [{"name": "x", "role": "operator", "token_sha256": APP}]}},
            "predict.auth.tokens[0].role: must be one of app",
        ),
        (
            {
                "auth": {
                    "tokens": [
                        {"name": "x", "token_sha256": APP},
                        {"name": "y", "token_sha256": APP},
                    ]
                }
            },
            "predict.auth.tokens: two entries share one token",
        ),
        (
            {"auth": {"tokens": [{"name": "x", "token_sha256": sha256_hex(OPERATOR_TOKEN)}]}},
            "predict.auth.tokens[0]: the same token as a control.auth credential",
        ),
    ],
)
def test_bad_predict_settings_are_named(predict: dict[str, Any], problem: str) -> None:
    """Each bad setting is refused with its field named."""
    with pytest.raises(ConfigError) as info:
        parse_config(raw(**predict))
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems
