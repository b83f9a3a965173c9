"""Start real MLServer model servers for integration tests and the demo.

MLServer lives in its own virtual environment (its pins conflict with the sidecar's), so
this module never imports it, scikit-learn, tritonclient or any generated protobuf code:
it drives the MLServer environment through subprocesses and probes readiness over gRPC
with hand-encoded Open Inference Protocol messages.

Typical use::

    repo = write_model_repository(tmp / "models", [
        ModelSpec("classifier", "v1", "logreg"),
        ModelSpec("classifier", "v2", "tree"),
    ])
    with MLServerProcess(repo) as server:
        ...  # talk to server.grpc_address ("127.0.0.1:PORT")

Everything binds 127.0.0.1; each server gets its own ports, working directory and log
file, so tests can run in parallel.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Literal, Self, get_args

import grpc
import numpy as np
import numpy.typing as npt

__all__ = [
    "IRIS_FEATURES_FILE",
    "IRIS_LABELS_FILE",
    "MLSERVER_VENV_ENV",
    "MODEL_READY_METHOD",
    "MLServerError",
    "MLServerNotInstalledError",
    "MLServerProcess",
    "MLServerStartupError",
    "ModelKind",
    "ModelSpec",
    "decode_model_ready_response",
    "encode_model_ready_request",
    "free_port",
    "iris_features",
    "iris_labels",
    "mlserver_python",
    "model_ready",
    "repo_root",
    "reserve_ports",
    "write_model_repository",
]

LOOPBACK: Final = "127.0.0.1"
MLSERVER_VENV_ENV: Final = "SIDECAR_MLSERVER_VENV"
MODEL_READY_METHOD: Final = "/inference.GRPCInferenceService/ModelReady"
IRIS_FEATURES_FILE: Final = "iris_features.npy"
IRIS_LABELS_FILE: Final = "iris_labels.npy"
MODEL_SETTINGS_FILE: Final = "model-settings.json"

ModelKind = Literal["logreg", "tree", "logreg_copy", "stump"]
_MODEL_KINDS: Final[frozenset[str]] = frozenset(get_args(ModelKind))
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class MLServerError(RuntimeError):
    """Base class for errors raised by this harness."""


class MLServerNotInstalledError(MLServerError, FileNotFoundError):
    """The MLServer virtual environment is missing."""


class MLServerStartupError(MLServerError):
    """MLServer exited, or its models did not become ready in time."""


# --------------------------------------------------------------------------- ports


def reserve_ports(count: int) -> list[int]:
    """Return ``count`` distinct free TCP ports on 127.0.0.1.

    All sockets are held open until every port is chosen, so the ports differ from each
    other; they are closed before returning, so a small race with other processes remains
    (``MLServerProcess`` retries its start when a port turns out to be taken).
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def free_port() -> int:
    """Return one free TCP port on 127.0.0.1 (bind to port 0, read it, close)."""
    return reserve_ports(1)[0]


# --------------------------------------------------------------------------- venv


