"""`sidecarctl report`, `ControlClient.experiment_report` and the report renderers (tables,
JSON, the self-contained HTML page), against a FAKE server and hand-built reports.

The server is `FakeControl` from test_sidecarctl (an in-process FAKE `sidecar.v1.Control`
servicer, not the sidecar) answering a canned `ExperimentReport`. The reports below are built
by hand to look like the real thing: a Ship B metric with 20 looks, segments with a Simpson's
paradox, a numeric metric still at Continue, a blocked experiment with a sample-ratio
mismatch, a shadow with a noise mirror and drift over three features. The statistics
themselves are the server's business and are tested elsewhere.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest
from test_sidecarctl import TOKEN, FakeControl, free_port, run, shadow_report

from clients.control import ControlClient
from clients.render_text import render_experiment, render_shadow
from clients.report_html import INSTALL_HINT, ReportExtraMissing, render_html
from clients.views import experiment_to_dict, shadow_to_dict
from sidecar._proto.sidecar.v1 import control_pb2 as cpb

T0 = 1_700_000_000.0
DRIFT_WARNING = "drift: petal[2] PSI 0.31 >= 0.25 (MAJOR) <since look 12> & rising"
SIMPSON = (
    "the aggregate favours canary (+1.50 pp) but segment mobile significantly favours "
    "stable (-1.50 pp [-2.90, -0.10])"
)
SRM_WARNING = "SAMPLE RATIO MISMATCH: p = 2.7e-05 < 0.001; every verdict is blocked"
INJECTION = "<script>alert('x')</script>"


def est(value: float, lower: float, upper: float, method: str = "wilson") -> cpb.Estimate:
    return cpb.Estimate(value=value, lower=lower, upper=upper, level=0.95, method=method)


def arm(
    variant: str, n: int, successes: int, lower: float, upper: float, users: int = 0
) -> cpb.ArmResult:
    return cpb.ArmResult(
        variant=variant,
        n=n,
        successes=successes,
        value=est(successes / n, lower, upper) if n else None,
        users=users,
    )


def history(looks: int = 20) -> list[cpb.LookPoint]:
    """A running interval that shrinks around +1.5 pp and leaves 0 behind at the end."""
    points = []
    for k in range(1, looks + 1):
        n = 500 * k
        half = 0.055 / math.sqrt(k)
        difference = 0.015 + 0.01 / k
        points.append(
            cpb.LookPoint(
                unix_time=T0 + 600 * k,
                n_control=n,
                n_treatment=n - 7 * k,
                difference=difference,
                lower=difference - half,
                upper=difference + half,
                p_value=min(1.0, 2.0 / k**2),
            )
        )
    return points


def segment(
    name: str,
    a: tuple[int, int],
    b: tuple[int, int],
    difference: cpb.Estimate,
    p: float,
    adjusted: float,
    winner: str = "",
) -> cpb.SegmentResult:
    return cpb.SegmentResult(
        segment=name,
        control=arm("stable", a[0], a[1], 0, 1),
        treatment=arm("canary", b[0], b[1], 0, 1),
        difference=difference,
        p_value=p,
        adjusted_p_value=adjusted,
        significant=bool(winner),
        winner=winner,
    )


def conversion() -> cpb.MetricResult:
    return cpb.MetricResult(
        metric="conversion",
        kind="bool",
        higher_is_better=True,
        minimum_effect=0.01,
        control=arm("stable", 10_000, 1_000, 0.0942, 0.1060, users=1_000),
        treatment=arm("canary", 10_000, 1_150, 0.1089, 0.1214, users=1_010),
        difference=est(0.015, 0.0032, 0.0268, "msprt"),
        relative_lift=est(0.15, 0.055, 0.253, "log-ratio"),
        p_value=0.0123,
        fixed_horizon_p_value=0.00071,
        verdict=cpb.VERDICT_SHIP_B,
        reason="the anytime-valid interval [+0.32, +2.68] pp excludes 0: canary converts better",
        additional_per_arm=0,
        planned_per_arm=28_240,
        planned_control=28_240,
        planned_treatment=28_240,
        unit="user",
        design_effect=2.4,
        correction="holm",
        segments=[
            segment(
                "desktop",
                (6000, 600),
                (6000, 780),
                est(0.03, 0.012, 0.048, "msprt"),
                0.0004,
                0.0012,
                "canary",
            ),
            segment(
                "mobile",
                (3000, 330),
                (3000, 285),
                est(-0.015, -0.029, -0.001, "msprt"),
                0.01,
                0.02,
                "stable",
            ),
            segment("tablet", (1000, 70), (1000, 85), est(0.015, -0.02, 0.05, "msprt"), 0.4, 0.4),
        ],
        simpson_warning=SIMPSON,
        history=history(20),
        tau_squared=5.464e-5,
        alpha=0.05,
    )


def latency_metric() -> cpb.MetricResult:
    return cpb.MetricResult(
        metric="latency_ms",
        kind="number",
        higher_is_better=False,
        minimum_effect=5.0,
        control=cpb.ArmResult(
            variant="stable",
            n=4000,
            value=est(120.5, 119.6, 121.4, "normal"),
            std_dev=30.0,
            users=4000,
            keyless=4000,
        ),
        treatment=cpb.ArmResult(
            variant="canary",
            n=3990,
            value=est(118.2, 117.3, 119.1, "normal"),
            std_dev=29.1,
            users=3990,
            keyless=3990,
        ),
        difference=est(-2.3, -5.1, 0.5, "msprt"),
        relative_lift=est(-0.019, -0.042, 0.004, "welch"),
        p_value=0.21,
        fixed_horizon_p_value=0.03,
        verdict=cpb.VERDICT_CONTINUE,
        reason="the interval [-5.1, +0.5] includes 0 and reaches beyond the -5 margin",
        additional_per_arm=4200,
        planned_per_arm=9000,
        planned_control=9000,
        planned_treatment=9000,
        expected_seconds=5400.0,
        unit="request",
        alpha=0.05,
    )


def shadow_with_noise() -> cpb.ShadowReport:
    report = shadow_report()
    report.agreement.CopyFrom(est(0.9, 0.8612, 0.9301))
    report.error_rate = 3 / 95
    report.primary_error_rate = 0.005
    report.recommendation = cpb.RECOMMEND_INVESTIGATE_DISAGREEMENT
    report.reasons.extend(
        [
            "disagreement 8.00% beyond the model's own noise (upper bound 16.00% > 5%)",
            "latency ok: p95 ratio 1.10x <= 1.5x",
        ]
    )
    report.latency.shadow_p50_seconds = 0.0132
    report.latency.shadow_p95_seconds = 0.035
    report.latency.ratio_p95 = 1.1
    report.latency_outliers.extend(
        [
            cpb.LatencyOutlier(request_id=f"req-slow-{i}", targeting_key=f"user-{i}",
                               primary_seconds=0.01, shadow_seconds=0.01 * (9 - i),
                               ratio=9.0 - i, unix_time=T0 + 50 + i)
            for i in range(5)
        ]
    )  # fmt: skip
    report.noise.CopyFrom(
        cpb.NoiseAdjustment(
            compared=500,
            agreed=490,
            noise_disagreement=est(0.02, 0.011, 0.036),
            candidate_disagreement=est(0.10, 0.054, 0.18),
            adjusted_disagreement=est(0.08, 0.035, 0.16, "newcombe"),
        )
    )
    return report


def drift() -> cpb.DriftReport:
    edges = [float(e) for e in range(1, 10)]
    flat = [0.1] * 10
    shifted = [0.02, 0.03, 0.05, 0.05, 0.1, 0.1, 0.15, 0.15, 0.15, 0.2]
    return cpb.DriftReport(
        enabled=True,
        moderate_threshold=0.1,
        major_threshold=0.25,
        sampled=5000,
        dropped=12,
        reference="baseline: the first 5000 values",
        worst_level="MAJOR",
        features=[
            cpb.DriftFeature(name="petal[0]", kind="input", reference_n=5000, current_n=2000,
                             psi=0.03, level="NONE", ks_statistic=0.04, ks_p_value=0.31,
                             edges=edges, reference_share=flat,
                             current_share=[0.09, 0.11] * 5),
            cpb.DriftFeature(name="petal[2]", kind="input", reference_n=5000, current_n=2000,
                             psi=0.31, level="MAJOR", ks_statistic=0.21, ks_p_value=1e-9,
                             edges=edges, reference_share=flat, current_share=shifted),
            cpb.DriftFeature(name="predict", kind="prediction", variant="canary",
                             reference_n=5000, current_n=1000, psi=0.14, level="MODERATE",
                             ks_statistic=0.08, ks_p_value=0.002, edges=[0.0, 1.0, 2.0],
                             reference_share=[0.33, 0.34, 0.33],
                             current_share=[0.25, 0.40, 0.35], categorical=True),
        ],
    )  # fmt: skip


def ship_report() -> cpb.ExperimentReport:
    return cpb.ExperimentReport(
        generated_unix_time=T0 + 12_500,
        epoch=3,
        started_unix_time=T0,
        control_variant="stable",
        treatment_variant="canary",
        srm=cpb.SampleRatioCheck(
            arms=[
                cpb.ArmCount(
                    variant="stable", observed=10_040, observed_share=0.502, expected_share=0.5
                ),
                cpb.ArmCount(
                    variant="canary", observed=9_960, observed_share=0.498, expected_share=0.5
                ),
            ],
            chi_square=0.32,
            p_value=0.5716,
            threshold=0.001,
            mismatch=False,
        ),
        metrics=[conversion(), latency_metric()],
        shadow=shadow_with_noise(),
        drift=drift(),
        warnings=[DRIFT_WARNING, "Simpson's paradox in conversion: see its segments"],
        looks=20,
        last_look_unix_time=T0 + 12_000,
        revision=12,
        unit="request",
        alpha=0.05,
    )


def blocked_report() -> cpb.ExperimentReport:
    metric = conversion()
    metric.verdict = cpb.VERDICT_BLOCKED
    metric.reason = "sample ratio mismatch (p = 2.7e-05): no verdict until the cause is fixed"
    metric.simpson_warning = ""
    del metric.segments[:]
    del metric.history[:]
    return cpb.ExperimentReport(
        generated_unix_time=T0 + 3600,
        epoch=4,
        started_unix_time=T0,
        control_variant="stable",
        treatment_variant="canary",
        srm=cpb.SampleRatioCheck(
            arms=[
                cpb.ArmCount(
                    variant="stable", observed=5210, observed_share=0.521, expected_share=0.5
                ),
                cpb.ArmCount(
                    variant="canary", observed=4790, observed_share=0.479, expected_share=0.5
                ),
            ],
            chi_square=17.64,
            p_value=2.67e-05,
            threshold=0.001,
            mismatch=True,
            detail="canary received 4790 of 10000 assignments, expected 5000",
        ),
        metrics=[metric],
        warnings=[SRM_WARNING],
        looks=6,
        revision=13,
        unit="request",
        alpha=0.05,
    )


@pytest.fixture(scope="module")
def ship_html() -> str:
    """The sample report rendered once for the HTML tests (rendering takes most of the time)."""
    return render_html(ship_report())


def section(page: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}"[^>]*>(.*?)</section>', page, re.DOTALL)
    assert match, f"no section {section_id!r}"
    return match.group(1)


def line_with(text: str, needle: str) -> str:
    return next(line for line in text.splitlines() if needle in line)


def row(text: str, *first: str) -> list[str]:
    """The cells of the first table row whose leading cells are `first`."""
    return next(
        cells for line in text.splitlines() if (cells := line.split())[: len(first)] == list(first)
    )


# ----------------------------------------------------------------------------- client


def test_client_sends_metrics_omit_history_and_token(
    fake: FakeControl, served: tuple[FakeControl, int]
) -> None:
    """`experiment_report` sends the metric filter and omit_history with the bearer token and
    returns the server's report unchanged."""
    fake.experiment = ship_report()
    with ControlClient(f"127.0.0.1:{served[1]}", token=TOKEN) as client:
        report = client.experiment_report(["conversion"], omit_history=True)
    assert report == ship_report()
    [call] = fake.calls
    assert call.method == "GetExperimentReport"
    assert call.request == cpb.GetExperimentReportRequest(metrics=["conversion"], omit_history=True)
    assert call.metadata["authorization"] == f"Bearer {TOKEN}"


