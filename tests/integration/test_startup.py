"""`sidecar serve` and `check-config` as an operator runs them: every start-up failure is
one line naming the file, field or phase (exit 1, no traceback), and SIGTERM is handled
from the first moment (exit 0 with the stop events logged).

No model server is needed: the variant's address is never reachable, which start-up
tolerates (readiness reports NOT_SERVING)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

TOKEN_SHA256 = "ca5a8c47549ab82ffc5ec4a1c6ccbc49aa442a359d2a37a5e58c55ba04a0e2e0"
DEEP = "[" * 200_000 + "]" * 200_000
TIMEOUT = 30.0


def config(**sections: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "model": "classifier",
        "listen": {"predict": "127.0.0.1:0", "control": "127.0.0.1:0"},
        "variants": {"stable": {"address": "127.0.0.1:9", "model_name": "m"}},
        "flag": {"key": "k", "stable": "stable", "weights": {"stable": 10000}},
        "control": {"auth": {"tokens": [{"name": "a", "role": "operator", "token_sha256": TOKEN_SHA256}]}},
        "state": {"path": "var/sidecar.db", "experiment_path": "var/experiment.json"},
    }  # fmt: skip
    raw.update(sections)
    return raw


def write(folder: Path, raw: dict[str, Any]) -> Path:
    path = folder / "sidecar.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def sidecar(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SIDECAR_LOG_FORMAT": "json"}
    env.pop("SIDECAR_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", *args],
        capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd, env=env, check=False,
    )  # fmt: skip


def one_line_failure(done: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit 1, no traceback anywhere, one line on stderr holding every fragment."""
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def events(stdout: str) -> list[dict[str, Any]]:
    out = []
    for line in stdout.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            out.append(event)
    return out


class Serving:
    """`sidecar serve` in the background, its stdout read line by line."""

    def __init__(self, folder: Path, *args: str) -> None:
        env = {**os.environ, "SIDECAR_LOG_FORMAT": "json"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", "serve", "--config", str(folder / "sidecar.yaml"), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=folder, env=env,
        )  # fmt: skip

    def until(self, event: str) -> list[dict[str, Any]]:
        """Read stdout up to (and including) the line with `event`."""
        assert self.proc.stdout is not None
        seen = []
        for line in self.proc.stdout:
            seen.extend(events(line))
            if seen and seen[-1].get("event") == event:
                return seen
        raise AssertionError(f"exited ({self.proc.wait()}) before {event}: {seen}")

    def finish(self) -> tuple[int, list[dict[str, Any]], str]:
        out, err = self.proc.communicate(timeout=TIMEOUT)
        return self.proc.returncode, events(out), err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def test_a_deep_checkpoint_is_set_aside_also_in_safe_mode(folder: Path) -> None:
    """A 200,000-deep experiment checkpoint: serve starts (with and without --safe-mode),
    logs one error naming the file, and moves the file aside; SIGTERM exits 0."""
    write(folder, config())
    for args in ((), ("--safe-mode",)):
        (folder / "var").mkdir(exist_ok=True)
        (folder / "var" / "experiment.json").write_text(DEEP)
        serving = Serving(folder, *args)
        try:
            seen = serving.until("sidecar.started")
            serving.proc.send_signal(signal.SIGTERM)
            code, rest, err = serving.finish()
        finally:
            serving.kill()
        assert code == 0 and "Traceback" not in err
        (error,) = [e for e in seen if e["event"] == "experiment.checkpoint_unreadable"]
        assert "experiment.json: not valid JSON: nested too deeply" in error["error"]
        assert ".unreadable-" in error["moved_to"]
        assert [e["event"] for e in rest][-2:] == ["sidecar.stopping", "sidecar.stopped"]


def test_a_deep_state_file_is_one_line(folder: Path) -> None:
    """Whatever the state store raises on a 200,000-deep state file becomes one line
    naming the state (the store's own message, or the start-up phase)."""
    write(folder, config())
    (folder / "var").mkdir()
    (folder / "var" / "state.json").write_text(DEEP)
    for args in ((), ("--safe-mode",)):
        done = sidecar("serve", "--config", "sidecar.yaml", *args, cwd=folder)
        if done.returncode == 0:  # pragma: no cover - a store that quarantines it
            continue
        one_line_failure(done, "sidecar: cannot start: ", "state")


def test_a_state_folder_that_cannot_be_made_is_one_line(folder: Path) -> None:
    """A state path check-config cannot see as unwritable (/proc accepts the access check,
    refuses the mkdir): serve fails in one line naming the phase and the file."""
    write(folder, config(state={"path": "/proc/sidecar-test/state.json"}))
    done = sidecar("serve", "--config", "sidecar.yaml", cwd=folder)
    one_line_failure(done, "sidecar: cannot start: loading the state", "/proc/sidecar-test")


