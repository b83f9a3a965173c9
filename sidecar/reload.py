"""SIGHUP: re-read the configuration file and apply what can change while serving.

`plan_reload(old, new)` compares two validated configurations field by field and sorts
every changed field into one of three lists:

- `live`: applied at once: `server.log_level`, `server.shutdown_grace`, `shadow.sample_bp`,
  `shadow.noise_sample_bp` (while the noise mirror runs), and the `analysis` settings the
  rollout controller reads on each tick (`interval`, `stale_after_hours`,
  `progress_deadline`, `progress_deadline_abort`). The judge's thresholds are not among
  them: the judge and its false-rollback budget are built once per deployment;
- `ignored`: `flag.*`: the stored routing state wins over the file after the first start
  (change it with `sidecarctl`);
- `restart`: everything else (listen addresses, variants, credentials, state, windows,
  webhook, experiment, drift...): logged as needing a restart, not applied.

`merge(old, new, live)` is the configuration in force afterwards: the old one with the
live fields taken from the new one. A file that does not validate changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.config import Config

LIVE_FIELDS = frozenset(
    {
        "server.log_level",
        "server.shutdown_grace",
        "shadow.sample_bp",
        "shadow.noise_sample_bp",
        "analysis.interval",
        "analysis.stale_after_hours",
        "analysis.progress_deadline",
        "analysis.progress_deadline_abort",
    }
)


@dataclass(frozen=True)
class ReloadPlan:
    live: tuple[str, ...]
    ignored: tuple[str, ...]
    restart: tuple[str, ...]


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value


def _leaves(config: Config) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _flatten(config.model_dump(mode="json", by_alias=True), "", out)
    return out


def changed_fields(old: Config, new: Config) -> list[str]:
    """Dotted paths of the fields whose values differ (lists compared whole)."""
    a, b = _leaves(old), _leaves(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, _MISSING) != b.get(k, _MISSING))


_MISSING = object()


def _is_live(field: str, old: Config, new: Config) -> bool:
    if field == "shadow.noise_sample_bp":  # the noise mirror exists only when it was on
        return bool(
            old.shadow and new.shadow and old.shadow.noise_sample_bp and new.shadow.noise_sample_bp
        )
    if field.startswith("shadow."):
        return field in LIVE_FIELDS and old.shadow is not None and new.shadow is not None
    return field in LIVE_FIELDS


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    live, ignored, restart = [], [], []
    for field in changed_fields(old, new):
        if field.startswith("flag."):
            ignored.append(field)
        elif _is_live(field, old, new):
            live.append(field)
        else:
            restart.append(field)
    return ReloadPlan(tuple(live), tuple(ignored), tuple(restart))


def merge(old: Config, new: Config, live: Iterable[str]) -> Config:
    """`old` with each of the `live` fields (section.field) set from `new`."""
    sections: dict[str, dict[str, Any]] = {}
    for field in live:
        section, _, name = field.partition(".")
        sections.setdefault(section, {})[name] = getattr(getattr(new, section), name)
    update = {
        section: getattr(old, section).model_copy(update=values)
        for section, values in sections.items()
    }
    return old.model_copy(update=update)
