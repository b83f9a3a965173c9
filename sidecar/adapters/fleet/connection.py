"""The one place that opens a Redis connection from `state.redis`."""

from __future__ import annotations

import asyncio
import ssl

import redis
import redis.asyncio

from sidecar.config import RedisConfig


def _tls_kwargs(config: RedisConfig) -> dict[str, object]:
    if not config.url.startswith("rediss://"):
        return {}
    out: dict[str, object] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if config.tls_ca_file:
        out["ssl_ca_certs"] = config.tls_ca_file
    return out


def async_client(config: RedisConfig) -> redis.asyncio.Redis:
    """An asyncio client (a connection pool); no I/O until the first command."""
    return redis.asyncio.Redis.from_url(
        config.url,
        password=config.password(),
        socket_connect_timeout=config.connect_timeout,
        socket_timeout=config.connect_timeout,
        health_check_interval=30,
        **_tls_kwargs(config),  # type: ignore[arg-type]
    )


def sync_client(config: RedisConfig) -> redis.Redis:
    """A blocking client, for start-up checks and the store's worker thread."""
    return redis.Redis.from_url(
        config.url,
        password=config.password(),
        socket_connect_timeout=config.connect_timeout,
        socket_timeout=config.connect_timeout,
        **_tls_kwargs(config),
    )


def raise_if_cancelled() -> None:
    """Re-raise a cancellation of the current task that a Redis call consumed.

    redis-py's asyncio client can swallow the CancelledError of a command interrupted
    mid-read (it surfaces as a connection error, or not at all), so a loop that retries
    on errors would run on after `Task.cancel()` and a graceful stop would wait for it
    for ever. Every fleet loop calls this after each Redis step."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