def repo_root() -> Path:
    """The sidecar repository root (the directory holding ``pyproject.toml``)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "sidecar").is_dir():
            return parent
    return here.parents[2]


def mlserver_python() -> Path:
    """The MLServer virtual environment's python.

    Taken from ``$SIDECAR_MLSERVER_VENV`` or, by default, ``<repo root>/.venv-mlserver``.
    Raises ``MLServerNotInstalledError`` when it (or its ``mlserver`` script) is missing.
    """
    configured = os.environ.get(MLSERVER_VENV_ENV)
    venv = Path(configured) if configured else repo_root() / ".venv-mlserver"
    # Do not resolve symlinks: a venv's python is usually a link to the base interpreter.
    python = venv.absolute() / "bin" / "python"
    source = f"${MLSERVER_VENV_ENV}" if configured else "the default location"
    if not python.exists():
        raise MLServerNotInstalledError(
            f"MLServer virtual environment not found at {venv} ({source}): no {python}. "
            "Run `make venv-mlserver`, or point $SIDECAR_MLSERVER_VENV at a virtual "
            "environment with mlserver==1.7.1 and mlserver-sklearn==1.7.1."
        )
    if not (python.parent / "mlserver").exists():
        raise MLServerNotInstalledError(
            f"{venv} has no `mlserver` script ({source}). Run `make venv-mlserver`."
        )
    return python


# --------------------------------------------------------------------------- model repository


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model version to train on iris and serve.

    Kinds:
      * ``logreg``: ``LogisticRegression(max_iter=1000)``.
      * ``tree``: ``DecisionTreeClassifier(max_depth=2)``; disagrees with ``logreg`` on a
        few iris rows.
      * ``logreg_copy``: trained exactly like ``logreg``, so it answers identically.
      * ``stump``: ``DecisionTreeClassifier(max_depth=1)``: a clearly worse model (it
        cannot tell versicolor from virginica; about 67% accurate on iris).

    ``trailers``: (name, value) pairs the model puts in its response's
    ``parameters.headers``, which MLServer sends as gRPC trailing metadata (served by a
    small subclass of the sklearn runtime written next to the model).
    """

    name: str
    version: str = "v1"
    kind: ModelKind = "logreg"
    random_state: int = 0
    trailers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for label, value in (("name", self.name), ("version", self.version)):
            if not _SAFE_NAME.fullmatch(value):
                raise ValueError(
                    f"model {label} {value!r} must match {_SAFE_NAME.pattern} "
                    "(it is used as a folder name)"
                )
        if self.kind not in _MODEL_KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; expected one of {_MODEL_KINDS}")

    @property
    def folder(self) -> str:
        """Folder name of this model version inside the repository."""
        return f"{self.name}-{self.version}"

    def settings(self) -> dict[str, object]:
        """The ``model-settings.json`` content MLServer reads."""
        parameters: dict[str, object] = {"uri": "./model.joblib", "version": self.version}
        implementation = "mlserver_sklearn.SKLearnModel"
        if self.trailers:
            implementation = f"{_TRAILING_MODULE}.TrailingSKLearnModel"
            parameters["extra"] = {"trailers": dict(self.trailers)}
        return {"name": self.name, "implementation": implementation, "parameters": parameters}


_TRAILING_MODULE: Final = "trailing_runtime"
_TRAILING_RUNTIME: Final = """
from mlserver.types import Parameters
from mlserver_sklearn import SKLearnModel


# The sklearn runtime; its answers carry the headers of its settings' extra parameters,
# which MLServer sends as gRPC trailing metadata.
class TrailingSKLearnModel(SKLearnModel):

    async def predict(self, payload):
        response = await super().predict(payload)
        extra = self.settings.parameters.extra or {}
        if response.parameters is None:
            response.parameters = Parameters()
        response.parameters.headers = dict(extra.get("trailers", {}))
        return response
"""


_TRAIN_SCRIPT: Final = """
import json, sys
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

job = json.load(sys.stdin)
X, y = load_iris(return_X_y=True)
X = np.ascontiguousarray(X, dtype=np.float64)
y = np.ascontiguousarray(y, dtype=np.int64)
root = Path(job["root"])
np.save(root / "iris_features.npy", X, allow_pickle=False)
np.save(root / "iris_labels.npy", y, allow_pickle=False)
for model in job["models"]:
    kind, seed = model["kind"], model["random_state"]
    if kind in ("logreg", "logreg_copy"):
        estimator = LogisticRegression(max_iter=1000, random_state=seed)
    elif kind == "tree":
        estimator = DecisionTreeClassifier(max_depth=2, random_state=seed)
    elif kind == "stump":
        estimator = DecisionTreeClassifier(max_depth=1, random_state=seed)
    else:
        raise SystemExit(f"unknown model kind {kind!r}")
    estimator.fit(X, y)
    joblib.dump(estimator, Path(model["dir"]) / "model.joblib")
"""


