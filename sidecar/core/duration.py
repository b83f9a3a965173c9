"""Durations in settings: seconds as a number, or text such as ``30s``, ``15m``, ``2h``,
``1h30m``, ``250ms``. Pure.

`Duration` is the one annotated type for every duration field of the configuration, in the
core's settings dataclasses and in `sidecar/config.py` alike. Its metadata object follows
pydantic's duck-typed hooks (``__get_pydantic_core_schema__``, ``__get_pydantic_json_schema__``)
with plain dictionaries, so the core stays free of pydantic: a validator built from these
settings parses the text before checking the number; plain Python code passes floats.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

__all__ = ["DURATION_PATTERN", "Duration", "parse_duration"]

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
DURATION_PATTERN = r"^(?:\d+(?:\.\d+)?(?:ms|h|m|s))+$"
_WHOLE = re.compile(DURATION_PATTERN)
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(value: object) -> object:
    """Seconds for duration text; any other value unchanged (the number check follows).

    Raises ValueError for text that is not a duration."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not _WHOLE.fullmatch(text):
        raise ValueError(
            f"must be a number of seconds or a duration such as 30s, 15m, 2h, got {value!r}"
        )
    return sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(text))


class _DurationSyntax:
    """Annotated metadata: parse duration text before the float is validated."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: Callable[[Any], dict[str, Any]]
    ) -> dict[str, Any]:
        return {
            "type": "function-before",
            "function": {"type": "no-info", "function": parse_duration},
            "schema": handler(source),
        }

    def __get_pydantic_json_schema__(
        self, schema: Any, handler: Callable[[Any], dict[str, Any]]
    ) -> dict[str, Any]:
        return {
            "anyOf": [
                {"type": "number"},
                {"type": "string", "pattern": DURATION_PATTERN},
            ],
            "description": "seconds, or a duration such as 30s, 15m, 2h, 1h30m, 250ms",
        }

    def __repr__(self) -> str:
        return "Duration"


Duration = Annotated[float, _DurationSyntax()]
