"""Two routed models on one real MLServer, through the real `sidecar serve` process: each
model has a stable and a canary variant there; tritonclient calls both through the
sidecar and gets each model's own answers (compared with MLServer's); `sidecarctl --model`
changes one model only (its state and audit, not the other's); `sidecarctl models` lists
both; /metrics keeps them apart by `model`."""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient

from sidecar.testing.control_cli import ok, sidecarctl
from sidecar.testing.credentials import OPERATOR_TOKEN, VIEWER_TOKEN, control_section
from sidecar.testing.mlserver import MLServerProcess
from sidecar.testing.process import SidecarProcess

pytestmark = pytest.mark.integration
ROWS = 30


def variant(address: str, name: str, version: str) -> dict[str, str]:
    return {"address": address, "model_name": name, "model_version": version}


def two_models(mlserver: str) -> dict[str, Any]:
    """`classifier`: stable classifier v1, canary v2. `ranker`: stable classifier-weak v1
    (a stump), canary classifier-shadow-same v1 (a logistic regression): same variant
    names, other upstream models, on the same MLServer."""
    return {
        "listen": {"predict": "127.0.0.1:0", "control": "127.0.0.1:0", "metrics": "127.0.0.1:0"},
        "model": "classifier",
        "variants": {
            "stable": variant(mlserver, "classifier", "v1"),
            "canary": variant(mlserver, "classifier", "v2"),
        },
        "flag": {"key": "classifier-rollout", "stable": "stable", "canary": "canary",
                 "weights": {"stable": 10_000, "canary": 0}},
        "models": {
            "ranker": {
                "variants": {
                    "stable": variant(mlserver, "classifier-weak", "v1"),
                    "canary": variant(mlserver, "classifier-shadow-same", "v1"),
                },
                "flag": {"key": "ranker-rollout", "stable": "stable", "canary": "canary",
                         "weights": {"stable": 10_000, "canary": 0}},
            }
        },
        "control": control_section(),
        "server": {"log_level": "info"},
    }  # fmt: skip


def predictions(
    address: str, model: str, rows: npt.NDArray[np.float64], version: str = ""
) -> tuple[list[int], set[str]]:
    """Each row's predicted label, and the model names the answers carried."""
    client = grpcclient.InferenceServerClient(address)
    labels, names = [], set()
    for i in range(len(rows)):
        tensor = grpcclient.InferInput("input-0", [1, 4], "FP64")
        tensor.set_data_from_numpy(rows[i : i + 1])
        result = client.infer(
            model, [tensor], model_version=version, headers={"x-user-id": f"u{i}"}
        )
        labels.append(int(np.asarray(result.as_numpy("predict")).ravel()[0]))
        names.add(result.get_response().model_name)
    return labels, names


def ctl(sc: SidecarProcess, *args: str, token: str = OPERATOR_TOKEN) -> str:
    return ok(sidecarctl(sc.control_address, *args, token=token))


def audit_methods(sc: SidecarProcess, *model: str) -> list[str]:
    entries = json.loads(ctl(sc, *model, "audit", "-o", "json", token=VIEWER_TOKEN))
    rows = entries["entries"] if isinstance(entries, dict) else entries
    return [e["method"] for e in rows]


def scrape(address: str) -> str:
    deadline = time.monotonic() + 10
    while True:  # spans end after the answers are sent: poll, bounded
        text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
        if 'model="ranker"' in text and "sidecar_requests_total" in text:
            return text
        assert time.monotonic() < deadline, text[-2000:]
        time.sleep(0.05)


def served_ok(metrics: str) -> dict[tuple[str, str], float]:
    """(model, variant) -> requests answered OK, from `sidecar_requests_total`."""
    out = {}
    for line in metrics.splitlines():
        if line.startswith("sidecar_requests_total{") and 'status="OK"' in line:
            labels, value = line[len("sidecar_requests_total{") :].rsplit("} ", 1)
            pairs = dict(p.split("=", 1) for p in labels.split(","))
            out[(pairs["model"].strip('"'), pairs["variant"].strip('"'))] = float(value)
    return out


def test_two_routed_models_on_one_mlserver(
    mlserver: MLServerProcess, iris_x: npt.NDArray[np.float64], tmp_path: Path
) -> None:
    """Each routed model answers with its own upstream models' answers, and a write to
    one model (`--model ranker`) changes its state, audit and database file only."""
    rows = iris_x[::5][:ROWS]
    direct = mlserver.grpc_address
    classifier_v1, _ = predictions(direct, "classifier", rows, "v1")
    stump, _ = predictions(direct, "classifier-weak", rows, "v1")
    logreg_copy, _ = predictions(direct, "classifier-shadow-same", rows, "v1")
    assert stump != logreg_copy  # the ranker's two variants are told apart by their answers

    run_dir = tmp_path / "sidecar"
    with SidecarProcess(two_models(direct), run_dir=run_dir) as sc:
        started = sc.wait_for_event("sidecar.started")
        assert predictions(sc.predict_address, "classifier", rows) == (
            classifier_v1,
            {"classifier"},
        )
        assert predictions(sc.predict_address, "ranker", rows) == (stump, {"ranker"})

        out = ctl(sc, "--model", "ranker", "weights", "stable=0", "canary=100%",
                  "--reason", "ranker canary to all")  # fmt: skip
        assert "ranker" in out
        assert predictions(sc.predict_address, "ranker", rows)[0] == logreg_copy
        assert predictions(sc.predict_address, "classifier", rows)[0] == classifier_v1

        primary = json.loads(ctl(sc, "status", "-o", "json", token=VIEWER_TOKEN))
        ranker = json.loads(
            ctl(sc, "--model", "ranker", "status", "-o", "json", token=VIEWER_TOKEN)
        )
        assert primary["model"] == "classifier" and primary["revision"] == 1
        assert primary["weights"] == {"stable": 10_000, "canary": 0}
        assert ranker["model"] == "ranker" and ranker["revision"] == 2
        assert ranker["weights"] == {"stable": 0, "canary": 10_000}
        assert audit_methods(sc) == ["Initialize"]
        assert audit_methods(sc, "--model", "ranker") == ["Initialize", "SetWeights"]

        listed = json.loads(ctl(sc, "models", "-o", "json", token=VIEWER_TOKEN))["models"]
        assert [(m["name"], m["primary"], m["flag_key"], m["revision"]) for m in listed] == [
            ("classifier", True, "classifier-rollout", 1),
            ("ranker", False, "ranker-rollout", 2),
        ]
        unknown = sidecarctl(sc.control_address, "--model", "ghost", "status", token=VIEWER_TOKEN)
        assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
        assert "'classifier', 'ranker'" in unknown.stderr

        metrics = scrape(str(started["metrics"]))
        assert 'model="classifier"' in metrics and 'model="ranker"' in metrics
        assert served_ok(metrics) == {
            ("classifier", "stable"): 2 * ROWS,
            ("classifier", "canary"): 0,
            ("ranker", "stable"): ROWS,
            ("ranker", "canary"): ROWS,
        }
    assert sc.returncode == 0
    with sqlite3.connect(run_dir / "var" / "sidecar.ranker.db") as db:
        count = db.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    assert count == 2
    with sqlite3.connect(run_dir / "var" / "sidecar.db") as db:
        assert db.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == 1