# ----------------------------------------------------------------------------- tables


def test_tables_put_warnings_first_then_header_and_srm() -> None:
    """Warnings open the output, then who is compared (A vs B, unit, alpha, looks), then SRM."""
    lines = render_experiment(ship_report()).splitlines()
    assert lines[:2] == [
        f"WARNING: {DRIFT_WARNING}",
        "WARNING: Simpson's paradox in conversion: see its segments",
    ]
    assert lines[2] == "experiment epoch 3: control (A) stable vs treatment (B) canary"
    assert lines[3].split() == [
        "started", "2023-11-14T22:13:20Z", "unit", "request", "alpha", "0.05", "looks", "20,",
        "last", "at", "2023-11-15T01:33:20Z",
    ]  # fmt: skip
    assert "sample ratio check: ok (chi-square 0.32, p 0.5716, threshold 0.001)" in lines
    assert row("\n".join(lines), "stable", "A") == ["stable", "A", "10040", "50.20%", "50.00%"]


def test_tables_show_the_ship_b_metric_with_its_numbers() -> None:
    """The Ship B metric: verdict in words and why, arms, anytime-valid difference, lift,
    both p-values (fixed-horizon labelled invalid under peeking), sample size, history."""
    text = render_experiment(ship_report())
    assert "== metric conversion (bool, higher is better, minimum effect ±1.00 pp) ==" in text
    assert (
        "verdict: SHIP B (canary): the anytime-valid interval [+0.32, +2.68] pp excludes 0: "
        "canary converts better"
    ) in text
    assert row(text, "A", "stable") == [
        "A", "stable", "10000", "1000", "10.0", "1000", "10.00%", "[9.42%,", "10.60%]",
    ]  # fmt: skip
    assert row(text, "B", "canary")[2:7] == ["10000", "1010", "9.9", "1150", "11.50%"]
    assert "unit of analysis: user (design effect 2.40)" in text
    assert (
        "difference B - A: +1.50 pp, anytime-valid 95% interval [+0.32 pp, +2.68 pp], msprt"
    ) in text
    assert "relative lift: +15.00% [+5.50%, +25.30%] (fixed-horizon interval" in text
    assert (
        "always-valid p 0.0123   fixed-horizon p 0.0007 (NOT valid under repeated looks)"
    ) in text
    assert "planned sample size for the split: A 28,240 / B 28,240 outcomes" in text
    assert "expected time to a decision: decided" in text
    assert "history: 20 looks, from n 500/493 to 10000/9860 (A/B)" in text


