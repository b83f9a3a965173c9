"""Request ids: 32 hex digits of fresh OS randomness each, read in batches."""

from __future__ import annotations

import re

from sidecar.app.dataplane import _RandomHex, new_request_id


def test_ids_are_32_hex_digits_and_never_repeat_across_batches() -> None:
    ids = _RandomHex(batch=4)
    drawn = [ids() for _ in range(1000)]  # 250 refills
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in drawn)
    assert len(set(drawn)) == len(drawn)
    assert re.fullmatch(r"[0-9a-f]{32}", new_request_id())


def test_a_forked_child_drops_the_buffer() -> None:
    ids = _RandomHex(batch=8)
    first = ids()
    ids._drop()  # what os.register_at_fork runs in a child
    assert ids._hex == "" and ids() != first