def write_model_repository(
    root: Path, specs: Iterable[ModelSpec], *, timeout: float = 300.0
) -> Path:
    """Train ``specs`` on iris inside the MLServer venv and lay out an MLServer repository.

    Writes ``root/<name>-<version>/{model.joblib,model-settings.json}`` per spec, plus
    ``root/iris_features.npy`` (150x4 float64) and ``root/iris_labels.npy`` (150 int64)
    for ``iris_features`` / ``iris_labels``. All models are trained in one subprocess.
    Returns ``root``.
    """
    spec_list = list(specs)
    if not spec_list:
        raise ValueError("at least one ModelSpec is needed")
    seen: set[tuple[str, str]] = set()
    for spec in spec_list:
        key = (spec.name, spec.version)
        if key in seen:
            raise ValueError(f"duplicate model {spec.name!r} version {spec.version!r}")
        seen.add(key)

    root = root.absolute()
    root.mkdir(parents=True, exist_ok=True)
    job: dict[str, object] = {"root": str(root), "models": []}
    models: list[dict[str, object]] = []
    for spec in spec_list:
        folder = root / spec.folder
        folder.mkdir(exist_ok=True)
        models.append({"dir": str(folder), "kind": spec.kind, "random_state": spec.random_state})
    job["models"] = models

    python = mlserver_python()
    result = subprocess.run(
        [str(python), "-c", _TRAIN_SCRIPT],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_venv_env(python, {}),
        cwd=root,
        check=False,
    )
    if result.returncode != 0:
        raise MLServerError(
            f"training models in {python} failed (exit {result.returncode}):\n"
            f"{_tail(result.stderr + result.stdout, 40)}"
        )

    # Settings last: a folder with model-settings.json always has its model.joblib.
    for spec in spec_list:
        if spec.trailers:
            (root / spec.folder / f"{_TRAILING_MODULE}.py").write_text(_TRAILING_RUNTIME)
        settings_path = root / spec.folder / MODEL_SETTINGS_FILE
        settings_path.write_text(json.dumps(spec.settings(), indent=2) + "\n")
    return root


def iris_features(repo: Path) -> npt.NDArray[np.float64]:
    """The 150x4 float64 iris feature matrix saved by ``write_model_repository``."""
    array = np.load(repo / IRIS_FEATURES_FILE, allow_pickle=False)
    return np.asarray(array, dtype=np.float64)


def iris_labels(repo: Path) -> npt.NDArray[np.int64]:
    """The 150 int64 iris class labels (0, 1, 2) saved by ``write_model_repository``."""
    array = np.load(repo / IRIS_LABELS_FILE, allow_pickle=False)
    return np.asarray(array, dtype=np.int64)


def _discover_models(repo: Path) -> list[tuple[str, str]]:
    """(name, version) of every model-settings.json under ``repo``, as MLServer finds them."""
    found: list[tuple[str, str]] = []
    for path in sorted(repo.rglob(MODEL_SETTINGS_FILE)):
        data = json.loads(path.read_text())
        name = str(data.get("name") or path.parent.name)
        parameters = data.get("parameters") or {}
        found.append((name, str(parameters.get("version") or "")))
    return found


# --------------------------------------------------------------------------- readiness probe


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _encode_string_field(field_number: int, value: str) -> bytes:
    data = value.encode("utf-8")
    if not data:
        return b""  # proto3: empty strings are not sent
    return _varint(field_number << 3 | 2) + _varint(len(data)) + data


def encode_model_ready_request(name: str, version: str = "") -> bytes:
    """Serialise ``inference.ModelReadyRequest{name=1, version=2}`` without generated code."""
    return _encode_string_field(1, name) + _encode_string_field(2, version)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def decode_model_ready_response(data: bytes) -> bool:
    """Parse ``inference.ModelReadyResponse{bool ready = 1}``; unknown fields are skipped."""
    ready = False
    pos = 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        field, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, pos = _read_varint(data, pos)
            if field == 1:
                ready = value != 0
        elif wire_type == 2:
            length, pos = _read_varint(data, pos)
            pos += length
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire_type} in ModelReadyResponse")
    if pos != len(data):
        raise ValueError("truncated ModelReadyResponse")
    return ready


def _identity(data: bytes) -> bytes:
    return data


def _probe_ready(channel: grpc.Channel, name: str, version: str, timeout: float) -> bool:
    call = channel.unary_unary(
        MODEL_READY_METHOD, request_serializer=_identity, response_deserializer=_identity
    )
    response = call(encode_model_ready_request(name, version), timeout=timeout)
    if not isinstance(response, bytes):
        raise TypeError(f"unexpected ModelReady response type {type(response)!r}")
    return decode_model_ready_response(response)


def model_ready(address: str, name: str, version: str = "", *, timeout: float = 2.0) -> bool:
    """One Open Inference Protocol ``ModelReady`` call; False on any gRPC error.

    (MLServer answers UNKNOWN, not NOT_FOUND, for a model it does not know.)
    """
    with grpc.insecure_channel(address) as channel:
        try:
            return _probe_ready(channel, name, version, timeout)
        except grpc.RpcError:
            return False