def test_tables_show_segments_and_the_simpson_warning() -> None:
    """Segments: n per arm, values, difference with its interval, p and holm-adjusted p,
    significance and winner; the Simpson's paradox warning is spelled out."""
    text = render_experiment(ship_report())
    assert f"SIMPSON'S PARADOX WARNING: {SIMPSON}" in text
    assert "segments (3; p holm-adjusted over the segment family; values A / B):" in text
    assert row(text, "mobile") == [
        "mobile", "3000", "/", "3000", "11.00%", "/", "9.50%", "-1.50", "pp", "[-2.90", "pp,",
        "-0.10", "pp]", "0.0100", "0.0200", "YES", "stable",
    ]  # fmt: skip
    assert row(text, "tablet")[-3:] == ["0.4000", "no", "—"]


def test_tables_show_a_numeric_metric_at_continue() -> None:
    """A numeric metric shows means and standard deviations, its difference in its unit and,
    at Continue, how many more outcomes per arm it needs."""
    text = render_experiment(ship_report())
    assert "== metric latency_ms (number, lower is better, minimum effect ±5) ==" in text
    assert "verdict: CONTINUE: the interval [-5.1, +0.5] includes 0" in text
    assert row(text, "A", "stable", "4000") == [
        "A", "stable", "4000", "4000", "(4000", "keyless)", "1.0", "30", "120.5", "[119.6,",
        "121.4]",
    ]  # fmt: skip
    assert "difference B - A: -2.3, anytime-valid 95% interval [-5.1, +0.5], msprt" in text
    assert (
        "planned sample size for the split: A 9,000 / B 9,000 outcomes   still needed: about "
        "4200 more per arm"
    ) in text
    assert "expected time to a decision: about 1h30m at the current traffic" in text
    assert "unit of analysis: request" in text


