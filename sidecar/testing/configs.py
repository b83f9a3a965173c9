"""Configuration mappings for tests and benchmarks (no generated protobuf code imported, so
that tests that also load tritonclient can use them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sidecar.testing.credentials import control_section


def config_dict(
    variants: Mapping[str, str | tuple[str, str]],
    *,
    weights: Mapping[str, int],
    shadow: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A minimal configuration: `variants` maps name -> address or (address, version)."""
    out: dict[str, Any] = {
        "listen": {"predict": "127.0.0.1:0", "control": "127.0.0.1:0"},
        "model": "classifier",
        "variants": {
            name: {
                "address": spec if isinstance(spec, str) else spec[0],
                "model_name": "classifier",
                "model_version": name if isinstance(spec, str) else spec[1],
            }
            for name, spec in variants.items()
        },
        "flag": {
            "key": "classifier-rollout",
            "stable": "stable",
            "canary": "canary" if "canary" in variants else None,
            "weights": dict(weights),
        },
        "server": {"log_level": "warning", "shutdown_grace": 2.0},
        "control": control_section(),
        "state": {"backend": "memory"},
    }
    if shadow is not None:
        out["shadow"] = dict(shadow)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out
