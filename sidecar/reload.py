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

A further routed model's fields (`models.<name>.shadow.sample_bp`, `models.<name>.flag.*`)
are sorted the same way as the primary's top-level ones, when the model is in both files
(adding or removing a routed model needs a restart); `unit_fields` gives one routed
model's live fields as its own view (`Config.for_model`) names them.

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


def _model_field(field: str, old: Config, new: Config) -> tuple[str, str] | None:
    """(model, field within its view) for `models.<model>.<field>` of a model routed by
    both files; None otherwise."""
    if not field.startswith("models."):
        return None
    for name in old.models.keys() & new.models.keys():
        prefix = f"models.{name}."
        if field.startswith(prefix):
            return name, field[len(prefix) :]
    return None


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    live, ignored, restart = [], [], []
    for field in changed_fields(old, new):
        inner, a, b = field, old, new
        found = _model_field(field, old, new)
        if found is not None:
            inner, a, b = found[1], old.for_model(found[0]), new.for_model(found[0])
        if inner.startswith("flag."):
            ignored.append(field)
        elif (found is None or inner.startswith("shadow.")) and _is_live(inner, a, b):
            live.append(field)
        else:
            restart.append(field)
    return ReloadPlan(tuple(live), tuple(ignored), tuple(restart))


def unit_fields(live: Iterable[str], model: str, primary: str) -> tuple[str, ...]:
    """The live fields that concern routed model `model`, as its view names them: the
    shared ones (`server.*`, `analysis.*`), and its own `shadow.*` (top level for the
    primary, `models.<model>.shadow.*` for the others)."""
    prefix = f"models.{model}."
    out = []
    for field in live:
        if field.startswith(prefix):
            out.append(field[len(prefix) :])
        elif field.startswith("shadow."):
            if model == primary:
                out.append(field)
        elif not field.startswith("models."):
            out.append(field)
    return tuple(out)


def merge(old: Config, new: Config, live: Iterable[str]) -> Config:
    """`old` with each of the `live` fields (section.field, or models.<name>.section.field)
    set from `new`."""
    sections: dict[str, dict[str, Any]] = {}
    models: dict[str, list[str]] = {}
    for field in live:
        found = _model_field(field, old, new)
        if found is not None:
            models.setdefault(found[0], []).append(found[1])
            continue
        section, _, name = field.partition(".")
        sections.setdefault(section, {})[name] = getattr(getattr(new, section), name)
    update: dict[str, Any] = {
        section: getattr(old, section).model_copy(update=values)
        for section, values in sections.items()
    }
    if models:
        update["models"] = {
            name: _merge_section(entry, new.models[name], models.get(name, ()))
            for name, entry in old.models.items()
        }
    merged = old.model_copy(update=update)
    return merged


def _merge_section(old: Any, new: Any, live: Iterable[str]) -> Any:
    """One `models.<name>` entry with its live `shadow.*` fields set from `new`."""
    values = {f.partition(".")[2]: getattr(new.shadow, f.partition(".")[2]) for f in live}
    if not values or old.shadow is None:
        return old
    return old.model_copy(update={"shadow": old.shadow.model_copy(update=values)})