def test_tables_show_shadow_with_noise_and_drift() -> None:
    """The shadow part (recommendation, agreement interval, noise, error rates, a few slow
    calls and examples) and the drift table are in the experiment tables."""
    text = render_experiment(ship_report())
    shadow = text[text.index("== shadow ==") : text.index("== drift ==")]
    assert "recommendation: INVESTIGATE THE DISAGREEMENT BEFORE SERVING IT" in shadow
    assert "  - latency ok: p95 ratio 1.10x <= 1.5x" in shadow
    assert "agreement 90.00% [86.12%, 93.01%] (95% wilson interval)" in shadow
    assert (
        "  noise-adjusted disagreement (candidate - noise) 8.00% [3.50%, 16.00%] (95% newcombe)"
    ) in shadow.splitlines()
    assert "error rate: shadow 3.16% of calls sent, primary 0.50% over the same period" in shadow
    assert "slowest shadow calls relative to the primary (3 of 5):" in shadow
    assert "req-slow-2" in shadow
    assert "req-slow-3" not in shadow
    drift_part = text[text.index("== drift ==") :]
    assert "drift: worst level MAJOR   PSI moderate >= 0.1, major >= 0.25" in drift_part
    assert row(drift_part, "petal[2]") == [
        "petal[2]", "input", "—", "5000", "2000", "0.3100", "MAJOR", "0.2100", "1.0e-09",
    ]  # fmt: skip
    assert row(drift_part, "predict")[:3] == ["predict", "prediction", "canary"]


