"""`sidecar` command: serve, check-config, config-schema.

`serve` takes SIGTERM and SIGINT from its first line of code: a signal that arrives while
the process is still importing, reading its configuration or building (before the event
loop's handlers exist) is remembered, and the sidecar then stops cleanly (exit 0) instead
of dying. Start-up never prints a traceback: every failure is one line on stderr naming
the file, the field or the phase, exit 1 (the traceback follows only with
``SIDECAR_DEBUG=1``). Only the sidecar's modules are imported lazily, after the handlers.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.config import Config

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
DEBUG_ENV = "SIDECAR_DEBUG"  # "1": a start-up failure also prints its traceback
_early_signals: list[int] = []  # received before the event loop's handlers were installed


def _remember(signum: int, frame: FrameType | None) -> None:
    _early_signals.append(signum)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sidecar",
        description="gRPC model-serving sidecar for safe ML model rollouts.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="serve Predict, the Open Inference Protocol front door and Control",
        description="Serve until SIGTERM/SIGINT, then drain in-flight calls and exit 0.",
    )
    serve.add_argument("--config", "-c", required=True, help="YAML configuration file")
    serve.add_argument(
        "--safe-mode",
        action="store_true",
        help="if the state file is unreadable, move it aside and start with all traffic on "
        "the stable variant and the kill switch on (logged loudly) instead of refusing to start",
    )
    check = sub.add_parser(
        "check-config",
        help="validate a configuration file without serving",
        description="Validate FILE; print every problem with its field; exit 1 if any. "
        "Checks everything `serve` checks before listening (fields, files, certificates, "
        "state paths); whether the listen addresses can be bound is known only to `serve`.",
    )
    check.add_argument("file", help="YAML configuration file")
    sub.add_parser(
        "config-schema",
        help="print the JSON Schema of the configuration file",
        description="Print the JSON Schema (draft 2020-12) of the configuration file, for "
        "editors and CI; `check-config` also checks what a schema cannot (files, tokens, "
        "cross-field rules).",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        for sig in STOP_SIGNALS:
            signal.signal(sig, _remember)
        # SIGHUP reloads once serving (wiring.serve); until then it must not end the process.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        return _run(args)
    except Exception as exc:  # one line, never a traceback (SIDECAR_DEBUG=1 adds it)
        _fail(f"unexpected error in {args.command}", f"{type(exc).__name__}: {exc}", exc)
        return 1


def _run(args: argparse.Namespace) -> int:
    import json

    from sidecar.config import ConfigError, config_schema, env_log_format, load_config
    from sidecar.logging import configure_logging

    if args.command == "config-schema":
        print(json.dumps(config_schema(), indent=2))
        return 0
    path = args.config if args.command == "serve" else args.file
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.command == "check-config":
        print(
            f"{path}: ok (model {config.model!r}, variants {', '.join(config.variants)}, "
            f"weights {dict(config.flag.weights)}, shadow "
            f"{config.shadow.variant if config.shadow else 'off'}"
            + (
                f"; also routes {', '.join(repr(m) for m in config.models)}"
                if config.models
                else ""
            )
            + "; listen addresses are bound by serve only)"
        )
        return 0
    configure_logging(config.server.log_level, env_log_format())
    try:
        import uvloop

        return uvloop.run(_serve(config, args.safe_mode))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        import asyncio

        return asyncio.run(_serve(config, args.safe_mode))


async def _serve(config: Config, safe_mode: bool) -> int:
    import structlog

    from sidecar.wiring import StartupError, serve  # grpc servers are imported only to serve

    try:
        return await serve(config, safe_mode=safe_mode, stop_requested=lambda: bool(_early_signals))
    except StartupError as exc:
        structlog.get_logger("sidecar").error("sidecar.startup_failed", error=str(exc))
        _fail("cannot start", str(exc), exc)
        return 1


def _fail(what: str, message: str, exc: BaseException) -> None:
    """`sidecar: <what>: <message>` on one line; the traceback only with SIDECAR_DEBUG=1."""
    print(f"sidecar: {what}: {' '.join(message.split())}", file=sys.stderr)
    if os.environ.get(DEBUG_ENV) == "1":
        import traceback

        traceback.print_exception(exc, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
