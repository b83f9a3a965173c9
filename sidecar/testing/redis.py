"""Start a real Debian `redis-server` for fleet tests and benchmarks.

Every server binds 127.0.0.1 on a free port, in its own working directory, so tests can
run in parallel. ``restart()`` keeps the port (members reconnect to the same address);
``kill()`` is SIGKILL (a crash), ``stop()`` is SHUTDOWN NOSAVE. Persistence is off by
default (fast throwaway instances); ``appendonly=True`` turns on AOF with ``fsync always``
where durability is the point, and ``restart(empty=True)`` deletes the data files first
(a Redis that comes back without its data).

Typical use::

    with RedisServer() as redis_server:
        url = redis_server.url  # "redis://127.0.0.1:PORT/0"
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Final, Self

__all__ = ["RedisNotInstalledError", "RedisServer", "redis_server_binary"]

LOOPBACK: Final = "127.0.0.1"


class RedisNotInstalledError(RuntimeError):
    """`redis-server` is not on PATH (Debian package `redis-server`)."""


def redis_server_binary() -> str:
    """The path of `redis-server`, or RedisNotInstalledError naming the Debian package."""
    found = shutil.which("redis-server")
    if found is None:
        raise RedisNotInstalledError(
            "redis-server not found on PATH: install the Debian package redis-server"
        )
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One real redis-server process on 127.0.0.1 (a context manager)."""

    def __init__(
        self,
        *,
        port: int = 0,
        password: str | None = None,
        appendonly: bool = False,
        work_dir: Path | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self.port = port or _free_port()
        self.password = password
        self.appendonly = appendonly
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix="redis-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _args(self) -> list[str]:
        args = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            LOOPBACK,
            "--dir",
            str(self.work_dir),
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self.work_dir / "redis.log"),
        ]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        if self.password is not None:
            args += ["--requirepass", self.password]
        return args

    def start(self) -> Self:
        if self.running:
            return self
        self._proc = subprocess.Popen(
            self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                log = self.work_dir / "redis.log"
                tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}: {tail}")
            if self._ping():
                return self
            time.sleep(0.01)
        self.kill()
        raise RuntimeError(f"redis-server on {self.address} not ready in {self.startup_timeout} s")

    def _ping(self) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=0.5) as sock:
                if self.password is not None:
                    sock.sendall(f"AUTH {self.password}\r\n".encode())
                    if not sock.recv(64).startswith(b"+OK"):
                        return False
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL (a crash: nothing is flushed beyond what AOF already wrote)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._proc = None

    def stop(self) -> None:
        """Terminate (SIGTERM: redis-server shuts down cleanly)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._proc = None

    def restart(self, *, empty: bool = False) -> Self:
        """Stop and start again on the same port; ``empty`` deletes the data files first."""
        self.stop()
        if empty:
            for name in ("appendonlydir", "appendonly.aof", "dump.rdb"):
                path = self.work_dir / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()