def test_tables_for_a_blocked_experiment_show_the_srm_mismatch() -> None:
    """With a sample-ratio mismatch the warning comes first, the SRM line says MISMATCH and
    the metric's verdict is BLOCKED with its reason."""
    text = render_experiment(blocked_report())
    lines = text.splitlines()
    assert lines[0] == f"WARNING: {SRM_WARNING}"
    assert (
        "sample ratio check: MISMATCH (chi-square 17.64, p 2.7e-05, threshold 0.001): every "
        "verdict is blocked"
    ) in lines
    assert "  canary received 4790 of 10000 assignments, expected 5000" in lines
    assert row(text, "canary", "B") == ["canary", "B", "4790", "47.90%", "50.00%"]
    assert "verdict: BLOCKED: sample ratio mismatch (p = 2.7e-05)" in text
    assert "shadow: no shadow variant configured" in text
    assert "drift: disabled (no data)" in text


def test_render_shadow_keeps_old_lines_and_adds_the_analysis() -> None:
    """The shadow command's output keeps its lines and adds interval, noise, error rates,
    recommendation, reasons and the slowest calls; the plain report is unchanged."""
    plain = render_shadow(shadow_report())
    assert "recommendation" not in plain
    assert "compared 90   agreed 81   agreement 90.00%" in plain
    text = render_shadow(shadow_with_noise())
    assert text.splitlines()[1] == "recommendation: INVESTIGATE THE DISAGREEMENT BEFORE SERVING IT"
    assert "compared 90   agreed 81   agreement 90.00% [86.12%, 93.01%]" in text
    assert "DEADLINE_EXCEEDED 3" in text
    assert "noise mirror (primary vs itself): compared 500, agreed 490" in text
    assert "slowest shadow calls relative to the primary (5):" in text
    assert line_with(text, "req-slow-0").split()[-3:] == ["90.0", "ms", "9.00x"]
    assert "recent disagreements (1, newest last):" in text


# ----------------------------------------------------------------------------- JSON