def test_a_state_folder_that_is_a_file_is_one_line(folder: Path) -> None:
    """A state folder that is a file (how root meets a read-only folder): serve refuses it
    as check-config does, one line naming the field (more cases: unit tests)."""
    (folder / "blocker").write_text("a file")
    write(folder, config(state={"path": "blocker/state.json"}))
    done = sidecar("serve", "--config", "sidecar.yaml", cwd=folder)
    one_line_failure(done, "state.path: ", "blocker is not a folder")


def test_a_config_that_is_a_folder_is_one_line(folder: Path) -> None:
    """`serve --config FOLDER`: one line naming the file."""
    (folder / "conf").mkdir()
    done = sidecar("serve", "--config", "conf", cwd=folder)
    one_line_failure(done, "conf", "cannot read: Is a directory")


def test_an_unreadable_reference_file_is_one_line(folder: Path) -> None:
    """A drift reference that is not UTF-8 text: serve says so in one line naming the field
    and the file (as check-config does)."""
    (folder / "ref.json").write_bytes(b"\xff\xfe\x00junk")
    write(folder, config(drift={"reference_file": "ref.json"}))
    done = sidecar("serve", "--config", "sidecar.yaml", cwd=folder)
    one_line_failure(done, "drift.reference_file: ", "ref.json", "not UTF-8")


def test_max_message_bytes_and_duplicates_are_one_line(folder: Path) -> None:
    """The issue's cases: max_message_bytes 1e12 and a duplicate key, refused by serve in
    one line naming the field (as check-config does)."""
    write(folder, config(server={"max_message_bytes": 10**12}))
    one_line_failure(
        sidecar("serve", "--config", "sidecar.yaml", cwd=folder), "server.max_message_bytes: "
    )
    path = write(folder, config())
    path.write_text(path.read_text() + "model: again\n")
    one_line_failure(
        sidecar("serve", "--config", "sidecar.yaml", cwd=folder), "duplicate key 'model'"
    )


def test_an_address_in_use_is_one_line(folder: Path) -> None:
    """A listen address another process holds: one line naming the field and address
    (gRPC's own error log stays out of it)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        address = f"127.0.0.1:{holder.getsockname()[1]}"
        for field in ("predict", "metrics"):  # bound by build / by start
            listen = {"predict": "127.0.0.1:0", "control": "127.0.0.1:0", field: address}
            write(folder, config(listen=listen))
            done = sidecar("serve", "--config", "sidecar.yaml", cwd=folder)
            one_line_failure(done, f"listen.{field}: cannot listen on {address}", "in use")


def test_debug_env_adds_the_traceback(folder: Path) -> None:
    """SIDECAR_DEBUG=1 is the way to see the traceback behind a one-line failure."""
    write(folder, config(state={"path": "/proc/sidecar-test/state.json"}))
    env = {**os.environ, "SIDECAR_DEBUG": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "serve", "--config", "sidecar.yaml"],
        capture_output=True, text=True, timeout=TIMEOUT, cwd=folder, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith("sidecar: cannot start: loading the state")
    assert "Traceback" in done.stderr


def test_sigterm_as_started_is_logged_drains_and_exits_0(folder: Path) -> None:
    """SIGTERM the moment `sidecar.started` is read (twice): exit 0, the stop events
    logged (the handlers were installed before the servers started)."""
    write(folder, config())
    for _ in range(2):
        serving = Serving(folder)
        try:
            serving.until("sidecar.started")
            serving.proc.send_signal(signal.SIGTERM)
            code, rest, err = serving.finish()
        finally:
            serving.kill()
        assert code == 0, err
        assert [e["event"] for e in rest][-2:] == ["sidecar.stopping", "sidecar.stopped"]


def catches_sigterm(pid: int) -> bool:
    """Whether process `pid` has a handler for SIGTERM (/proc/<pid>/status SigCgt)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) >> (signal.SIGTERM - 1) & 1)


def test_sigterm_right_after_spawn_exits_0(folder: Path) -> None:
    """SIGTERM as soon as the new process catches it (its first statement, before any of
    the sidecar is imported): nothing is built, exit 0, the stop events logged."""
    write(folder, config())
    serving = Serving(folder)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not catches_sigterm(serving.proc.pid):
            assert serving.proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.001)
        serving.proc.send_signal(signal.SIGTERM)
        code, seen, err = serving.finish()
    finally:
        serving.kill()
    assert code == 0, err
    assert [e["event"] for e in seen] == ["sidecar.stopping", "sidecar.stopped"]
    assert all(e.get("before_start") for e in seen)
    assert not (folder / "var").exists()  # nothing was built
