"""Run the real `sidecar serve` as a subprocess (integration tests, demo, benchmarks).

Loads no generated code, so it is safe next to tritonclient. Ports may be 0: the bound
ports are read back from the `sidecar.started` JSON log event.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml


class SidecarProcess:
    """`with SidecarProcess(config_mapping) as sc: sc.predict_address ...`"""

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        run_dir: Path | None = None,
        startup_timeout: float = 30.0,
        extra_env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.run_dir = run_dir or Path(tempfile.mkdtemp(prefix="sidecar-"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.run_dir / "sidecar.yaml"
        raw = dict(config)
        server = dict(raw.get("server") or {})
        if server.get("log_level") in ("warning", "error"):
            # The bound ports are read from the info-level `sidecar.started` event.
            server["log_level"] = "info"
        raw["server"] = server
        self.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        self.startup_timeout = startup_timeout
        self.extra_env = dict(extra_env or {})
        self.extra_args = list(extra_args)
        self.lines: deque[str] = deque(maxlen=5000)
        self.events: deque[dict[str, Any]] = deque(maxlen=5000)
        self.predict_address = ""
        self.control_address = ""
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._started = threading.Event()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.append(line.rstrip("\n"))
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            self.events.append(event)
            if event.get("event") == "sidecar.started":
                self.predict_address = str(event["predict"])
                self.control_address = str(event["control"])
                self._started.set()

    def start(self) -> SidecarProcess:
        env = {**os.environ, "SIDECAR_LOG_FORMAT": "json", **self.extra_env}
        command = [sys.executable, "-m", "sidecar.cli", "serve", "--config", str(self.config_path)]
        self._proc = subprocess.Popen(
            [*command, *self.extra_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=self.run_dir,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._started.wait(0.05):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                tail = "\n".join(list(self.lines)[-40:])
                raise RuntimeError(f"sidecar did not start (exit {self._proc.poll()}):\n{tail}")
        return self

    def wait_for_event(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in list(self.events):
                if event.get("event") == name:
                    return event
            time.sleep(0.05)
        raise TimeoutError(f"no {name!r} event within {timeout}s")

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait for the graceful exit; SIGKILL after `timeout`. Returns exit code."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._reader is not None:
            self._reader.join(2.0)
        return self._proc.returncode

    def kill(self) -> int | None:
        """SIGKILL the whole process group (a crash, for tests)."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(5)
        return self._proc.returncode

    def __enter__(self) -> SidecarProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
