"""Run `sidecarctl` as an operator would (a subprocess of this interpreter) against a
sidecar's Control address; for integration tests and benchmarks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any


def sidecarctl(
    target: str, *args: str, token: str | None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """`sidecarctl --target TARGET ARGS...` with `token` as `SIDECARCTL_TOKEN` (none when
    None, whatever the environment holds); never raises on a non-zero exit."""
    env = {k: v for k, v in os.environ.items() if k != "SIDECARCTL_TOKEN"}
    if token is not None:
        env["SIDECARCTL_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "clients.sidecarctl", "--target", target, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    """The command's stdout; an AssertionError with its exit code and output otherwise."""
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return done.stdout


def status_json(target: str, token: str) -> dict[str, Any]:
    """`sidecarctl status -o json`, parsed."""
    data: dict[str, Any] = json.loads(ok(sidecarctl(target, "status", "-o", "json", token=token)))
    return data
