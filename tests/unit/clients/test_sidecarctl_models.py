"""sidecarctl and several routed models: `--model` / $SIDECARCTL_MODEL send `x-model` on
every call (none: the primary), `models` lists the routed models, reports name theirs."""

from __future__ import annotations

import json

import pytest
from test_report import ship_report
from test_sidecarctl import FakeControl, run

from clients.render_text import render_experiment
from clients.report_html import render_html
from clients.views import experiment_to_dict
from sidecar._proto.sidecar.v1 import control_pb2 as cpb


def two_models() -> cpb.ListModelsResponse:
    return cpb.ListModelsResponse(
        models=[
            cpb.RoutedModel(
                name="classifier", flag_key="classifier-rollout", stable="stable",
                canary="canary", weights={"stable": 9000, "canary": 1000}, revision=4,
                primary=True,
            ),
            cpb.RoutedModel(
                name="ranker", flag_key="ranker-rollout", stable="stable",
                weights={"stable": 10_000}, kill_switch=True, revision=2,
            ),
        ]
    )  # fmt: skip


def test_model_option_sends_x_model_on_reads_and_writes(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--model ranker` (before or after the command) goes out as `x-model: ranker`."""
    assert run(capsys, "--model", "ranker", "status").code == 0
    done = run(capsys, "weights", "stable=90%", "canary=10%", "--reason", "r", "--model", "ranker")
    assert done.code == 0, done.err
    assert [c.metadata.get("x-model") for c in fake.calls] == ["ranker"] * len(fake.calls)
    assert {c.method for c in fake.calls} >= {"GetState", "SetWeights"}


def test_without_model_no_header_is_sent_and_the_environment_sets_it(
    fake: FakeControl, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No --model: no header (the sidecar's primary); $SIDECARCTL_MODEL sets it; --model
    wins over the variable."""
    assert run(capsys, "status").code == 0
    assert "x-model" not in fake.calls[-1].metadata
    monkeypatch.setenv("SIDECARCTL_MODEL", "ranker")
    assert run(capsys, "status").code == 0
    assert fake.calls[-1].metadata.get("x-model") == "ranker"
    assert run(capsys, "--model", "classifier", "status").code == 0
    assert fake.calls[-1].metadata.get("x-model") == "classifier"


@pytest.mark.parametrize("bad", ["", "naïve", "a b\n", "m" * 257])
def test_a_model_name_that_cannot_travel_as_metadata_is_a_usage_error(
    fake: FakeControl, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    """Empty, non-ASCII, control characters or too long: exit 2, nothing sent."""
    done = run(capsys, "--model", bad, "status")
    assert done.code == 2 and "model name" in done.err
    assert fake.calls == []


def test_a_bad_model_variable_is_a_usage_error(
    fake: FakeControl, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIDECARCTL_MODEL", "naïve")
    done = run(capsys, "status")
    assert done.code == 2 and "SIDECARCTL_MODEL" in done.err
    assert fake.calls == []


def test_models_lists_the_routed_models_as_a_table_json_and_yaml(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """`models`: one row per routed model, the primary marked; json/yaml carry the fields."""
    fake.models = two_models()
    table = run(capsys, "models")
    assert table.code == 0, table.err
    lines = table.out.splitlines()
    assert lines[0].split()[:3] == ["MODEL", "FLAG", "STABLE"]
    assert "classifier (primary)" in lines[1] and "canary=10%" in lines[1]
    assert lines[2].split()[0] == "ranker" and "ON" in lines[2]
    data = json.loads(run(capsys, "models", "-o", "json").out)
    assert [m["name"] for m in data["models"]] == ["classifier", "ranker"]
    assert data["models"][1] == {
        "name": "ranker", "primary": False, "flag_key": "ranker-rollout", "stable": "stable",
        "canary": None, "weights": {"stable": 10_000}, "kill_switch": True, "revision": 2,
    }  # fmt: skip
    assert "name: ranker" in run(capsys, "models", "-o", "yaml").out
    assert fake.calls[-1].method == "ListModels"


def test_the_experiment_report_names_its_model() -> None:
    """The report's header line, its JSON and its HTML page name the routed model."""
    report = ship_report()
    report.model = "ranker<b>"
    lines = render_experiment(report).splitlines()
    assert any(line.startswith("model ranker<b>: experiment epoch") for line in lines)
    assert experiment_to_dict(report)["model"] == "ranker<b>"
    page = render_html(report)
    assert "<h1>Experiment report: ranker&lt;b&gt;</h1>" in page
    assert "<title>Experiment report (ranker&lt;b&gt;):" in page