# --------------------------------------------------------------------------- process

_ADDRESS_IN_USE = re.compile(
    r"address already in use|errno 98|eaddrinuse|failed to bind to address", re.IGNORECASE
)
_live: set[MLServerProcess] = set()


def _venv_env(python: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """Environment for a subprocess of the MLServer venv, isolated from ours."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
        and not key.startswith("MLSERVER_")
    }
    bin_dir = str(python.parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["VIRTUAL_ENV"] = str(python.parent.parent)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


class MLServerProcess:
    """A real ``mlserver start <repo>`` subprocess on 127.0.0.1, with fresh ports.

    Use as a context manager or call ``start()`` / ``stop()``. ``start()`` returns once
    every model (all ``model-settings.json`` under the repository, or ``models``) answers
    ``ModelReady`` = true over gRPC, and raises ``MLServerStartupError`` (with the log
    tail) if MLServer exits or the timeout passes. The process runs in its own session
    (process group) so ``stop()``/``kill()`` leave no stray workers behind.
    """

    def __init__(
        self,
        model_repository: Path,
        *,
        models: Sequence[tuple[str, str]] | None = None,
        extra_env: Mapping[str, str] | None = None,
        startup_timeout: float = 60.0,
        poll_interval: float = 0.2,
        run_dir: Path | None = None,
        start_attempts: int = 3,
    ) -> None:
        """Configure (but do not start) a server.

        ``models``: (name, version) pairs to wait for; default: discovered from the repo.
        ``extra_env``: added last to MLServer's environment (e.g. ``MLSERVER_TRACING_SERVER``).
        ``run_dir``: working directory holding the log (default: a fresh temp dir).
        ``start_attempts``: retries with new ports when a port was taken meanwhile.
        """
        self.model_repository = model_repository.absolute()
        if not self.model_repository.is_dir():
            raise FileNotFoundError(f"model repository {self.model_repository} does not exist")
        self.models: list[tuple[str, str]] = (
            list(models) if models is not None else _discover_models(self.model_repository)
        )
        if not self.models:
            raise ValueError(f"no {MODEL_SETTINGS_FILE} found under {self.model_repository}")
        self.extra_env: dict[str, str] = dict(extra_env or {})
        self.startup_timeout = startup_timeout
        self.poll_interval = poll_interval
        self.start_attempts = max(1, start_attempts)
        self.run_dir = (
            run_dir.absolute()
            if run_dir is not None
            else Path(tempfile.mkdtemp(prefix="mlserver-"))
        )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_path: Path = self.run_dir / "mlserver.log"
        self.http_port = self.grpc_port = self.metrics_port = 0
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- addresses

    @property
    def grpc_address(self) -> str:
        """``127.0.0.1:PORT`` of the Open Inference Protocol gRPC endpoint."""
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def http_address(self) -> str:
        """``127.0.0.1:PORT`` of the REST endpoint."""
        return f"{LOOPBACK}:{self.http_port}"

    @property
    def metrics_address(self) -> str:
        """``127.0.0.1:PORT`` of the Prometheus metrics endpoint."""
        return f"{LOOPBACK}:{self.metrics_port}"

    @property
    def pid(self) -> int | None:
        """PID of the MLServer process (also its process group id), if started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """Exit status once the process has ended (negative: killed by that signal)."""
        return self._proc.poll() if self._proc is not None else None

    def is_running(self) -> bool:
        """True while the MLServer process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of MLServer's combined stdout/stderr log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return _tail(text, lines)

    # -- lifecycle

    def start(self) -> Self:
        """Start MLServer and wait until every model is ready; returns ``self``."""
        if self._proc is not None:
            raise MLServerError("this MLServerProcess was already started")
        python = mlserver_python()
        began = time.monotonic()
        for attempt in range(1, self.start_attempts + 1):
            self._spawn(python, attempt)
            try:
                self._wait_ready()
            except MLServerStartupError:
                port_clash = bool(_ADDRESS_IN_USE.search(self.log_tail(200)))
                self._terminate(grace=2.0)
                if port_clash and attempt < self.start_attempts:
                    self._proc = None
                    continue
                raise
            self.startup_seconds = time.monotonic() - began
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def restart(self) -> Self:
        """Start again on the same ports after ``stop()`` / ``kill()`` (a model server
        that comes back where clients expect it); returns once every model is ready."""
        if self._proc is None or self.is_running():
            raise MLServerError("restart() needs a server that was started and has stopped")
        self._spawn(mlserver_python(), 1, same_ports=True)
        try:
            self._wait_ready()
        except MLServerStartupError:
            self._terminate(grace=2.0)
            raise
        return self

    def _spawn(self, python: Path, attempt: int, *, same_ports: bool = False) -> None:
        if not same_ports:
            self.http_port, self.grpc_port, self.metrics_port = reserve_ports(3)
        env = _venv_env(
            python,
            {
                "MLSERVER_HOST": LOOPBACK,
                "MLSERVER_HTTP_PORT": str(self.http_port),
                "MLSERVER_GRPC_PORT": str(self.grpc_port),
                "MLSERVER_METRICS_PORT": str(self.metrics_port),
                "MLSERVER_PARALLEL_WORKERS": "0",
                "MLSERVER_METRICS_DIR": str(self.run_dir / ".metrics"),
                "MLSERVER_ENVIRONMENTS_DIR": str(self.run_dir / ".envs"),
                **self.extra_env,
            },
        )
        if self._log is not None:
            self._log.close()
        self._log = self.log_path.open("ab")
        self._log.write(
            f"--- harness: attempt {attempt}: mlserver start {self.model_repository} "
            f"(grpc {self.grpc_port}, http {self.http_port}, "
            f"metrics {self.metrics_port})\n".encode()
        )
        self._log.flush()
        self._proc = subprocess.Popen(
            [str(python.parent / "mlserver"), "start", str(self.model_repository)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.run_dir,  # MLServer reads ./.env and writes ./.metrics, ./.envs
            start_new_session=True,
        )
        _live.add(self)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        pending = list(self.models)
        last_error = "no answer yet"
        with grpc.insecure_channel(self.grpc_address) as channel:
            while pending:
                code = self.returncode
                if code is not None:
                    raise MLServerStartupError(
                        f"MLServer exited with code {code} before its models were ready "
                        f"(log {self.log_path}):\n{self.log_tail()}"
                    )
                if time.monotonic() >= deadline:
                    raise MLServerStartupError(
                        f"MLServer models {pending} not ready after {self.startup_timeout:g} s "
                        f"on {self.grpc_address} (last: {last_error}; log {self.log_path}):\n"
                        f"{self.log_tail()}"
                    )
                name, version = pending[0]
                try:
                    if _probe_ready(channel, name, version, timeout=1.0):
                        pending.pop(0)
                        continue
                    last_error = f"{name} {version}: ready=false"
                except grpc.RpcError as exc:
                    last_error = f"{name} {version}: {exc.code()}"
                time.sleep(self.poll_interval)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process group, SIGKILL after ``timeout`` s; returns the exit status."""
        return self._terminate(grace=timeout)

    def kill(self) -> int | None:
        """SIGKILL the whole process group at once (simulates a dead upstream)."""
        return self._terminate(grace=None)

    def _terminate(self, grace: float | None) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                if grace is None:
                    self._signal_group(signal.SIGKILL)
                else:
                    self._signal_group(signal.SIGTERM)
                    try:
                        proc.wait(timeout=grace)
                    except subprocess.TimeoutExpired:
                        self._signal_group(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10.0)
            # Sweep any worker that outlived the main process.
            self._signal_group(signal.SIGKILL)
            return proc.poll()
        finally:
            _live.discard(self)
            if self._log is not None:
                self._log.close()
                self._log = None

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def __enter__(self) -> Self:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else f"exit={self.returncode}"
        return (
            f"<MLServerProcess {self.grpc_address} pid={self.pid} {state} "
            f"repo={self.model_repository} log={self.log_path}>"
        )


@atexit.register
def _kill_leftovers() -> None:
    """Never leave MLServer running after the interpreter exits."""
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.kill()


if __name__ == "__main__":  # pragma: no cover - manual smoke run
    with tempfile.TemporaryDirectory(prefix="mlserver-repo-") as tmp:
        demo_repo = write_model_repository(
            Path(tmp),
            [ModelSpec("classifier", "v1", "logreg"), ModelSpec("classifier", "v2", "tree")],
        )
        with MLServerProcess(demo_repo) as demo:
            print(f"ready in {demo.startup_seconds:.1f} s at {demo.grpc_address}", file=sys.stderr)
