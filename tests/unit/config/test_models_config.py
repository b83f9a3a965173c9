"""`models:`: further routed models, each with its own variants, flag, shadow, experiment
and drift; the per-model view the wiring builds a routed unit from."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_config import run_cli

from sidecar.config import MAX_ROUTED_MODELS, ConfigError, parse_config, sibling_path
from sidecar.testing.configs import config_dict


def section(model: str = "ranker", canary_bp: int = 1000) -> dict[str, Any]:
    return {
        "variants": {
            "stable": {"address": "127.0.0.1:9001", "model_name": f"{model}-a"},
            "canary": {"address": "127.0.0.1:9002", "model_name": f"{model}-b"},
        },
        "flag": {
            "key": f"{model}-rollout",
            "stable": "stable",
            "canary": "canary",
            "weights": {"stable": 10_000 - canary_bp, "canary": canary_bp},
        },
        "shadow": {"variant": "canary", "sample_bp": 500},
        "experiment": {"metrics": [{"name": "click", "kind": "bool", "minimum_effect": 0.01}]},
    }


def two_models(**extra: Any) -> dict[str, Any]:
    raw = config_dict(
        {"stable": "127.0.0.1:9000", "canary": "127.0.0.1:9000"},
        weights={"stable": 9000, "canary": 1000},
        state={"backend": "sqlite", "path": "/tmp/sc/var/sidecar.db",
               "experiment_path": "/tmp/sc/var/experiment.json"},
        **extra,
    )  # fmt: skip
    raw["models"] = {"ranker": section()}
    return raw


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return info.value.problems


def test_a_file_without_models_routes_its_one_model() -> None:
    """Old files keep working: the top level is the primary and only routed model."""
    config = parse_config(config_dict({"stable": "127.0.0.1:9000"}, weights={"stable": 10_000}))
    assert config.routed_models == ("classifier",)
    assert config.for_model("classifier") is config
    assert config.unit == ""


def test_models_are_routed_after_the_primary_each_with_its_own_sections() -> None:
    """Each entry has its own variants (named by their keys), flag, shadow and experiment."""
    config = parse_config(two_models())
    assert config.routed_models == ("classifier", "ranker")
    ranker = config.models["ranker"]
    assert ranker.variants["canary"].name == "canary"
    assert ranker.variants["canary"].model_name == "ranker-b"
    assert ranker.flag.key == "ranker-rollout"
    assert dict(ranker.flag.weights) == {"stable": 9000, "canary": 1000}
    assert ranker.shadow is not None and ranker.shadow.sample_bp == 500
    assert [m.name for m in ranker.experiment.metrics] == ["click"]
    assert not config.experiment.metrics  # the primary's experiment is its own


def test_the_per_model_view_has_that_models_sections_and_its_own_state() -> None:
    """`for_model` swaps in the model's sections, keeps the shared ones, and puts its
    state next to the primary's (SQLite files, Redis fleet key)."""
    config = parse_config(two_models(analysis={"interval": 7.0}))
    view = config.for_model("ranker")
    assert view.model == "ranker" and view.unit == "ranker"
    assert view.flag.key == "ranker-rollout"
    assert set(view.variants) == {"stable", "canary"}
    assert view.variants["stable"].model_name == "ranker-a"
    assert view.shadow is not None and view.shadow.sample_bp == 500
    assert view.analysis.interval == 7.0  # shared
    assert view.control == config.control and view.listen == config.listen
    assert view.state.path == "/tmp/sc/var/sidecar.ranker.db"
    assert view.state.experiment_path == "/tmp/sc/var/experiment.ranker.json"
    assert view.state.redis.fleet == "default/ranker"
    assert view.models == {}
    # The primary's view is unchanged.
    assert config.state.path == "/tmp/sc/var/sidecar.db" and config.flag.key == "classifier-rollout"
    with pytest.raises(KeyError):
        config.for_model("nope")


def test_sibling_path_inserts_the_model_name_before_the_suffix() -> None:
    """`state.path` of model b is a sibling file of the primary's."""
    assert sibling_path("var/sidecar.db", "b") == "var/sidecar.b.db"
    assert sibling_path("/x/canary.json", "ranker") == "/x/canary.ranker.json"


def test_a_bad_field_inside_a_model_names_its_path() -> None:
    """Weights that do not sum to 10,000 in `models.ranker` name `models.ranker.flag.weights`."""
    raw = two_models()
    raw["models"]["ranker"]["flag"]["weights"] = {"stable": 9000, "canary": 500}
    found = problems(raw)
    assert len(found) == 1
    assert found[0].startswith("models.ranker.flag.weights"), found


