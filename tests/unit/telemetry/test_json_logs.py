"""Everything the process logs is a JSON line on stdout: the sidecar's events, library
records through the standard `logging` module (the OTLP exporter's complaints when the
collector is down), and Python warnings; the level changes at run time (SIGHUP reload)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = textwrap.dedent(
    """
    import logging, warnings
    import structlog
    from sidecar.logging import configure_logging, set_level

    configure_logging("info", "json")
    log = structlog.get_logger("sidecar")
    log.info("sidecar.event", n=1)
    logging.getLogger("opentelemetry.exporter.otlp.proto.grpc.exporter").warning(
        "Transient error %s encountered while exporting traces to %s, retrying in %ss.",
        "StatusCode.UNAVAILABLE", "127.0.0.1:4317", 1,
    )
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("grpc").exception("library failure")
    warnings.warn("something deprecated", DeprecationWarning, stacklevel=1)
    log.debug("hidden.debug")
    set_level("warning")
    log.info("hidden.info")
    logging.getLogger("opentelemetry").info("hidden library info")
    log.warning("shown.warning")
    set_level("debug")
    log.debug("shown.debug")
    """
)


def test_library_records_and_warnings_are_json_lines() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "always"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, env=env,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    events = [json.loads(line) for line in lines]  # every line is JSON
    assert all(isinstance(e, dict) and "timestamp" in e and "level" in e for e in events)
    by_event = {e["event"]: e for e in events}
    exporter = next(e for e in events if e["event"].startswith("Transient error"))
    assert exporter["logger"] == "opentelemetry.exporter.otlp.proto.grpc.exporter"
    assert exporter["level"] == "warning" and "127.0.0.1:4317" in exporter["event"]
    failure = by_event["library failure"]
    assert failure["level"] == "error" and "ValueError: boom" in failure["exception"]
    warning = next(e for e in events if "something deprecated" in e["event"])
    assert warning["logger"] == "py.warnings"
    names = [e["event"] for e in events]
    assert "sidecar.event" in names and "shown.warning" in names and "shown.debug" in names
    assert not {"hidden.debug", "hidden.info", "hidden library info"} & set(names)
