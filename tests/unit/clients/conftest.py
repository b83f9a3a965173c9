"""Fixtures shared by the sidecarctl and report tests: a real gRPC server on 127.0.0.1
port 0 serving `FakeControl` (canned answers, calls recorded), one per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_sidecarctl import FakeControl, start_server


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[FakeControl, int]]:
    fake = FakeControl()
    server, port = start_server(fake)
    yield fake, port
    server.stop(grace=None)


@pytest.fixture
def fake(served: tuple[FakeControl, int], monkeypatch: pytest.MonkeyPatch) -> FakeControl:
    """This module's fake server, reset, with the CLI's environment cleared and aimed at it."""
    fake, port = served
    fake.reset()
    monkeypatch.delenv("SIDECARCTL_TOKEN", raising=False)
    monkeypatch.setenv("SIDECARCTL_TARGET", f"127.0.0.1:{port}")
    return fake