def test_a_model_entry_gets_the_per_section_cross_checks() -> None:
    """An unknown shadow variant and an unknown field inside a model are named by path."""
    raw = two_models()
    raw["models"]["ranker"]["shadow"]["variant"] = "ghost"
    raw["models"]["ranker"]["colour"] = "blue"
    found = problems(raw)
    assert any(p.startswith("models.ranker.colour: unknown field") for p in found), found
    raw = two_models()
    raw["models"]["ranker"]["shadow"]["variant"] = "ghost"
    found = problems(raw)
    assert any(p.startswith("models.ranker.shadow.variant: unknown variant") for p in found), found


def test_a_model_named_like_the_primary_is_refused() -> None:
    """Names are unique: an entry repeating the top-level model is refused."""
    raw = two_models()
    raw["models"]["classifier"] = section("classifier")
    found = problems(raw)
    assert any("models.classifier" in p and "routed already" in p for p in found), found


def test_too_many_models_are_refused() -> None:
    """At most MAX_ROUTED_MODELS routed models, the primary included."""
    raw = two_models()
    raw["models"] = {f"m{i}": copy.deepcopy(section(f"m{i}")) for i in range(MAX_ROUTED_MODELS)}
    found = problems(raw)
    assert any(p.startswith("models: at most 31 models") for p in found), found
    raw["models"] = {f"m{i}": copy.deepcopy(section(f"m{i}")) for i in range(MAX_ROUTED_MODELS - 1)}
    assert len(parse_config(raw).routed_models) == MAX_ROUTED_MODELS


@pytest.mark.parametrize("name", ["", "a/b", "../x", "x" * 129, "has space"])
def test_a_model_name_that_cannot_name_a_file_is_refused(name: str) -> None:
    """A routed model's name becomes part of file names and Redis keys: bounded, plain."""
    raw = two_models()
    raw["models"] = {name: section()}
    found = problems(raw)
    assert any(p.startswith("models:") and "1..128" in p for p in found), found


def test_sighup_sorts_a_further_models_fields_like_the_primarys() -> None:
    """`models.ranker.shadow.sample_bp` is live (applied to the ranker only),
    `models.ranker.flag.*` ignored (the stored state wins), its variants need a restart."""
    from sidecar.reload import merge, plan_reload, unit_fields

    old = parse_config(two_models())
    raw = two_models()
    raw["models"]["ranker"]["shadow"]["sample_bp"] = 2000
    raw["models"]["ranker"]["flag"]["weights"] = {"stable": 5000, "canary": 5000}
    raw["models"]["ranker"]["variants"]["canary"]["model_name"] = "other"
    new = parse_config(raw)
    plan = plan_reload(old, new)
    assert plan.live == ("models.ranker.shadow.sample_bp",)
    assert set(plan.ignored) == {
        "models.ranker.flag.weights.canary",
        "models.ranker.flag.weights.stable",
    }
    assert plan.restart == ("models.ranker.variants.canary.model_name",)
    assert unit_fields(plan.live, "ranker", old.model) == ("shadow.sample_bp",)
    assert unit_fields(plan.live, "classifier", old.model) == ()
    merged = merge(old, new, plan.live)
    view = merged.for_model("ranker")
    assert view.shadow is not None and view.shadow.sample_bp == 2000
    assert view.variants["canary"].model_name == "ranker-b"  # restart-only: kept
    assert dict(view.flag.weights) == {"stable": 9000, "canary": 1000}


def test_check_config_names_the_further_routed_models(tmp_path: Path) -> None:
    """`sidecar check-config` on a file with `models:` exits 0 and names them."""
    path = tmp_path / "sidecar.yaml"
    raw = two_models()
    raw["state"] = {"backend": "memory"}
    path.write_text(yaml.safe_dump(raw))
    done = run_cli("check-config", str(path))
    assert done.returncode == 0, done.stderr
    assert "also routes 'ranker'" in done.stdout


def test_the_old_file_store_is_migrated_into_the_primary_only(tmp_path: Path) -> None:
    """A `state.json` left by the old file store belongs to the primary model: a further
    model starts from its own configuration in its own database file."""
    from sidecar.adapters.store.sqlite import SqliteStore
    from sidecar.wiring import initial_snapshot

    raw = two_models()
    raw["state"] = {"path": str(tmp_path / "sidecar.db")}
    (tmp_path / "state.json").write_text("{not the ranker's")
    view = parse_config(raw).for_model("ranker")
    store = SqliteStore(view.state.path)
    snapshot = initial_snapshot(view, store, safe_mode=False)
    assert snapshot.revision == 1 and snapshot.flag.key == "ranker-rollout"
    assert [e.method for e in store.read_audit(0, 5, 1 << 20)] == ["Initialize"]
    assert (tmp_path / "sidecar.ranker.db").is_file()
    store.close()