def test_report_json_round_trips_key_numbers(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """`report --json` prints one JSON document with the verdicts, intervals, history,
    segments, SRM, shadow noise and drift; --metric and --no-history reach the request."""
    fake.experiment = ship_report()
    r = run(capsys, "report", "--json", "--metric", "conversion", "--metric", "latency_ms",
            "--no-history")  # fmt: skip
    assert r.code == 0, r.err
    [call] = fake.calls
    assert call.request == cpb.GetExperimentReportRequest(
        metrics=["conversion", "latency_ms"], omit_history=True
    )
    doc = json.loads(r.out)
    assert doc["warnings"][0] == DRIFT_WARNING
    assert (doc["epoch"], doc["looks"], doc["alpha"]) == (3, 20, 0.05)
    assert doc["started_at"] == "2023-11-14T22:13:20Z"
    conv, lat = doc["metrics"]
    assert (conv["verdict"], conv["verdict_text"]) == ("SHIP_B", "Ship B")
    assert conv["difference"] == {
        "value": 0.015, "lower": 0.0032, "upper": 0.0268, "level": 0.95, "method": "msprt",
    }  # fmt: skip
    assert conv["control"]["successes"] == 1000
    assert len(conv["history"]) == 20
    assert conv["history"][-1]["n_control"] == 10_000
    assert [s["winner"] for s in conv["segments"]] == ["canary", "stable", None]
    assert conv["simpson_warning"] == SIMPSON
    assert (lat["verdict"], lat["additional_per_arm"], lat["control"]["std_dev"]) == (
        "CONTINUE", 4200, 30.0,
    )  # fmt: skip
    assert doc["srm"]["p_value"] == 0.5716
    assert doc["srm"]["mismatch"] is False
    noise = doc["shadow"]["noise"]
    assert noise["adjusted_disagreement"]["upper"] == 0.16
    assert doc["shadow"]["recommendation"] == "INVESTIGATE_DISAGREEMENT"
    assert [f["psi"] for f in doc["drift"]["features"]] == [0.03, 0.31, 0.14]
    assert doc["drift"]["features"][2]["categorical"] is True
    assert json.loads(run(capsys, "report", "-o", "json").out) == doc  # same with -o json


def test_json_replaces_infinity_and_missing_sections() -> None:
    """Infinite statistics become null (valid JSON); absent shadow / drift become null and
    an unknown additional_per_arm (-1) is null."""
    report = blocked_report()
    report.srm.chi_square = math.inf
    report.metrics[0].additional_per_arm = -1
    doc = json.loads(json.dumps(experiment_to_dict(report), allow_nan=False))
    assert doc["srm"]["chi_square"] is None
    assert doc["srm"]["mismatch"] is True
    assert doc["metrics"][0]["additional_per_arm"] is None
    assert doc["metrics"][0]["verdict"] == "BLOCKED"
    assert (doc["shadow"], doc["drift"]) == (None, None)
    shadow = shadow_to_dict(shadow_with_noise())
    assert shadow["agreement"]["lower"] == 0.8612
    assert shadow["latency_outliers"][0]["ratio"] == 9.0
    assert shadow["reasons"][1] == "latency ok: p95 ratio 1.10x <= 1.5x"


# ----------------------------------------------------------------------------- HTML


def test_html_is_one_self_contained_page(ship_html: str) -> None:
    """One HTML document that loads nothing: no external sources, links, scripts or fonts."""
    assert ship_html.startswith("<!DOCTYPE html>")
    assert ship_html.count("<html") == 1
    assert ship_html.rstrip().endswith("</html>")
    lowered = ship_html.lower()
    for forbidden in ('src="http', "src='http", "<link", "<script", "@import", "url(http"):
        assert forbidden not in lowered, forbidden
    assert "<style>" in ship_html


def test_html_has_a_plot_in_every_section(ship_html: str) -> None:
    """Each plot section carries inline SVG: the Ship B metric three (over time, per arm,
    segments), the metric without history one, SRM one, shadow one, drift two."""
    assert section(ship_html, "metric-1").count("<svg") == 3
    assert section(ship_html, "metric-2").count("<svg") == 1
    assert "difference over time (no looks in this report: none yet, or left out with " in section(
        ship_html, "metric-2"
    )
    assert section(ship_html, "srm").count("<svg") == 1
    assert section(ship_html, "shadow").count("<svg") == 1
    assert section(ship_html, "drift").count("<svg") == 2
    ids = re.findall(r'\bid="([^"]+)"', ship_html)
    assert len(ids) == len(set(ids)), "SVG ids must be unique in the page"


def test_html_opens_with_the_decision_and_escaped_warnings(ship_html: str) -> None:
    """The decision summary comes before the metric sections: each metric's verdict and
    reason, the warnings in a visible box, escaped."""
    summary = section(ship_html, "summary")
    assert ship_html.index('id="summary"') < ship_html.index('id="metric-1"')
    warnings = re.search(r'<div class="warnings">(.*?)</div>', summary, re.DOTALL)
    assert warnings is not None
    assert html.escape(DRIFT_WARNING) in warnings.group(1)
    assert DRIFT_WARNING not in ship_html  # its "<since look 12>" would be markup
    assert 'class="verdict v-SHIP_B">Ship B (canary)</span>' in summary
    assert 'class="verdict v-CONTINUE">Continue</span>' in summary
    assert html.escape(conversion().reason) in summary
    assert "+1.50 pp [+0.32 pp, +2.68 pp]" in summary
    assert html.escape(SIMPSON) in section(ship_html, "metric-1")


def test_html_escapes_injected_text_in_tables_and_plots() -> None:
    """A segment, metric and shadow detail carrying markup (and matplotlib's `$` mathtext
    syntax) come out as text, in the tables and inside the SVG plots alike."""
    report = ship_report()
    report.metrics[0].segments[0].segment = INJECTION
    report.metrics[0].segments[1].segment = "$\\frac{1}{0}$ & <b>bold</b>"
    report.shadow.examples[0].detail = '"><img src=x onerror=alert(1)>'
    page = render_html(report)
    assert "<script" not in page
    assert "<b>bold</b>" not in page
    assert "<img" not in page
    segments = section(page, "metric-1")
    svgs = "".join(re.findall(r"<svg.*?</svg>", segments, re.DOTALL))
    assert "&lt;script&gt;alert(" in svgs  # the forest plot's label, escaped by matplotlib
    table = segments[segments.rindex("<table>") :]
    assert html.escape(INJECTION) in table
    assert html.escape("$\\frac{1}{0}$ & <b>bold</b>") in table
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in section(page, "shadow")


def test_html_for_a_blocked_experiment_shows_the_mismatch() -> None:
    """The SRM mismatch is in the warnings box and the SRM section; missing shadow and drift
    say "no data"."""
    page = render_html(blocked_report())
    assert html.escape(SRM_WARNING) in section(page, "summary")
    assert "sample ratio MISMATCH" in section(page, "summary")
    assert 'class="verdict v-BLOCKED">Blocked</span>' in section(page, "summary")
    srm = section(page, "srm")
    assert "MISMATCH" in srm
    assert "<svg" in srm
    assert "no data" in section(page, "shadow")
    assert "no data" in section(page, "drift")


def test_empty_report_renders_everywhere() -> None:
    """A report with nothing in it renders as tables, JSON and HTML, saying "no data"."""
    empty = cpb.ExperimentReport()
    text = render_experiment(empty)
    assert "sample ratio check: no data" in text
    assert "metrics: no data" in text
    assert "drift: disabled (no data)" in text
    doc = json.loads(json.dumps(experiment_to_dict(empty), allow_nan=False))
    assert (doc["metrics"], doc["srm"], doc["shadow"], doc["drift"]) == ([], None, None, None)
    page = render_html(empty)
    assert "<svg" not in page
    for section_id in ("summary", "metrics", "srm", "shadow", "drift"):
        assert "no data" in section(page, section_id), section_id
    # A metric with no numbers at all and a drift with no features render too.
    sparse = cpb.ExperimentReport(
        metrics=[cpb.MetricResult(metric="m", verdict=cpb.VERDICT_CONTINUE, additional_per_arm=-1)],
        drift=cpb.DriftReport(enabled=True),
        shadow=cpb.ShadowReport(shadow_variant="shadow"),
    )
    assert "still needed: cannot be estimated yet" in render_experiment(sparse)
    page = render_html(sparse)
    assert "no data" in section(page, "metric-1")
    assert "drift features: no data" in section(page, "drift")


# ----------------------------------------------------------------------------- CLI


def test_report_html_writes_the_page_and_prints_its_path(
    fake: FakeControl, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`report --html PATH` prints the tables, writes the page and prints where, exit 0."""
    fake.experiment = ship_report()
    path = tmp_path / "experiment.html"
    r = run(capsys, "--token", TOKEN, "report", "--html", str(path))
    assert r.code == 0, r.err
    assert r.out.startswith(f"WARNING: {DRIFT_WARNING}\n")
    assert "verdict: SHIP B (canary)" in r.out
    assert r.out.rstrip().splitlines()[-1] == f"HTML report written to {path}"
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert section(page, "metric-1").count("<svg") == 3
    assert [p.name for p in tmp_path.iterdir()] == ["experiment.html"]  # no temporary left
    assert fake.calls[0].request == cpb.GetExperimentReportRequest()


def test_report_html_with_json_keeps_stdout_one_document(
    fake: FakeControl, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """With --json and --html, stdout is the JSON document and the path goes to stderr."""
    fake.experiment = blocked_report()
    path = tmp_path / "blocked.html"
    r = run(capsys, "report", "--json", "--html", str(path))
    assert r.code == 0, r.err
    assert json.loads(r.out)["metrics"][0]["verdict"] == "BLOCKED"
    assert f"HTML report written to {path}" in r.err
    assert path.exists()


def test_report_html_into_a_missing_folder_is_a_usage_error(
    fake: FakeControl, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """An --html path whose folder does not exist exits 2 before asking the sidecar."""
    r = run(capsys, "report", "--html", str(tmp_path / "nope" / "r.html"))
    assert r.code == 2
    assert "does not exist" in r.err
    assert fake.calls == []


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, 1),
        (grpc.StatusCode.PERMISSION_DENIED, 1),
        (grpc.StatusCode.UNIMPLEMENTED, 1),
    ],
)
def test_report_refusals_exit_like_other_commands(
    fake: FakeControl,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    code: grpc.StatusCode,
    exit_code: int,
) -> None:
    """A refused report exits as `status` and `shadow` do, with the same error line; no page
    is written."""
    fake.failures["*"] = (code, "no")
    path = tmp_path / "r.html"
    report = run(capsys, "--token", TOKEN, "report", "--html", str(path))
    shadow = run(capsys, "--token", TOKEN, "shadow")
    assert report.code == shadow.code == exit_code
    assert report.err.splitlines()[0] == shadow.err.splitlines()[0] == f"error: {code.name}: no"
    assert not path.exists()
    if code == grpc.StatusCode.UNAUTHENTICATED:
        assert "hint: pass an operator or viewer token" in report.err
        assert TOKEN not in report.err


def test_report_unreachable_exits_3(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No sidecar at the target: exit 3, as for the other commands."""
    monkeypatch.delenv("SIDECARCTL_TOKEN", raising=False)
    r = run(capsys, "--target", f"127.0.0.1:{free_port()}", "--timeout", "0.5", "report")
    assert r.code == 3
    assert "could not reach" in r.err


def test_report_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    """`report --help` documents --metric, --json, --html and --no-history."""
    r = run(capsys, "report", "--help")
    assert r.code == 0
    for option in ("--metric", "--json", "--html", "--no-history", "anytime-valid"):
        assert option in r.out


def test_report_html_without_matplotlib_says_how_to_install(
    fake: FakeControl,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without matplotlib (the `report` extra), `report --html` prints one line saying how to
    install it and exits 2, before asking the sidecar; no page is written."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    path = tmp_path / "r.html"
    r = run(capsys, "--token", TOKEN, "report", "--html", str(path))
    assert r.code == 2
    assert r.err.splitlines() == [
        "sidecarctl report: error: the HTML report needs matplotlib: "
        "pip install 'rollout-sidecar[report]'"
    ]
    assert r.out == ""
    assert fake.calls == []
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ReportExtraMissing, match=re.escape(INSTALL_HINT)):
        render_html(ship_report())


def test_clients_import_and_print_tables_without_matplotlib(tmp_path: Path) -> None:
    """In a fresh process where matplotlib cannot be imported, every clients module imports
    and the tables render; only drawing the HTML page asks for the extra."""
    script = tmp_path / "no_matplotlib.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            sys.modules["matplotlib"] = None
            from clients import control, predict, render_text, report_html, sidecarctl, views
            from sidecar._proto.sidecar.v1 import control_pb2 as cpb
            assert render_text.render_experiment(cpb.ExperimentReport())
            try:
                report_html.render_html(cpb.ExperimentReport())
            except report_html.ReportExtraMissing as exc:
                print(exc)
            """
        ),
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[3],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[3])},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "the HTML report needs matplotlib: pip install 'rollout-sidecar[report]'"
    )
