"""The data-plane drift monitor with real Open Inference Protocol messages: sampling,
bounded queue, decoding off the request path, errors counted not raised; and
`decode_inputs` (typed and raw contents)."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from sidecar._proto.inference import grpc_predict_v2_pb2 as oip
from sidecar.app.drift import DriftMonitor
from sidecar.core.experiment.drift import DriftSettings, DriftTracker
from sidecar.core.tensors import decode_inputs, decode_outputs, fill_input

Monitor = DriftMonitor[Any, Any]
SETTINGS = DriftSettings(reference_size=200, window_size=200, reservoir_size=100, min_current=50)


def iris_request(row: np.ndarray) -> oip.ModelInferRequest:
    req = oip.ModelInferRequest(model_name="iris")
    fill_input(req.inputs.add(), "input-0", row.reshape(1, 4).astype(np.float32))
    return req


def iris_response(label: int) -> oip.ModelInferResponse:
    resp = oip.ModelInferResponse(model_name="iris")
    resp.outputs.add(name="predict", datatype="INT64", shape=[1]).contents.int64_contents.append(
        label
    )
    return resp


def monitor(settings: DriftSettings = SETTINGS, **kwargs: Any) -> Monitor:
    tracker = DriftTracker(settings)
    tracker.set_reference_variant("stable")
    return DriftMonitor(tracker, decode_inputs, decode_outputs, **kwargs)


def traffic(m: Monitor, n: int, seed: int = 0, variant: str = "stable", shift: float = 0.0) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(n):
        row = rng.normal([5.8, 3.0, 3.8, 1.2], [0.8, 0.4, 1.8, 0.8])
        row[2] += shift
        m.offer(iris_request(row), iris_response(int(rng.integers(0, 3))), variant)


# ---- decode_inputs ---------------------------------------------------------------------


def test_decode_inputs_typed_raw_fp16_and_bytes() -> None:
    """Typed contents and raw_input_contents (FP16 included) decode with their shapes;
    BYTES become object arrays; a bad tensor becomes a non-numeric marker, never raises."""
    typed = oip.ModelInferRequest()
    fill_input(typed.inputs.add(), "x", np.arange(6, dtype=np.float64).reshape(2, 3))
    fill_input(typed.inputs.add(), "n", np.array([1, 2], dtype=np.int32))
    fill_input(typed.inputs.add(), "s", np.array([b"ab", b"c"], dtype=object))
    got = decode_inputs(typed)
    assert got["x"].shape == (2, 3) and got["x"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert got["n"].dtype == np.int32 and got["n"].tolist() == [1, 2]
    assert got["s"].dtype == object and got["s"].tolist() == [b"ab", b"c"]

    raw = oip.ModelInferRequest()
    raw.inputs.add(name="h", datatype="FP16", shape=[2, 2])
    raw.inputs.add(name="f", datatype="FP32", shape=[1, 3])
    raw.inputs.add(name="b", datatype="BYTES", shape=[2])
    raw.inputs.add(name="bad", datatype="FP32", shape=[1])
    raw.raw_input_contents.append(np.array([1.0, 2.0, 3.0, 4.5], "<f2").tobytes())
    raw.raw_input_contents.append(np.array([0.1, 0.2, 0.7], "<f4").tobytes())
    raw.raw_input_contents.append(struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c")
    raw.raw_input_contents.append(b"abc")  # not a multiple of 4 bytes
    got = decode_inputs(raw)
    assert got["h"].dtype == np.float16 and got["h"].tolist() == [[1.0, 2.0], [3.0, 4.5]]
    np.testing.assert_allclose(got["f"], [[0.1, 0.2, 0.7]], rtol=1e-6)
    assert got["b"].tolist() == [b"ab", b"c"]
    assert got["bad"].dtype == object and "undecodable" in str(got["bad"][0])

    odd = oip.ModelInferRequest()
    odd.inputs.add(name="u", datatype="NOPE", shape=[1])
    odd.inputs.add(name="missing", datatype="FP32", shape=[1])
    odd.raw_input_contents.append(b"\x00\x00\x80\x3f")  # only one raw entry for two inputs
    got = decode_inputs(odd)
    assert "unknown datatype" in str(got["u"][0]) and "undecodable" in str(got["missing"][0])


# ---- the monitor -----------------------------------------------------------------------


def test_offer_then_drain_feeds_the_tracker_with_real_messages() -> None:
    """Offered requests wait in the queue (nothing decoded on the request path); drain
    decodes them into input features input-0[j] and the variant's prediction series."""
    m = monitor()
    traffic(m, 300)
    assert (m.sampled, m.pending, m.dropped) == (300, 300, 0)
    assert m.tracker.series_count() == 0  # nothing decoded yet
    assert m.drain(limit=120) == 120 and m.pending == 180
    assert m.drain() == 180 and m.pending == 0
    report = m.report()
    by = {f.series: f for f in report.drift.features}
    assert set(by) == {*(f"input:input-0[{j}]" for j in range(4)), "prediction:stable:predict"}
    assert all((f.reference_n, f.current_n) == (200, 100) for f in by.values())
    assert by["prediction:stable:predict"].categorical
    assert by["prediction:stable:predict"].edges == (0.0, 1.0, 2.0)
    assert (report.sampled, report.dropped, report.decode_errors, report.pending) == (300, 0, 0, 0)


