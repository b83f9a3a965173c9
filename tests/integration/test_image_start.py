"""The sidecar started the way the image starts it, against a real MLServer.

The Dockerfile is read, not copied: its ENTRYPOINT is the command, its ENV the
environment, its numeric USER the user (taken when the test runs as root), with the
image's folders mapped to temporary ones: `/etc/sidecar` (read-only, holding the example
configuration with its variants pointed at the MLServer) and `/var/lib/sidecar` (the
writable state volume, owned by that user). Listen addresses are moved to loopback port 0
(the one change from the image: tests bind no fixed port). It must serve, keep its state in
the volume and nothing in the configuration folder, and expose every configured variant's
counters at zero on /metrics before the first request.

There is no Docker engine here: this is the closest run of the image's start-up.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sidecar.testing.mlserver import MLServerProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30.0


def dockerfile_runtime() -> tuple[dict[str, str], str, list[str], list[str]]:
    """The final stage's ENV, USER, ENTRYPOINT and EXPOSE of the Dockerfile."""
    lines = (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    stages = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    env: dict[str, str] = {}
    user, entrypoint, expose = "", [], []
    for line in lines[stages[-1] :]:
        word, _, rest = line.strip().partition(" ")
        if word == "ENV":
            env.update(part.split("=", 1) for part in shlex.split(rest))  # type: ignore[misc]
        elif word == "USER":
            user = rest.strip()
        elif word == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif word == "EXPOSE":
            expose += rest.split()
    return env, user, entrypoint, expose


def dockerfile_healthcheck() -> list[str]:
    """The HEALTHCHECK command of the Dockerfile (exec form)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.startswith("HEALTHCHECK"))
    command: list[str] = json.loads(line.partition(" CMD ")[2])
    return command


def test_the_image_runs_as_a_numeric_user_with_state_on_its_volume() -> None:
    """What Kubernetes needs from the image: numeric USER, the state on /var/lib/sidecar,
    every listen address on all interfaces, the metrics port exposed."""
    env, user, entrypoint, expose = dockerfile_runtime()
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or gid.isdigit())
    assert env["SIDECAR_STATE_PATH"].startswith("/var/lib/sidecar/")
    assert env["SIDECAR_STATE_EXPERIMENT_PATH"].startswith("/var/lib/sidecar/")
    ports = {
        env[f"SIDECAR_LISTEN_{n}"].rpartition(":")[2] for n in ("PREDICT", "CONTROL", "METRICS")
    }
    assert ports == set(expose)
    assert entrypoint[:2] == ["sidecar", "serve"] and "/etc/sidecar/sidecar.yaml" in entrypoint


def interpreter_for(uid: int | None, code: Path) -> tuple[str, str]:
    """(python, extra PYTHONPATH) with which the user `uid` can import the sidecar from
    `code`: this interpreter when it can, else the system's Python of the same version with
    this environment's packages on the path (this interpreter may live in a folder only
    root can enter). Skips the test when neither works for that user."""
    if uid is None:
        return sys.executable, ""
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    site = sysconfig.get_paths()["purelib"]
    for python, extra in ((sys.executable, ""), (str(system), site)):
        path = os.pathsep.join(p for p in (str(code), extra) if p)
        try:
            subprocess.run(
                [python, "-c", "import sidecar.cli, sidecar.wiring"], user=uid, check=True,
                capture_output=True, timeout=TIMEOUT, cwd="/", env={"PYTHONPATH": path},
            )  # fmt: skip
        except (OSError, subprocess.CalledProcessError):
            continue
        return python, extra
    pytest.skip(f"user {uid} can run no Python that imports the sidecar (folders root-only?)")


class Started:
    def __init__(self, proc: subprocess.Popen[str], python: str, env: dict[str, str]) -> None:
        self.proc = proc
        self.python = python
        self.env = env
        self.events: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self.started = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                self.events.append(event)
                if event.get("event") == "sidecar.started":
                    self.started.set()

    def event(self, name: str) -> dict[str, Any]:
        return next(e for e in self.events if e.get("event") == name)


@pytest.fixture
def image_like(mlserver: MLServerProcess) -> Iterator[tuple[Started, Path, Path, int]]:
    env, user, entrypoint, _ = dockerfile_runtime()
    uid, _, gid = user.partition(":")
    as_root = os.geteuid() == 0
    top = Path(tempfile.mkdtemp(prefix="sidecar-image-"))
    top.chmod(0o755)  # the numeric user must reach the folders below
    etc, var, code = top / "etc-sidecar", top / "var-lib-sidecar", top / "code"
    # The package as the image holds it, where the numeric user can read it.
    shutil.copytree(
        ROOT / "sidecar", code / "sidecar", ignore=shutil.ignore_patterns("__pycache__")
    )
    etc.mkdir()
    var.mkdir(mode=0o700)
    if as_root:
        os.chown(var, int(uid), int(gid or uid))
    raw = yaml.safe_load((ROOT / "examples" / "sidecar.yaml").read_text())
    for variant in raw["variants"].values():
        variant["address"] = mlserver.grpc_address
    (etc / "sidecar.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (etc / "sidecar.yaml").chmod(0o444)
    etc.chmod(0o555)
    mapped = {
        k: v.replace("/var/lib/sidecar", str(var)).replace("/etc/sidecar", str(etc))
        for k, v in env.items()
    }
    for name in ("PREDICT", "CONTROL", "METRICS"):
        mapped[f"SIDECAR_LISTEN_{name}"] = "127.0.0.1:0"
    python, site = interpreter_for(int(uid) if as_root else None, code)
    command = [
        python, "-m", "sidecar.cli",
        *(a.replace("/etc/sidecar", str(etc)) for a in entrypoint[1:]),
    ]  # fmt: skip
    child_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join(p for p in (str(code), site) if p),
        "HOME": "/nonexistent",
        "SIDECAR_LOG_FORMAT": "json",
        **mapped,
    }
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env,
        cwd="/", start_new_session=True,
        user=int(uid) if as_root else None, group=int(gid or uid) if as_root else None,
        extra_groups=[] if as_root else None,
    )  # fmt: skip
    started = Started(proc, python, child_env)
    try:
        if not started.started.wait(TIMEOUT):
            raise AssertionError(f"did not start (exit {proc.poll()}):\n{''.join(started.lines)}")
        yield started, etc, var, int(uid) if as_root else os.geteuid()
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        etc.chmod(0o755)
        shutil.rmtree(top, ignore_errors=True)


def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_started_as_the_image_does_it_serves(
    image_like: tuple[Started, Path, Path, int], iris_x: npt.NDArray[np.float64]
) -> None:
    """Non-root numeric user, read-only configuration, writable state volume: it serves
    predictions, its counters are at zero before the first request (with model_version
    labels), the state is in the volume and the configuration folder is untouched."""
    started, etc, var, uid = image_like
    info = started.event("sidecar.started")
    status = Path(f"/proc/{started.proc.pid}/status").read_text()
    real_uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    assert real_uid == uid
    if os.geteuid() == 0:
        assert real_uid != 0
    first = scrape(info["metrics"])
    for variant, version in (("stable", "v1"), ("canary", "v2"), ("shadow", "v2")):
        labels = (
            ("model", "classifier"), ("model_version", version), ("status", "OK"),
            ("variant", variant),
        )  # fmt: skip
        assert first[("sidecar_requests_total", labels)] == 0
        errors = (("model", "classifier"), ("model_version", version), ("variant", variant))
        assert first[("sidecar_request_errors_total", errors)] == 0
    client = grpcclient.InferenceServerClient(info["predict"])
    tensor = grpcclient.InferInput("input-0", [1, 4], "FP64")
    tensor.set_data_from_numpy(np.ascontiguousarray(iris_x[:1], dtype=np.float64))
    deadline = time.monotonic() + TIMEOUT
    while True:  # the stable upstream's readiness is checked in the background
        try:
            result = client.infer("classifier", [tensor], headers={"x-user-id": "image-user"})
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert result.as_numpy("predict") is not None
    assert result.get_response().model_version in ("v1", "v2")
    # The image's HEALTHCHECK command, run against this sidecar, says healthy.
    check = [
        started.python if part == "python" else part.replace("127.0.0.1:8500", info["predict"])
        for part in dockerfile_healthcheck()
    ]
    assert subprocess.run(check, timeout=TIMEOUT, check=False, env=started.env).returncode == 0
    assert (var / "sidecar.db").is_file()
    assert sorted(p.name for p in etc.iterdir()) == ["sidecar.yaml"]
    assert stat.S_IMODE(etc.stat().st_mode) == 0o555
