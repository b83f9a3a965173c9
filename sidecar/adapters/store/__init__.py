"""State stores with their audit log: SQLite (embedded default) and in-memory."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def take_page(sized: Iterable[tuple[int, T]], limit: int, max_bytes: int) -> list[T]:
    """The first items of `(size, item)` pairs: at most `limit` of them, and no more than
    `max_bytes` in total, except that the first one is always taken (so paging advances)."""
    page: list[T] = []
    total = 0
    for size, item in sized:
        if len(page) >= limit or (page and total + size > max_bytes):
            break
        page.append(item)
        total += size
    return page
