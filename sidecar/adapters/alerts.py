"""Alerts: a structured log event always, and an HTTP POST of a JSON body to a webhook
when configured (timeout, retries with backoff; in the background, never blocking or
failing the caller)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Mapping
from typing import Any

import structlog

log = structlog.get_logger("sidecar.alert")
_RESERVED = frozenset({"level", "event", "timestamp", "logger", "alert"})


class Alerts:
    def __init__(self, webhook_url: str = "", timeout: float = 2.0, retries: int = 3) -> None:
        self.webhook_url = webhook_url
        self.timeout = timeout
        self.retries = retries
        self.sent = 0
        self.failed = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def alert(self, event: str, fields: Mapping[str, Any]) -> None:
        body = {"event": event, "unix_time": time.time(), "source": "rollout-sidecar", **fields}
        # Keys the log pipeline sets itself (level, event, timestamp, logger) are kept by
        # prefixing them; the webhook body carries the fields unchanged.
        logged = {(f"alert_{k}" if k in _RESERVED else k): v for k, v in fields.items()}
        log.warning("alert", alert=event, **logged)
        if not self.webhook_url:
            return
        try:
            task = asyncio.get_running_loop().create_task(self._post(body))
        except RuntimeError:  # no loop (called from a thread): log only
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, body: Mapping[str, Any]) -> None:
        data = json.dumps(body, default=str).encode()
        for attempt in range(self.retries + 1):
            try:
                await asyncio.to_thread(self._send, data)
                self.sent += 1
                return
            except Exception as exc:
                if attempt == self.retries:
                    self.failed += 1
                    log.error("alert.webhook_failed", url=self.webhook_url, error=str(exc))
                    return
                await asyncio.sleep(min(0.2 * 2**attempt, 5.0))

    def _send(self, data: bytes) -> None:
        request = urllib.request.Request(
            self.webhook_url,
            data=data,
            headers={"Content-Type": "application/json", "User-Agent": "rollout-sidecar"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            if response.status >= 300:
                raise RuntimeError(f"webhook answered HTTP {response.status}")

    async def drain(self, timeout: float = 2.0) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)


class ModelAlerts:
    """One routed model's alerts: every alert of the shared `Alerts` with `model` (the
    routed model's name) among its fields, so a sidecar routing several models says which
    one an alert is about."""

    def __init__(self, alerts: Alerts, model: str) -> None:
        self.alerts = alerts
        self.model = model

    def alert(self, event: str, fields: Mapping[str, Any]) -> None:
        self.alerts.alert(event, {"model": self.model, **fields})
