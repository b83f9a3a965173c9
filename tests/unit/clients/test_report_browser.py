"""The HTML report in a real browser (Debian's /usr/bin/chromium, driven headless by
playwright; no browser is downloaded), and the report's readability fixes: no placeholder
±100 pp intervals, "no data" for an empty segment, the shadow p95 ratio the gate uses, a
non-negative error axis, drift bins named by class, readable text sizes, and the user-level
fields."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_report import arm, est, ship_report

from clients.report_html import render_html
from sidecar._proto.sidecar.v1 import control_pb2 as cpb

CHROMIUM = Path("/usr/bin/chromium")
MINUS = "\u2212"  # matplotlib writes negative tick labels with the minus sign
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def early_report() -> cpb.ExperimentReport:
    """A report while data is short: the first looks still carry the test's placeholder
    interval [-1, 1], one declared segment has no outcomes, the shadow's p95 of per-pair
    ratios differs from the ratio of the p95s, no errors, and drift of classes 0-2."""
    report = ship_report()
    m = report.metrics[0]
    for look in m.history[:5]:
        look.lower, look.upper = -1.0, 1.0
    m.segments.append(
        cpb.SegmentResult(
            segment="tv",
            control=cpb.ArmResult(variant="stable"),
            treatment=cpb.ArmResult(variant="canary"),
            difference=est(0.0, -1.0, 1.0, "msprt"),
            p_value=1.0,
            adjusted_p_value=1.0,
        )
    )
    m.segments.append(
        cpb.SegmentResult(
            segment="watch",
            control=arm("stable", 40, 4, 0.0, 1.0),
            treatment=arm("canary", 38, 5, 0.0, 1.0),
            difference=est(0.03, -1.0, 1.0, "msprt"),
            p_value=1.0,
            adjusted_p_value=1.0,
        )
    )
    m.expected_seconds = 7380.0
    m.verdict = cpb.VERDICT_CONTINUE
    shadow = report.shadow
    shadow.latency.primary_p95_seconds = 0.05
    shadow.latency.shadow_p95_seconds = 0.048  # the gate: 0.96
    shadow.latency.ratio_p95 = 2.92  # the p95 of per-pair ratios: not the gate's measure
    shadow.error_rate = 0.0
    shadow.primary_error_rate = 0.0
    report.segment_mix.CopyFrom(
        cpb.SegmentMixCheck(
            p_value=0.41, chi_square=1.8, checked=True, detail="segment mix ok: users ..."
        )
    )
    return report


@pytest.fixture(scope="module")
def page_html() -> str:
    return render_html(early_report())


def svg_texts(page: str) -> list[str]:
    return [re.sub(r"\s+", " ", t).strip() for t in re.findall(r"<text[^>]*>(.*?)</text>", page)]


def figure_of(page: str, caption_start: str) -> str:
    """The SVG of the figure whose caption starts with `caption_start`."""
    for figure in re.findall(r"<figure>(.*?)</figure>", page, flags=re.DOTALL):
        if f"<figcaption>{caption_start}" in figure:
            return str(figure)
    raise AssertionError(f"no figure captioned {caption_start!r}")


def test_placeholder_intervals_are_not_drawn(page_html: str) -> None:
    """Neither the history band nor the forest plot reaches ±100 pp: the placeholder
    interval of a look or a segment not yet evaluated is left out (said in the plot)."""
    history = figure_of(page_html, "The difference B - A at each look")
    ticks = [t for t in svg_texts(history) if re.fullmatch(rf"[{MINUS}-]?\d+(\.\d+)?", t)]
    values = [float(t.replace(MINUS, "-")) for t in ticks]
    y_ticks = [v for v in values if abs(v) < 1000]  # the x axis counts outcomes (>= 2000)
    assert y_ticks and max(abs(v) for v in y_ticks) < 50  # no ±100 pp axis
    forest = figure_of(page_html, "Differences B - A per segment")
    texts = svg_texts(forest)
    assert "no interval yet" in texts  # the 'watch' segment: a point, no placeholder bar
    assert f"{MINUS}100" not in texts and "-100" not in texts


def test_a_placeholder_interval_is_not_printed_in_the_tables(page_html: str) -> None:
    row = re.search(r"<tr><td>watch</td>(.*?)</tr>", page_html)
    assert row is not None and "[no interval yet]" in row.group(1)
    assert "100.00 pp" not in page_html


def test_an_empty_segment_says_no_data_in_the_plot_and_the_table(page_html: str) -> None:
    forest = figure_of(page_html, "Differences B - A per segment")
    assert "no data" in svg_texts(forest)
    row = re.search(r"<tr><td>tv</td>(.*?)</tr>", page_html)
    assert row is not None
    assert row.group(1).count("no data") >= 3  # values, difference, p, adjusted p
    assert "1.0000" not in row.group(1)


def test_the_shadow_latency_bar_is_the_ratio_the_gate_uses(page_html: str) -> None:
    texts = svg_texts(page_html)
    assert "0.96x" in texts and "2.92x" not in texts
    assert "shadow / primary percentile" in texts
    assert "50.0 ms / 48.0 ms / 0.96x" in page_html  # the table agrees with the bar
    assert "1.10x / 2.92x" in page_html  # the per-pair ratios, labelled as not the gate's


def test_the_error_chart_has_no_negative_axis_and_says_no_errors(page_html: str) -> None:
    texts = svg_texts(page_html)
    assert "no errors" in texts
    assert not any(re.fullmatch(rf"[{MINUS}-]0\.\d+", t) for t in texts)


def test_categorical_drift_bins_are_named_by_class() -> None:
    report = ship_report()
    predict = report.drift.features[2]
    del predict.reference_share[:]
    del predict.current_share[:]
    predict.reference_share.extend([0.33, 0.34, 0.33, 0.0])  # classes 0, 1, 2 and "other"
    predict.current_share.extend([0.25, 0.40, 0.35, 0.0])
    shares = figure_of(render_html(report), "Reference against current share per bin")
    texts = svg_texts(shares)
    start = texts.index("0")  # the predict panel's bins, in order (no "1 2 3 4" numbering)
    assert texts[start : start + 4] == ["0", "1", "2", "other"]


def test_plot_text_is_at_least_8_points(page_html: str) -> None:
    sizes = [float(s) for s in re.findall(r"font-size?:\s*([\d.]+)px", page_html)]
    sizes += [float(s) for s in re.findall(r"font: [^;]*?([\d.]+)px", page_html)]
    assert sizes and min(sizes) >= 8.0


def test_user_level_fields_and_time_to_decision_are_shown(page_html: str) -> None:
    assert "users per arm (A / B)" in page_html and "1000 / 1010" in page_html
    assert "outcomes per user (A / B)" in page_html and "10.0 / 9.9" in page_html
    assert "user (design effect 2.40)" in page_html
    assert "about 2h03m at the current traffic" in page_html
    assert "A 28,240 / B 28,240 outcomes" in page_html
    assert "segment mix ok" in page_html


# --------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (/usr/bin/chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def test_the_report_renders_in_chromium_without_errors(
    browser: Any, page_html: str, tmp_path: Path
) -> None:
    """Chromium opens the page from a file with no console error and no page error; every
    section has its plots drawn (an SVG with a size); the empty segment says "no data"."""
    path = tmp_path / "report.html"
    path.write_text(page_html, encoding="utf-8")
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    requests: list[str] = []
    page.on("request", lambda req: requests.append(req.url))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    assert errors == []
    assert requests == [path.as_uri()]  # self-contained: nothing else is loaded
    boxes = page.eval_on_selector_all(
        "figure svg", "els => els.map(e => [e.getBoundingClientRect().width, "
        "e.getBoundingClientRect().height, e.closest('section').id])",
    )  # fmt: skip
    sections = {section for _, _, section in boxes}
    assert {"metric-1", "metric-2", "srm", "shadow", "drift"} <= sections
    assert all(w > 100 and h > 50 for w, h, _ in boxes)
    assert len(boxes) >= 8
    row = page.locator("section#metric-1 tr", has_text="tv")
    assert row.count() == 1 and "no data" in row.inner_text()
    forest = page.locator("section#metric-1 figure svg").nth(2)
    assert "no data" in (forest.text_content() or "")
    smallest = page.evaluate(
        "Math.min(...Array.from(document.querySelectorAll('svg text'))"
        ".map(t => parseFloat(getComputedStyle(t).fontSize)))"
    )
    assert math.isfinite(smallest) and smallest >= 8.0
    page.close()