def test_sample_every_takes_every_nth_request() -> None:
    m = monitor(sample_every=3)
    traffic(m, 10)
    assert (m.sampled, m.pending) == (3, 3)  # requests 3, 6 and 9
    traffic(m, 2)
    assert m.sampled == 4


def test_full_queue_drops_and_counts() -> None:
    m = monitor(max_pending=2)
    traffic(m, 5)
    assert (m.sampled, m.dropped, m.pending) == (5, 3, 2)
    assert m.drain() == 2
    traffic(m, 1)
    assert (m.sampled, m.dropped, m.pending) == (6, 3, 1)
    report = m.report()
    assert (report.sampled, report.dropped) == (6, 3)


def test_bad_payloads_are_counted_and_logged_once_never_raised() -> None:
    """A payload that is not a request makes decoding raise: counted per item, logged once
    per kind; good items around it are still tracked."""
    m = monitor()
    traffic(m, 2)
    m.offer(None, iris_response(1), "stable")
    m.offer(object(), iris_response(1), "stable")
    traffic(m, 2, seed=1)
    with capture_logs() as logs:
        assert m.drain() == 6
    assert m.decode_errors == 2 and m.failures == 0
    failures = [e for e in logs if e["event"] == "drift.decode_failed"]
    assert len(failures) == 1 and failures[0]["kind"] == "decode:AttributeError"
    assert all(f.reference_n == 4 for f in m.report().drift.features)
    assert m.report().decode_errors == 2


def test_undecodable_tensors_are_skipped_not_counted_as_errors() -> None:
    """decode_inputs never raises: a broken raw tensor is a non-numeric marker that the
    tracker skips (skipped_features), and the rest of the request is tracked."""
    req = oip.ModelInferRequest(model_name="iris")
    req.inputs.add(name="input-0", datatype="FP32", shape=[1, 4])
    req.inputs.add(name="broken", datatype="FP32", shape=[1])
    req.raw_input_contents.append(np.array([5.1, 3.5, 1.4, 0.2], "<f4").tobytes())
    req.raw_input_contents.append(b"abc")
    m = monitor()
    m.offer(req, iris_response(0), "stable")
    report = m.report()
    assert m.decode_errors == 0 and report.drift.skipped_features == 1
    assert [f.name for f in report.drift.features] == [
        *(f"input-0[{j}]" for j in range(4)),
        "predict",
    ]
    assert all(f.reference_n == 1 for f in report.drift.features)


def test_check_levels_logs_and_calls_back() -> None:
    """Level changes are logged (warning on MODERATE/MAJOR) and passed to the callback;
    the gate reads the largest PSI."""
    calls: list[tuple[str, str, str]] = []
    settings = DriftSettings(reference_size=1000, window_size=1000, min_current=500)
    m = monitor(settings, max_pending=4096, on_level_change=lambda *change: calls.append(change))
    traffic(m, 1600)
    m.drain()
    with capture_logs() as logs:
        changes = m.check_levels()
    assert changes == calls and len(changes) == 5
    assert all(old == "INSUFFICIENT" and new == "NONE" for _, old, new in changes)
    assert [e["log_level"] for e in logs] == ["info"] * 5
    traffic(m, 1400, seed=3, shift=4.0)  # petal length shifted: window 2 entirely
    with capture_logs() as logs:
        changes = m.check_levels()
    assert changes == [("input:input-0[2]", "NONE", "MAJOR")] == calls[5:]
    assert [(e["log_level"], e["new"]) for e in logs] == [("warning", "MAJOR")]
    gate = m.max_psi("input")
    assert gate is not None and gate[1] == "input:input-0[2]" and gate[0] >= 0.25


def test_a_failing_alert_callback_is_counted() -> None:
    def broken(series: str, old: str, new: str) -> None:
        raise RuntimeError("alert sink down")

    m = monitor(on_level_change=broken)
    traffic(m, 300)
    m.drain()
    assert len(m.check_levels()) == 5 and m.failures == 5


@pytest.mark.parametrize(
    ("name", "value"), [("sample_every", 0), ("max_pending", 0), ("slice_size", True)]
)
def test_monitor_settings_are_validated(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=name):
        DriftMonitor(DriftTracker(), decode_inputs, decode_outputs, **{name: value})  # type: ignore[arg-type]


async def test_run_drains_in_the_background_and_is_cancel_safe() -> None:
    """The run task empties the queue (in slices) and then checks levels; cancelling it
    leaves the monitor usable."""
    changes: list[tuple[str, str, str]] = []
    m = monitor(slice_size=16, on_level_change=lambda *change: changes.append(change))
    task = asyncio.create_task(m.run(0.001))
    traffic(m, 300)
    for _ in range(10_000):  # a bound on polling, not a timing assertion
        if m.pending == 0 and changes:
            break
        await asyncio.sleep(0.001)
    assert len(changes) == 5
    assert m.pending == 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert {f.current_n for f in m.report().drift.features} == {100}
    with pytest.raises(ValueError, match="interval"):
        await m.run(0)
