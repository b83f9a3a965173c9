"""structlog set-up: JSON lines on stdout (or console rendering for people).

Everything the process logs is one JSON line on stdout, the sidecar's own events and also
what libraries log through the standard `logging` module (the OpenTelemetry exporter when
the collector is down, grpc, asyncio) and Python `warnings`: those go through the same
renderer, with `logger` naming their source. The level can change while running
(`set_level`, used by the SIGHUP reload): it is checked by the first processor, so loggers
cached before the change follow it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_threshold = logging.INFO


def _below_threshold(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Drop an event below the current level (the level can change at run time)."""
    if _LEVELS.get(method, logging.CRITICAL) < _threshold:
        raise structlog.DropEvent
    return event


def set_level(level: str) -> None:
    """Change the level of every logger, structlog and standard library alike."""
    global _threshold
    _threshold = _LEVELS.get(level, logging.INFO)
    logging.getLogger().setLevel(max(_threshold, logging.INFO))


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer()
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            _below_threshold,
            *shared,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
    _route_standard_logging(shared, renderer)
    set_level(level)


def _route_standard_logging(
    shared: list[structlog.types.Processor], renderer: structlog.types.Processor
) -> None:
    """Library log records and `warnings.warn` as the same JSON lines on stdout."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    logging.captureWarnings(True)
