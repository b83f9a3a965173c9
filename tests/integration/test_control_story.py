"""The operator's story through the real `sidecar serve` process and the real
`sidecarctl`, checked with tritonclient in between: ramp, kill switch across a restart
and a crash, promote, roll back, audit; racing operators; credentials; bad state file."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient

from sidecar.testing.control_cli import ok, sidecarctl, status_json
from sidecar.testing.credentials import OPERATOR_TOKEN, VIEWER_TOKEN, control_section
from sidecar.testing.mlserver import MLServerProcess
from sidecar.testing.process import SidecarProcess

pytestmark = pytest.mark.integration
USERS = [f"user-{i}" for i in range(400)]


def story_config(mlserver: str) -> dict[str, Any]:
    return {
        "listen": {"predict": "127.0.0.1:0", "control": "127.0.0.1:0"},
        "model": "classifier",
        "variants": {
            "stable": {"address": mlserver, "model_name": "classifier", "model_version": "v1"},
            "canary": {"address": mlserver, "model_name": "classifier", "model_version": "v2"},
        },
        "flag": {
            "key": "classifier-rollout",
            "stable": "stable",
            "canary": "canary",
            "weights": {"stable": 10_000, "canary": 0},
        },
        "control": control_section(),
        "server": {"log_level": "info"},
    }


def ctl(
    sc: SidecarProcess, *args: str, token: str | None = OPERATOR_TOKEN
) -> subprocess.CompletedProcess[str]:
    return sidecarctl(sc.control_address, *args, token=token)


def state(sc: SidecarProcess) -> dict[str, Any]:
    return status_json(sc.control_address, VIEWER_TOKEN)


def served_versions(
    sc: SidecarProcess, rows: npt.NDArray[np.float64], users: list[str] = USERS
) -> dict[str, str]:
    client = grpcclient.InferenceServerClient(sc.predict_address)
    out = {}
    for i, user in enumerate(users):
        tensor = grpcclient.InferInput("input-0", [1, 4], "FP64")
        tensor.set_data_from_numpy(rows[i % 150 : i % 150 + 1])
        result = client.infer("classifier", [tensor], headers={"x-user-id": user})
        out[user] = result.get_response().model_version
    return out


def canary_share_ok(versions: dict[str, str], bp: int) -> bool:
    n, p = len(versions), bp / 10_000
    got = sum(v == "v2" for v in versions.values())
    return abs(got - n * p) <= 3 * (n * p * (1 - p)) ** 0.5


def test_operator_story_ramp_kill_restart_promote_rollback(
    mlserver: MLServerProcess, iris_x: npt.NDArray[np.float64], tmp_path: Path
) -> None:
    """Stable only -> canary 5% -> 25% (sticky) -> kill switch on -> restart (still on) ->
    off -> promote -> roll back, each step visible to real traffic and in the audit log."""
    run_dir = tmp_path / "sidecar"
    sc = SidecarProcess(story_config(mlserver.grpc_address), run_dir=run_dir).start()
    try:
        assert set(served_versions(sc, iris_x, USERS[:50]).values()) == {"v1"}
        table = ok(ctl(sc, "status", token=VIEWER_TOKEN))
        assert "stable" in table and "canary" in table

        out = ok(ctl(sc, "weights", "stable=95%", "canary=5%", "--reason", "start canary"))
        assert "canary" in out
        at5 = served_versions(sc, iris_x)
        assert canary_share_ok(at5, 500)

        rev = state(sc)["revision"]
        ok(ctl(sc, "weights", "stable=7500", "canary=2500", "--reason", "ramp to 25%",
               "--expect-revision", str(rev)))  # fmt: skip
        at25 = served_versions(sc, iris_x)
        assert canary_share_ok(at25, 2500)
        assert all(at25[u] == "v2" for u, v in at5.items() if v == "v2"), "ramp is sticky"

        ok(ctl(sc, "kill", "on", "--reason", "error spike on dashboard"))
        assert set(served_versions(sc, iris_x, USERS[:100]).values()) == {"v1"}

        assert sc.stop() == 0
        sc = SidecarProcess(story_config(mlserver.grpc_address), run_dir=run_dir).start()
        after_restart = state(sc)
        assert after_restart["kill_switch"] is True
        assert after_restart["kill_switch_reason"] == "error spike on dashboard"
        assert set(served_versions(sc, iris_x, USERS[:100]).values()) == {"v1"}

        ok(ctl(sc, "kill", "off", "--reason", "false alarm"))
        assert served_versions(sc, iris_x) == at25  # same users, same variants

        ok(ctl(sc, "promote", "--reason", "canary healthy for a day"))
        promoted = state(sc)
        assert promoted["stable_variant"] == "canary"
        assert set(served_versions(sc, iris_x, USERS[:100]).values()) == {"v2"}

        ok(ctl(sc, "rollback", "--reason", "regression reported"))
        assert set(served_versions(sc, iris_x, USERS[:100]).values()) == {"v1"}
        assert state(sc)["stable_variant"] == "stable"

        audit = ok(ctl(sc, "audit", "-o", "json", token=VIEWER_TOKEN))
        text = audit
        for method in ("SetWeights", "SetKillSwitch", "Promote", "Rollback"):
            assert method in text
        assert "ramp to 25%" in text and "regression reported" in text
    finally:
        sc.stop()
    with sqlite3.connect(run_dir / "var" / "sidecar.db") as db:
        lines = [row[0] for row in db.execute("SELECT entry FROM audit ORDER BY seq")]
    entries = [json.loads(line) for line in lines]
    assert [e["method"] for e in entries] == [
        "Initialize", "SetWeights", "SetWeights", "SetKillSwitch", "SetKillSwitch", "Promote",
        "Rollback",
    ]  # fmt: skip
    assert all(e["principal"] == "ops" for e in entries[1:])
    assert OPERATOR_TOKEN.encode() not in (run_dir / "var" / "sidecar.db").read_bytes()
    assert not any(OPERATOR_TOKEN in line for line in sc.lines)


def test_kill_switch_survives_sigkill(
    mlserver: MLServerProcess, iris_x: npt.NDArray[np.float64], tmp_path: Path
) -> None:
    """A crash (SIGKILL) right after the acknowledgement loses nothing."""
    config = story_config(mlserver.grpc_address)
    config["flag"]["weights"] = {"stable": 5000, "canary": 5000}
    sc = SidecarProcess(config, run_dir=tmp_path).start()
    ok(ctl(sc, "override", "set", "vip", "canary", "--reason", "beta tester"))
    ok(ctl(sc, "kill", "on", "--reason", "incident 7"))
    sc.kill()
    sc = SidecarProcess(config, run_dir=tmp_path).start()
    try:
        st = state(sc)
        assert st["kill_switch"] is True and st["revision"] == 3
        assert st["user_overrides"] == {"vip": "canary"}
        assert set(served_versions(sc, iris_x, USERS[:60]).values()) == {"v1"}
        entries = json.loads(ok(ctl(sc, "audit", "-o", "json", token=VIEWER_TOKEN)))
        assert [e["method"] for e in entries][-2:] == ["SetUserOverride", "SetKillSwitch"]
    finally:
        sc.stop()


def test_two_operators_racing_one_wins_one_is_aborted(
    mlserver: MLServerProcess, tmp_path: Path
) -> None:
    """Two sidecarctl writes with the same --expect-revision: exactly one succeeds; the
    other exits 1 with ABORTED and changes nothing."""
    with SidecarProcess(story_config(mlserver.grpc_address), run_dir=tmp_path) as sc:
        rev = str(state(sc)["revision"])
        with ThreadPoolExecutor(2) as pool:
            a = pool.submit(ctl, sc, "weights", "stable=90%", "canary=10%", "--reason", "alice",
                            "--expect-revision", rev)  # fmt: skip
            b = pool.submit(ctl, sc, "kill", "on", "--reason", "bob", "--expect-revision", rev)
            results = [a.result(), b.result()]
        codes = sorted(r.returncode for r in results)
        assert codes == [0, 1], [(r.returncode, r.stderr) for r in results]
        loser = next(r for r in results if r.returncode == 1)
        assert "ABORTED" in loser.stderr
        assert state(sc)["revision"] == int(rev) + 1


def test_credentials_are_enforced_through_the_cli(
    mlserver: MLServerProcess, tmp_path: Path
) -> None:
    """No token: UNAUTHENTICATED; viewer writing: PERMISSION_DENIED; nothing changes."""
    with SidecarProcess(story_config(mlserver.grpc_address), run_dir=tmp_path) as sc:
        before = state(sc)
        none = ctl(sc, "kill", "on", "--reason", "x", token=None)
        assert none.returncode == 1 and "UNAUTHENTICATED" in none.stderr
        viewer = ctl(sc, "kill", "on", "--reason", "x", token=VIEWER_TOKEN)
        assert viewer.returncode == 1 and "PERMISSION_DENIED" in viewer.stderr
        bad = ctl(sc, "weights", "stable=60%", "canary=30%", "--reason", "typo")
        assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr
        assert "sum to 10000" in bad.stderr
        assert state(sc) == before


def test_corrupt_state_file_stops_startup_unless_safe_mode(
    mlserver: MLServerProcess, iris_x: npt.NDArray[np.float64], tmp_path: Path
) -> None:
    """A corrupted state file: start-up fails naming the file; --safe-mode starts with
    all traffic on stable and the kill switch on, loudly."""
    config = story_config(mlserver.grpc_address)
    config["flag"]["weights"] = {"stable": 0, "canary": 10_000}
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "sidecar.db").write_text('{"schema_version": 1, "state": {"rev')
    refused = SidecarProcess(config, run_dir=tmp_path, startup_timeout=15)
    with pytest.raises(RuntimeError) as info:
        refused.start()
    assert "sidecar.db" in str(info.value) and "--safe-mode" in str(info.value)
    assert refused.returncode == 1
    with SidecarProcess(config, run_dir=tmp_path, extra_args=["--safe-mode"]) as sc:
        st = state(sc)
        assert st["kill_switch"] is True and st["safe_mode"] is True
        assert set(served_versions(sc, iris_x, USERS[:40]).values()) == {"v1"}
        assert any(e.get("event") == "state.SAFE_MODE" for e in sc.events)


def test_rollout_commands_through_the_real_cli(
    mlserver: MLServerProcess, iris_x: npt.NDArray[np.float64], tmp_path: Path
) -> None:
    """sidecarctl rollout start (plan file), status, pause, resume, abort and drill against
    the real sidecar: the canary gets its stage's weight, status shows the stage and its
    gates, abort returns all traffic to stable, the drill restores the state."""
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "- {name: canary-5, kind: canary, canary_percent: 5, min_duration: 3600, min_samples: 10}\n"
        "- {name: promote, kind: promote}\n"
    )
    config = story_config(mlserver.grpc_address)
    config["analysis"] = {"interval": 0.2, "bucket": 0.2, "lookback": 2.0, "horizon": 60.0}
    with SidecarProcess(config, run_dir=tmp_path / "sc") as sc:
        ok(ctl(sc, "rollout", "start", "--plan", str(plan), "--reason", "ship v2"))
        status = json.loads(ok(ctl(sc, "rollout", "status", "-o", "json", token=VIEWER_TOKEN)))
        assert status["phase"] == "RUNNING" and status["stage_name"] == "canary-5"
        served_versions(sc, iris_x, USERS[:200])
        table = ok(ctl(sc, "rollout", "status", token=VIEWER_TOKEN))
        assert "canary-5" in table and "min_samples" in table
        assert state(sc)["weights"]["canary"] == 500
        ok(ctl(sc, "rollout", "pause", "--reason", "look at dashboards"))
        ok(ctl(sc, "rollout", "resume", "--reason", "fine"))
        ok(ctl(sc, "rollout", "abort", "--reason", "not today"))
        assert state(sc)["weights"]["canary"] == 0
        ok(ctl(sc, "weights", "stable=90%", "canary=10%", "--reason", "manual canary"))
        before = state(sc)
        drill = ok(ctl(sc, "drill", "--reason", "quarterly"))
        assert "detect" in drill.lower()
        after = state(sc)
        assert after["weights"] == before["weights"] and after["revision"] == before["revision"] + 2
