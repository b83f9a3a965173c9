"""`sidecar` command: serve, check-config, config-schema."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from sidecar.config import Config, ConfigError, config_schema, env_log_format, load_config
from sidecar.logging import configure_logging


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
        description="Validate FILE; print every problem with its field; exit 1 if any.",
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
            f"{config.shadow.variant if config.shadow else 'off'})"
        )
        return 0
    configure_logging(config.server.log_level, env_log_format())
    try:
        import uvloop

        return uvloop.run(_serve(config, args.safe_mode))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(_serve(config, args.safe_mode))


async def _serve(config: Config, safe_mode: bool) -> int:
    from sidecar.wiring import StartupError, serve  # grpc servers are imported only to serve

    try:
        return await serve(config, safe_mode=safe_mode)
    except StartupError as exc:
        import structlog

        structlog.get_logger("sidecar").error("sidecar.startup_failed", error=str(exc))
        print(f"sidecar: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
