"""The experiment report as one self-contained HTML page (`sidecarctl report --html PATH`).

    from clients.control import ControlClient
    from clients.report_html import render_html
    with ControlClient("127.0.0.1:8501", token=token) as control:
        Path("experiment.html").write_text(render_html(control.experiment_report()))

The page opens with the decision: the verdict per metric with its reason, and the warnings
in a box. Then, per metric, the difference B - A with its anytime-valid interval over the
looks, each arm's value with its interval and the segments (a forest plot), followed by the
sample-ratio check, the shadow comparison and drift per feature, each with its table.

matplotlib is the `report` extra (`pip install 'rollout-sidecar[report]'`): this module
imports it only when a page is drawn, and raises `ReportExtraMissing` (saying how to install
it) when it is absent, so the server and `sidecarctl` run without it.

Self-contained: the plots are inline SVG drawn with matplotlib (`Figure` and the SVG canvas
directly: pyplot and the process-wide backend are never touched), the CSS is inline, and
nothing is loaded from anywhere. Every string that comes from the report is escaped (in the
HTML with `html.escape`, in the SVG by matplotlib's XML writer) and never read as matplotlib
mathtext. Missing sections say "no data" instead of failing.

Figures are drawn inside `matplotlib.rc_context` (font size, no mathtext, SVG text as text,
a fixed SVG id salt so the output is deterministic). That changes matplotlib's global
rcParams while a figure is drawn (restored after), so do not draw with pyplot in another
thread at the same moment.
"""

from __future__ import annotations

import html
import io
import itertools
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clients.views import (
    NONE,
    arm_cells,
    arm_headers,
    drift_rows,
    effect_interval,
    estimate_pct,
    example_rows,
    expected_time_text,
    level,
    metric_effect_text,
    ms,
    outlier_rows,
    p_value_text,
    pct,
    per_user_text,
    plan_text,
    recommendation_name,
    recommendation_text,
    segment_rows,
    sig,
    signed_pct,
    srm_rows,
    unit_text,
    users_text,
    verdict_label,
    verdict_name,
    verdict_text,
    when,
)
from sidecar._proto.sidecar.v1 import control_pb2 as cpb

if TYPE_CHECKING:  # matplotlib is the `report` extra: imported when a page is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["INSTALL_HINT", "ReportExtraMissing", "render_html", "require_matplotlib"]

#: How to get the HTML report's one dependency.
INSTALL_HINT = "pip install 'rollout-sidecar[report]'"
_NO_DATA = "no data"

# Okabe-Ito colours (readable with colour-blindness).
_A_COLOUR = "#0072B2"
_B_COLOUR = "#E69F00"
_BAND_COLOUR = "#56B4E9"
_MARK_COLOUR = "#D55E00"
_OK_COLOUR = "#009E73"
_GREY = "#777777"
_LEVEL_COLOURS = {
    "NONE": _OK_COLOUR,
    "MODERATE": _B_COLOUR,
    "MAJOR": _MARK_COLOUR,
    "INSUFFICIENT": "#BBBBBB",
}

#: Segment rows in one forest plot and features in the drift share plots, at most.
_MAX_SEGMENT_ROWS = 40
_MAX_PSI_ROWS = 40
_MAX_SHARE_PANELS = 12
_LABEL_WIDTH = 40
#: The smallest text in a plot (ticks, legends, bar labels), in points: readable on screen.
_TICK_SIZE = 8.5

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
max-width:1100px;padding:1rem 1.5rem 3rem;color:#1a1a1a;line-height:1.4}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
h3{margin:1.2rem 0 .4rem}.meta{color:#555;margin-top:0}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.25rem .55rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.warnings{border:2px solid #c0392b;background:#fdecea;padding:.6rem 1rem;margin:1rem 0;
border-radius:4px}.warnings h3{margin:0 0 .3rem;color:#c0392b}.warnings ul{margin:0}
.note{border-left:4px solid #e69f00;background:#fff8e6;padding:.4rem .8rem;margin:.6rem 0}
.verdict{display:inline-block;padding:.1rem .5rem;border-radius:3px;font-weight:600;
color:#fff;white-space:nowrap}.v-SHIP_B{background:#007a5a}.v-KEEP_A{background:#b03a2e}
.v-EQUIVALENT{background:#2c6e9b}.v-CONTINUE{background:#8a6d00}.v-BLOCKED{background:#5b2333}
.v-UNSPECIFIED{background:#777}.nodata{color:#777;font-style:italic}
figure{margin:.6rem 0 1rem}figcaption{color:#555;font-size:.85rem}
svg{max-width:100%;height:auto}.bad{color:#b03a2e;font-weight:600}.good{color:#007a5a}
footer{margin-top:3rem;color:#666;font-size:.85rem}
"""


# -- HTML helpers ----------------------------------------------------------------------------


class _Safe(str):
    """Markup built here from escaped parts: inserted as it is."""

    __slots__ = ()


def _e(value: object) -> str:
    """Any value as escaped HTML text (markup already made here passes through)."""
    if isinstance(value, _Safe):
        return value
    return html.escape(str(value), quote=True)


def _tag(name: str, content: object, cls: str = "") -> _Safe:
    attribute = f' class="{_e(cls)}"' if cls else ""
    return _Safe(f"<{name}{attribute}>{_e(content)}</{name}>")


def _table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], numeric: Iterable[int] = ()
) -> _Safe:
    numbers = set(numeric)
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    thead = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{_e(c)}</td>' if i in numbers else f"<td>{_e(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return _Safe(f"<table>{thead}<tbody>{body}</tbody></table>")


def _no_data(what: str = "") -> _Safe:
    return _tag("p", f"{what}: {_NO_DATA}" if what else _NO_DATA, "nodata")


def _badge(verdict: int, text: str | None = None) -> _Safe:
    return _tag("span", text or verdict_text(verdict), f"verdict v-{verdict_name(verdict)}")


def _figure(svg: str | None, caption: str, what: str) -> _Safe:
    if svg is None:
        return _no_data(what)
    return _Safe(f"<figure>{svg}<figcaption>{_e(caption)}</figcaption></figure>")


# -- matplotlib, on demand -------------------------------------------------------------------


class ReportExtraMissing(ImportError):
    """matplotlib is not installed: the HTML report needs the `report` extra."""

    def __init__(self) -> None:
        super().__init__(f"the HTML report needs matplotlib: {INSTALL_HINT}")


def require_matplotlib() -> None:
    """Import matplotlib now; raise `ReportExtraMissing` (saying how to install it) if absent."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ReportExtraMissing() from exc


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


# -- plots -----------------------------------------------------------------------------------


def _label(text: str, width: int = _LABEL_WIDTH) -> str:
    """Report text for a matplotlib label: on one line, shortened to `width` characters."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


_SVG_ID = re.compile(r'\bid="([^"]+)"')
_SVG_REFERENCE = re.compile(r'(href="#|url\(#)([^")]+)')


@dataclass
class _Plotter:
    """Draws figures to inline SVG; ids get a per-figure prefix so that several figures
    can share one HTML document."""

    count: int = 0

    def svg(self, draw: Callable[[Figure], None], size: tuple[float, float]) -> str:
        self.count += 1
        prefix = f"f{self.count}-"
        buffer = io.StringIO()
        import matplotlib
        from matplotlib.backends.backend_svg import FigureCanvasSVG
        from matplotlib.figure import Figure

        with matplotlib.rc_context(
            {
                "font.size": 9,
                "axes.titlesize": 10,
                "axes.labelsize": 9,
                "xtick.labelsize": _TICK_SIZE,
                "ytick.labelsize": _TICK_SIZE,
                "axes.spines.top": False,
                "axes.spines.right": False,
                "legend.fontsize": _TICK_SIZE,
                "legend.frameon": False,
                "text.parse_math": False,  # report text is never matplotlib mathtext
                "svg.fonttype": "none",  # text stays text: smaller, searchable, selectable
                "svg.hashsalt": f"sidecar-report-{self.count}",  # deterministic ids
            }
        ):
            figure = Figure(figsize=size, layout="constrained")
            FigureCanvasSVG(figure)
            draw(figure)
            figure.savefig(buffer, format="svg", metadata={"Date": None})
        text = buffer.getvalue()
        text = text[text.index("<svg") :]
        text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.DOTALL)
        text = _SVG_ID.sub(lambda m: f'id="{prefix}{m.group(1)}"', text)
        text = _SVG_REFERENCE.sub(lambda m: f"{m.group(1)}{prefix}{m.group(2)}", text)
        return text.strip()


def _scale(kind: str) -> float:
    return 100.0 if kind == "bool" else 1.0


def _effect_axis(kind: str) -> str:
    return "B - A (percentage points)" if kind == "bool" else "B - A"


def _effect_lines(ax: Axes, minimum_effect: float, scale: float, vertical: bool) -> None:
    line = ax.axvline if vertical else ax.axhline
    line(0, color="black", linewidth=0.8, label="no difference")
    if math.isfinite(minimum_effect) and minimum_effect > 0:
        line(
            minimum_effect * scale,
            color=_GREY,
            linestyle="--",
            linewidth=0.9,
            label="± minimum effect",
        )
        line(-minimum_effect * scale, color=_GREY, linestyle="--", linewidth=0.9)


def _informative(lower: float, upper: float, kind: str) -> bool:
    """An interval that says something: finite, and for a rate not the placeholder [-1, 1]
    (-100 pp to +100 pp) a test has before its first evaluated look."""
    if not _finite(lower, upper):
        return False
    return not (kind == "bool" and lower <= -1.0 and upper >= 1.0)


def _value_limits(
    values: Iterable[float], minimum_effect: float, scale: float
) -> tuple[float, float]:
    """Axis limits around the values and the ± minimum effect lines, with a margin."""
    points = [v for v in values if math.isfinite(v)]
    if math.isfinite(minimum_effect) and minimum_effect > 0:
        points += [minimum_effect * scale, -minimum_effect * scale]
    points.append(0.0)
    low, high = min(points), max(points)
    pad = (high - low) * 0.08 or 1.0
    return low - pad, high + pad


def _history_plot(plotter: _Plotter, m: cpb.MetricResult) -> str | None:
    looks = [
        h
        for h in m.history
        if math.isfinite(h.difference) and (h.n_control > 0 and h.n_treatment > 0)
    ]
    if not looks:
        return None
    kind, scale = m.kind or "number", _scale(m.kind)
    if any(h.n_control or h.n_treatment for h in looks):
        x = [(h.n_control + h.n_treatment) / 2 for h in looks]
        x_label = "outcomes per arm (mean of A and B)"
    else:
        start = looks[0].unix_time
        x = [(h.unix_time - start) / 60 for h in looks]
        x_label = "minutes since the first look"

    shown = [_informative(h.lower, h.upper, kind) for h in looks]

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        lower = [h.lower * scale if ok else math.nan for h, ok in zip(looks, shown, strict=True)]
        upper = [h.upper * scale if ok else math.nan for h, ok in zip(looks, shown, strict=True)]
        ax.fill_between(
            x,
            lower,
            upper,
            where=shown,
            color=_BAND_COLOUR,
            alpha=0.35,
            linewidth=0,
            label="anytime-valid interval" if any(shown) else "no interval yet",
        )
        ax.plot(
            x,
            [h.difference * scale for h in looks],
            color=_A_COLOUR,
            marker="o",
            markersize=2.5,
            linewidth=1.3,
            label="difference B - A",
        )
        if len(looks) == 1 and shown[0]:
            ax.errorbar(
                x,
                [looks[0].difference * scale],
                yerr=[
                    [max(0.0, (looks[0].difference - looks[0].lower) * scale)],
                    [max(0.0, (looks[0].upper - looks[0].difference) * scale)],
                ],
                color=_BAND_COLOUR,
                capsize=5,
                fmt="none",
            )
        _effect_lines(ax, m.minimum_effect, scale, vertical=False)
        ax.set_ylim(
            *_value_limits(
                [*lower, *upper, *(h.difference * scale for h in looks)], m.minimum_effect, scale
            )
        )
        ax.set_xlabel(x_label)
        ax.set_ylabel(_effect_axis(kind))
        ax.set_title(f"{_label(m.metric)}: difference with its anytime-valid interval, per look")
        ax.legend(loc="best")

    return plotter.svg(draw, (7.2, 3.3))


def _arms_plot(plotter: _Plotter, m: cpb.MetricResult) -> str | None:
    arms = [
        (
            f"A: {_label(m.control.variant or 'control', 24)}\nn={m.control.n}"
            f"\nusers={m.control.users}",
            m.control,
            _A_COLOUR,
        ),
        (
            f"B: {_label(m.treatment.variant or 'treatment', 24)}\nn={m.treatment.n}"
            f"\nusers={m.treatment.users}",
            m.treatment,
            _B_COLOUR,
        ),
    ]
    arms = [a for a in arms if a[1].HasField("value") and _finite(a[1].value.value)]
    if not arms:
        return None
    kind, scale = m.kind or "number", _scale(m.kind)

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        for i, (_, arm, colour) in enumerate(arms):
            v = arm.value
            low = v.lower if math.isfinite(v.lower) else v.value
            high = v.upper if math.isfinite(v.upper) else v.value
            ax.errorbar(
                [i],
                [v.value * scale],
                yerr=[[max(0.0, (v.value - low) * scale)], [max(0.0, (high - v.value) * scale)]],
                fmt="o",
                color=colour,
                capsize=8,
                markersize=7,
                elinewidth=2,
            )
        ax.set_xticks(range(len(arms)), [a[0] for a in arms])
        ax.set_xlim(-0.6, len(arms) - 0.4)
        ax.set_ylabel("rate (%)" if kind == "bool" else "mean")
        ax.set_title(f"{_label(m.metric)}: per arm, with {level(arms[0][1].value)} intervals")

    return plotter.svg(draw, (3.6, 3.3))


@dataclass(frozen=True)
class _ForestRow:
    name: str
    estimate: cpb.Estimate | None  # None: no data in an arm
    significant: bool
    aggregate: bool


def _forest_rows(m: cpb.MetricResult) -> list[_ForestRow]:
    rows: list[_ForestRow] = []
    if m.HasField("difference") and _finite(m.difference.value) and m.control.n and m.treatment.n:
        rows.append(_ForestRow("all (aggregate)", m.difference, False, True))
    for s in m.segments[:_MAX_SEGMENT_ROWS]:
        name = _label(s.segment or NONE, 30) + (" *" if s.significant else "")
        has_data = (
            s.control.n > 0
            and s.treatment.n > 0
            and s.HasField("difference")
            and _finite(s.difference.value)
        )
        rows.append(_ForestRow(name, s.difference if has_data else None, s.significant, False))
    return rows


def _segments_plot(plotter: _Plotter, m: cpb.MetricResult) -> str | None:
    kind, scale = m.kind or "number", _scale(m.kind)
    rows = _forest_rows(m)
    if not any(not r.aggregate for r in rows):
        return None
    values: list[float] = []
    for r in rows:
        if r.estimate is None:
            continue
        values.append(r.estimate.value * scale)
        if _informative(r.estimate.lower, r.estimate.upper, kind):
            values += [r.estimate.lower * scale, r.estimate.upper * scale]
    limits = _value_limits(values, m.minimum_effect, scale)

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        y = list(range(len(rows)))[::-1]
        for pos, row in zip(y, rows, strict=True):
            est = row.estimate
            if est is None:
                ax.annotate(
                    _NO_DATA, (0.5, pos), xycoords=("axes fraction", "data"), ha="center",
                    va="center", color=_GREY, fontstyle="italic",
                )  # fmt: skip
                continue
            colour = _MARK_COLOUR if row.significant else ("black" if row.aggregate else _A_COLOUR)
            marker = "D" if row.significant or row.aggregate else "o"
            if _informative(est.lower, est.upper, kind):
                xerr = [
                    [max(0.0, (est.value - est.lower) * scale)],
                    [max(0.0, (est.upper - est.value) * scale)],
                ]
                ax.errorbar(
                    [est.value * scale], [pos], xerr=xerr, fmt=marker, color=colour, capsize=3,
                    markersize=5 if row.significant else 4,
                )  # fmt: skip
            else:  # the point without the placeholder interval
                ax.plot([est.value * scale], [pos], marker, color=colour, markersize=4)
                ax.annotate(
                    "no interval yet", (est.value * scale, pos), textcoords="offset points",
                    xytext=(6, 0), va="center", color=_GREY,
                )  # fmt: skip
        ax.set_yticks(y, [r.name for r in rows])
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.set_xlim(*limits)
        _effect_lines(ax, m.minimum_effect, scale, vertical=True)
        ax.set_xlabel(_effect_axis(kind) + ", anytime-valid interval")
        correction = f" ({_label(m.correction, 10)}-adjusted)" if m.correction else ""
        ax.set_title(f"{_label(m.metric)}: segments; * = significant{correction}, in red")

    return plotter.svg(draw, (7.2, 1.3 + 0.32 * len(rows)))


def _srm_plot(plotter: _Plotter, report: cpb.ExperimentReport) -> str | None:
    arms = [a for a in report.srm.arms if _finite(a.observed_share, a.expected_share)]
    if not arms:
        return None
    srm = report.srm

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        x = range(len(arms))
        width = 0.38
        observed = ax.bar(
            [i - width / 2 for i in x],
            [a.observed_share * 100 for a in arms],
            width,
            color=_MARK_COLOUR if srm.mismatch else _A_COLOUR,
            label="observed",
        )
        ax.bar(
            [i + width / 2 for i in x],
            [a.expected_share * 100 for a in arms],
            width,
            color="#BBBBBB",
            label="expected (weights)",
        )
        ax.bar_label(observed, labels=[str(a.observed) for a in arms], padding=2)
        ax.set_xticks(list(x), [_label(a.variant or NONE, 24) for a in arms])
        counted = "users" if srm.unit == "user" else "requests"
        ax.set_ylabel(f"share of assigned {counted} (%)")
        verdict = "MISMATCH" if srm.mismatch else "ok"
        ax.set_title(f"sample ratio: {verdict} (p = {p_value_text(srm.p_value)})")
        ax.legend(loc="upper right")
        ax.margins(y=0.15)

    return plotter.svg(draw, (4.8, 3.0))


def _interval_bar(ax: Axes, x: float, estimate: cpb.Estimate, colour: str, flip: bool) -> None:
    """A bar for a fraction with its interval; `flip` shows 1 - the estimate (agreement
    from a disagreement)."""
    value, lower, upper = estimate.value, estimate.lower, estimate.upper
    if flip:
        value, lower, upper = 1 - value, 1 - upper, 1 - lower
    lower = lower if math.isfinite(lower) else value
    upper = upper if math.isfinite(upper) else value
    ax.bar([x], [value * 100], 0.6, color=colour)
    ax.errorbar(
        [x],
        [value * 100],
        yerr=[[max(0.0, (value - lower) * 100)], [max(0.0, (upper - value) * 100)]],
        fmt="none",
        color="black",
        capsize=6,
    )
    ax.annotate(
        f"{value * 100:.1f}%",
        (x, upper * 100),
        textcoords="offset points",
        xytext=(0, 3),
        ha="center",
    )


def _latency_panel(ax: Axes, ratios: tuple[tuple[float, float], str], pairs: int) -> None:
    (p50, p95), source = ratios
    drawn = ax.bar(["p50", "p95"], [p50, p95], 0.6, color=[_A_COLOUR, _B_COLOUR])
    ax.bar_label(drawn, fmt="%.2fx", padding=2)
    ax.axhline(1.0, color="black", linewidth=0.8, label="as fast as primary")
    ax.set_ylim(0, max(1.2, p50, p95) * 1.18)
    ax.set_ylabel(source)
    ax.set_title(f"latency ratio ({pairs} pairs)")
    ax.legend(loc="lower right")


def _errors_panel(ax: Axes, shadow: cpb.ShadowReport) -> None:
    values = [shadow.error_rate * 100, shadow.primary_error_rate * 100]
    drawn = ax.bar(["shadow", "primary"], values, 0.6, color=[_MARK_COLOUR, _A_COLOUR])
    ax.bar_label(drawn, fmt="%.2f%%", padding=2)
    ax.set_ylabel("error rate (%)")
    top = max(values)
    ax.set_ylim(0, top * 1.25 if top > 0 else 1.0)  # never a negative axis
    if top == 0:
        ax.annotate(
            "no errors", (0.5, 0.5), xycoords="axes fraction", ha="center", color=_GREY,
            fontstyle="italic",
        )  # fmt: skip
    ax.set_title("errors")


def _latency_ratios(
    latency: cpb.LatencySummary,
) -> tuple[tuple[float, float], str] | None:
    """The latency ratios the rollout's shadow gate uses: shadow p50 / primary p50 and shadow
    p95 / primary p95 (the ratio of the p95s); the per-pair ratios' percentiles only when the
    p95s are missing, labelled as such."""
    p50s = (latency.shadow_p50_seconds, latency.primary_p50_seconds)
    p95s = (latency.shadow_p95_seconds, latency.primary_p95_seconds)
    if _finite(*p50s, *p95s) and p50s[1] > 0 and p95s[1] > 0:
        return (p50s[0] / p50s[1], p95s[0] / p95s[1]), "shadow / primary percentile"
    if _finite(latency.ratio_p50, latency.ratio_p95) and latency.ratio_p95 > 0:
        return (latency.ratio_p50, latency.ratio_p95), "per-pair ratio percentile"
    return None


def _agreement_bars(shadow: cpb.ShadowReport) -> list[tuple[str, cpb.Estimate, str, bool]]:
    bars: list[tuple[str, cpb.Estimate, str, bool]] = []
    if shadow.HasField("agreement") and _finite(shadow.agreement.value):
        bars.append(("shadow vs\nprimary", shadow.agreement, _A_COLOUR, False))
    elif shadow.compared:
        point = cpb.Estimate(value=shadow.agreement_rate, lower=math.nan, upper=math.nan)
        bars.append(("shadow vs\nprimary", point, _A_COLOUR, False))
    noise = shadow.noise
    if shadow.HasField("noise"):
        if noise.HasField("noise_disagreement") and _finite(noise.noise_disagreement.value):
            bars.append(("noise: primary\nvs itself", noise.noise_disagreement, "#BBBBBB", True))
        if noise.HasField("adjusted_disagreement") and _finite(noise.adjusted_disagreement.value):
            bars.append(("noise-\nadjusted", noise.adjusted_disagreement, _MARK_COLOUR, True))
    return bars


def _shadow_plot(plotter: _Plotter, shadow: cpb.ShadowReport) -> str | None:
    bars = _agreement_bars(shadow)
    latency = shadow.latency
    ratios = _latency_ratios(latency)
    has_latency = latency.count > 0 and ratios is not None
    has_errors = shadow.sent > 0 and _finite(shadow.error_rate, shadow.primary_error_rate)
    panels = [bool(bars), has_latency, has_errors]
    if not any(panels):
        return None

    def draw(figure: Figure) -> None:
        axes = iter(figure.subplots(1, sum(panels), squeeze=False)[0])
        if bars:
            ax = next(axes)
            for i, (_, estimate, colour, flip) in enumerate(bars):
                _interval_bar(ax, i, estimate, colour, flip)
            ax.set_xticks(range(len(bars)), [b[0] for b in bars])
            ax.set_ylim(0, 108)
            ax.set_ylabel("agreement (%)")
            ax.set_title("agreement, with intervals")
        if has_latency and ratios is not None:
            _latency_panel(next(axes), ratios, latency.count)
        if has_errors:
            _errors_panel(next(axes), shadow)

    return plotter.svg(draw, (2.6 + 2.4 * sum(panels), 3.1))


def _feature_label(f: cpb.DriftFeature) -> str:
    suffix = f" ({f.variant})" if f.variant else ""
    return _label(f"{f.name or NONE}{suffix}", 34)


def _psi_plot(plotter: _Plotter, drift: cpb.DriftReport) -> str | None:
    features = sorted(
        (f for f in drift.features if math.isfinite(f.psi)), key=lambda f: f.psi, reverse=True
    )[:_MAX_PSI_ROWS]
    if not features:
        return None
    moderate = drift.moderate_threshold or 0.1
    major = drift.major_threshold or 0.25

    def draw(figure: Figure) -> None:
        ax = figure.add_subplot()
        y = list(range(len(features)))[::-1]
        ax.barh(
            y,
            [f.psi for f in features],
            0.6,
            color=[_LEVEL_COLOURS.get(f.level.upper(), _GREY) for f in features],
        )
        ax.axvline(
            moderate, color=_B_COLOUR, linestyle="--", linewidth=1, label=f"moderate ({moderate:g})"
        )
        ax.axvline(
            major, color=_MARK_COLOUR, linestyle="--", linewidth=1, label=f"major ({major:g})"
        )
        ax.set_yticks(y, [_feature_label(f) for f in features])
        ax.set_xlabel("PSI (current window vs reference)")
        ax.set_title("drift per feature")
        ax.set_xlim(0, max(major * 1.2, max(f.psi for f in features) * 1.1))
        ax.legend(loc="lower right")

    return plotter.svg(draw, (7.2, 1.2 + 0.28 * len(features)))


def _bin_labels(f: cpb.DriftFeature, count: int) -> list[str]:
    edges = list(f.edges)
    if f.categorical and len(edges) == count - 1:  # one bin per category, then "other"
        return [sig(e) for e in edges] + ["other"]
    if f.categorical and len(edges) == count:
        return [sig(e) for e in edges]
    if not f.categorical and len(edges) == count - 1 and count > 1:
        inner = [f"[{sig(a)}, {sig(b)})" for a, b in itertools.pairwise(edges)]
        return [f"< {sig(edges[0])}", *inner, f"≥ {sig(edges[-1])}"]
    return [str(i + 1) for i in range(count)]


def _shares_plot(plotter: _Plotter, drift: cpb.DriftReport) -> str | None:
    features = sorted(
        (
            f
            for f in drift.features
            if f.reference_share and len(f.reference_share) == len(f.current_share)
        ),
        key=lambda f: f.psi if math.isfinite(f.psi) else -1.0,
        reverse=True,
    )[:_MAX_SHARE_PANELS]
    if not features:
        return None
    columns = min(3, len(features))
    rows = math.ceil(len(features) / columns)

    def draw(figure: Figure) -> None:
        grid = figure.subplots(rows, columns, squeeze=False)
        for index, ax in enumerate(grid.flat):
            if index >= len(features):
                ax.set_axis_off()
                continue
            f = features[index]
            count = len(f.reference_share)
            x = range(count)
            ax.bar(
                [i - 0.2 for i in x],
                [s * 100 for s in f.reference_share],
                0.4,
                color="#BBBBBB",
                label="reference",
            )
            ax.bar(
                [i + 0.2 for i in x],
                [s * 100 for s in f.current_share],
                0.4,
                color=_LEVEL_COLOURS.get(f.level.upper(), _A_COLOUR),
                label="current",
            )
            ax.set_xticks(list(x), _bin_labels(f, count), rotation=45, ha="right")
            psi = f"{f.psi:.3f}" if math.isfinite(f.psi) else NONE
            ax.set_title(f"{_feature_label(f)}: PSI {psi} {_label(f.level, 14)}", fontsize=9)
            ax.set_ylabel("share (%)")
            if index == 0:
                ax.legend(loc="upper right")

    return plotter.svg(draw, (7.6, 2.5 * rows + 0.3))


# -- sections --------------------------------------------------------------------------------


def _header(report: cpb.ExperimentReport) -> str:
    control = report.control_variant or NONE
    treatment = report.treatment_variant or NONE
    alpha = f"{report.alpha:g}" if report.alpha > 0 else NONE
    meta = (
        f"control (A) {control} vs treatment (B) {treatment} · epoch {report.epoch}, started "
        f"{when(report.started_unix_time)} · unit {report.unit or NONE} · alpha {alpha} · "
        f"{report.looks} looks, last {when(report.last_look_unix_time)} · generated "
        f"{when(report.generated_unix_time)} · revision {report.revision}"
    )
    heading = f"Experiment report: {_e(report.model)}" if report.model else "Experiment report"
    return f"<header><h1>{heading}</h1>{_tag('p', meta, 'meta')}</header>"


def _difference_text(m: cpb.MetricResult) -> str:
    if not m.HasField("difference"):
        return NONE
    kind = m.kind or "number"
    d = m.difference
    return f"{metric_effect_text(kind, d.value)} {effect_interval(kind, d)}"


def _summary(report: cpb.ExperimentReport) -> str:
    parts = ['<section id="summary"><h2>Decision summary</h2>']
    if report.warnings:
        items = "".join(f"<li>{_e(w)}</li>" for w in report.warnings)
        parts.append(f'<div class="warnings"><h3>Warnings</h3><ul>{items}</ul></div>')
    if report.metrics:
        rows = [
            [
                m.metric or NONE,
                _badge(m.verdict, verdict_label(m, report)),
                m.reason or NONE,
                _difference_text(m),
                p_value_text(m.p_value),
                expected_time_text(m),
            ]
            for m in report.metrics
        ]
        parts.append(
            _table(
                [
                    "metric",
                    "verdict",
                    "why",
                    "difference B - A [anytime-valid interval]",
                    "always-valid p",
                    "time to a decision",
                ],
                rows,
                numeric=(4,),
            )
        )
    else:
        parts.append(_no_data("metrics"))
    facts: list[str] = []
    srm = report.srm
    if report.HasField("srm") and srm.arms:
        facts.append(
            _Safe(
                '<span class="bad">sample ratio MISMATCH: every verdict is blocked</span>'
                if srm.mismatch
                else '<span class="good">sample ratio ok</span>'
            )
        )
    else:
        facts.append("sample ratio: no data")
    if report.HasField("segment_mix"):
        mix = report.segment_mix
        facts.append(
            _Safe('<span class="bad">segment mix MISMATCH: aggregate verdicts blocked</span>')
            if mix.mismatch
            else ("segment mix ok" if mix.checked else "segment mix: not checked yet")
        )
    shadow = report.shadow
    if shadow.shadow_variant:
        advice = recommendation_text(shadow.recommendation) or "no recommendation yet"
        facts.append(f"shadow ({shadow.shadow_variant}): {advice}")
    else:
        facts.append("shadow: no data")
    drift = report.drift
    if drift.enabled:
        facts.append(f"drift: worst level {drift.worst_level or NONE}")
    else:
        facts.append("drift: no data (disabled)")
    parts.append("<p>" + " · ".join(_e(f) for f in facts) + "</p>")
    parts.append("</section>")
    return "".join(parts)


def _arm_rows(m: cpb.MetricResult) -> list[list[object]]:
    kind = m.kind or "number"
    return [
        ["A (control)", *arm_cells(kind, m.control)],
        ["B (treatment)", *arm_cells(kind, m.treatment)],
    ]


def _metric_facts(report: cpb.ExperimentReport, m: cpb.MetricResult) -> list[list[object]]:
    kind = m.kind or "number"
    alpha = m.alpha or report.alpha or 0.05
    facts: list[list[object]] = []
    if m.HasField("difference"):
        d = m.difference
        facts.append(
            [
                f"difference B - A, anytime-valid {level(d, 1 - alpha)} interval",
                f"{_difference_text(m)}{f' ({d.method})' if d.method else ''}",
            ]
        )
    if m.HasField("relative_lift"):
        lift = m.relative_lift
        facts.append(
            [
                "relative lift (fixed-horizon interval: for reading, not deciding)",
                f"{signed_pct(lift.value)} [{signed_pct(lift.lower)}, {signed_pct(lift.upper)}]",
            ]
        )
    facts.append(["always-valid p-value", p_value_text(m.p_value)])
    facts.append(
        [
            "fixed-horizon p-value (NOT valid under repeated looks)",
            p_value_text(m.fixed_horizon_p_value),
        ]
    )
    facts.append(["unit of analysis", unit_text(m)])
    facts.append(["users per arm (A / B)", f"{users_text(m.control)} / {users_text(m.treatment)}"])
    facts.append(
        ["outcomes per user (A / B)", f"{per_user_text(m.control)} / {per_user_text(m.treatment)}"]
    )
    facts.append(["planned outcomes for the split", plan_text(m)])
    facts.append(["expected time to a decision", expected_time_text(m)])
    if m.verdict == cpb.VERDICT_CONTINUE:
        facts.append(
            [
                "still needed per arm (if the effect and variance hold)",
                m.additional_per_arm if m.additional_per_arm >= 0 else "cannot be estimated yet",
            ]
        )
    effect = metric_effect_text(kind, m.minimum_effect).lstrip("+")
    direction = "higher is better" if m.higher_is_better else "lower is better"
    facts.append(["metric", f"{kind}, {direction}, minimum effect ±{effect}"])
    if math.isfinite(m.tau_squared) and m.tau_squared > 0:
        facts.append(["mixing variance τ²", f"{m.tau_squared:.4g}"])
    return facts


def _segment_table(m: cpb.MetricResult) -> str:
    kind = m.kind or "number"
    rows = [
        [
            r.segment,
            r.n,
            r.values,
            r.difference,
            r.p,
            r.adjusted_p,
            _Safe('<span class="bad">yes</span>') if r.significant else "no",
            r.winner,
        ]
        for r in segment_rows(kind, m.segments)
    ]
    correction = m.correction or "adjusted"
    return _table(
        [
            "segment",
            "n A / B",
            "A / B",
            "difference B - A [interval]",
            "p",
            f"p ({correction})",
            "significant",
            "winner",
        ],
        rows,
        numeric=(4, 5),
    )


def _metric_section(
    plotter: _Plotter, report: cpb.ExperimentReport, index: int, m: cpb.MetricResult
) -> str:
    parts = [
        f'<section id="metric-{index}" class="metric">',
        f"<h2>Metric {_e(m.metric or NONE)}</h2>",
        "<p>",
        _badge(m.verdict, verdict_label(m, report)),
        f" {_e(m.reason)}" if m.reason else "",
        "</p>",
    ]
    if m.simpson_warning:
        parts.append(
            f'<div class="warnings"><h3>Simpson\'s paradox</h3>{_tag("p", m.simpson_warning)}</div>'
        )
    kind = m.kind or "number"
    arm_level = level(m.control.value) if m.control.HasField("value") else "95%"
    parts.append(
        _table(["arm", *arm_headers(kind, arm_level)], _arm_rows(m), numeric=(2, 3, 4, 5, 6))
    )
    parts.append(_table(["", ""], _metric_facts(report, m)))
    history_note = (
        "no looks in this report: none yet, or left out with --no-history"
        if not m.history
        else "no usable looks yet"
    )
    parts.append(
        _figure(
            _history_plot(plotter, m),
            "The difference B - A at each look with its anytime-valid interval (the band): "
            "valid however often it is looked at. Ship B once the band is above 0, Keep A "
            "once below 0, Equivalent once inside the dashed ± minimum effect lines.",
            f"difference over time ({history_note})",
        )
    )
    parts.append(
        _figure(
            _arms_plot(plotter, m),
            "Each arm's value with its interval.",
            "per-arm values",
        )
    )
    parts.append("<h3>Segments</h3>")
    if m.segments:
        parts.append(
            _figure(
                _segments_plot(plotter, m),
                "Differences B - A per segment with their intervals; significant segments "
                "(after the adjustment over the segment family) in red, marked *. The "
                "aggregate is the black diamond on top."
                + (
                    f" The plot shows the first {_MAX_SEGMENT_ROWS} segments; the table has all."
                    if len(m.segments) > _MAX_SEGMENT_ROWS
                    else ""
                ),
                "segment plot",
            )
        )
        parts.append(_segment_table(m))
    else:
        parts.append(_no_data("segments"))
    parts.append("</section>")
    return "".join(str(p) for p in parts)


def _srm_section(plotter: _Plotter, report: cpb.ExperimentReport) -> str:
    parts = ['<section id="srm"><h2>Sample ratio check</h2>']
    srm = report.srm
    if not report.HasField("srm") or not srm.arms:
        parts.append(_no_data("sample ratio check"))
        parts.append("</section>")
        return "".join(parts)
    if srm.mismatch:
        parts.append(
            '<p class="bad">MISMATCH: the traffic split does not match the weights; every '
            "verdict is blocked until the cause is found.</p>"
        )
    else:
        parts.append('<p class="good">ok: the traffic split matches the weights.</p>')
    if srm.detail:
        parts.append(_tag("p", srm.detail))
    parts.append(
        _table(
            ["variant", "arm", "observed", "observed share", "expected share"],
            srm_rows(report),
            numeric=(2, 3, 4),
        )
    )
    chi = f"{srm.chi_square:.4g}" if math.isfinite(srm.chi_square) else "∞"
    parts.append(
        _tag(
            "p",
            f"chi-square {chi}; the decision uses the exact p {p_value_text(srm.p_value)}, "
            f"mismatch when p < {srm.threshold:g}",
        )
    )
    parts.append(
        _figure(_srm_plot(plotter, report), "Observed against expected share per arm.", "SRM plot")
    )
    parts.append("<h3>Segment mix</h3>")
    if report.HasField("segment_mix"):
        mix = report.segment_mix
        cls = "bad" if mix.mismatch else ("good" if mix.checked else "nodata")
        parts.append(_tag("p", mix.detail or NONE, cls))
    else:
        parts.append(_no_data("segment mix (no declared segments or no users yet)"))
    parts.append("</section>")
    return "".join(parts)


def _shadow_facts(s: cpb.ShadowReport) -> list[list[object]]:
    """The shadow's counts, agreement, noise adjustment, error rates and latency."""
    rows: list[list[object]] = [
        ["shadow variant / comparator", f"{s.shadow_variant} / {s.comparator or NONE}"],
        [
            "sampled / sent / dropped / in flight",
            f"{s.sampled} / {s.sent} / {s.dropped} / {s.in_flight}",
        ],
    ]
    if s.compared:
        agreement = pct(s.agreement_rate)
        if s.HasField("agreement"):
            a = s.agreement
            agreement += f" [{pct(a.lower)}, {pct(a.upper)}] ({level(a)} {a.method})".rstrip()
        rows.append(["compared / agreed / agreement", f"{s.compared} / {s.agreed} / {agreement}"])
    else:
        rows.append(["compared", "0 (nothing compared yet)"])
    if s.HasField("noise"):
        n = s.noise
        rows.append(
            ["noise mirror (primary vs itself): compared / agreed", f"{n.compared} / {n.agreed}"]
        )
        for label, field in (
            ("noise disagreement", "noise_disagreement"),
            ("candidate disagreement", "candidate_disagreement"),
            ("noise-adjusted disagreement (candidate - noise)", "adjusted_disagreement"),
        ):
            if n.HasField(field):
                rows.append([label, estimate_pct(getattr(n, field))])
    rows.append(
        ["error rate: shadow / primary", f"{pct(s.error_rate)} / {pct(s.primary_error_rate)}"]
    )
    if s.errors_by_status:
        rows.append(
            ["shadow errors", ", ".join(f"{k} {v}" for k, v in sorted(s.errors_by_status.items()))]
        )
    lat = s.latency
    if lat.count:
        for name, primary, shadow in (
            ("p50", lat.primary_p50_seconds, lat.shadow_p50_seconds),
            ("p95", lat.primary_p95_seconds, lat.shadow_p95_seconds),
        ):
            ratio = f"{shadow / primary:.2f}x" if _finite(primary, shadow) and primary else NONE
            rows.append(
                [
                    f"latency {name} primary / shadow / ratio",
                    f"{ms(primary)} / {ms(shadow)} / {ratio}",
                ]
            )
        rows.append(
            [
                "per-pair shadow/primary ratio, p50 / p95 (not the gate's measure)",
                f"{lat.ratio_p50:.2f}x / {lat.ratio_p95:.2f}x",
            ]
        )
    return rows


def _shadow_examples(s: cpb.ShadowReport) -> list[str]:
    """The slowest shadow calls and the recent disagreements, as tables."""
    parts: list[str] = []
    if s.latency_outliers:
        parts.append("<h3>Slowest shadow calls relative to the primary</h3>")
        parts.append(
            _table(
                ["time", "request", "key", "primary", "shadow", "ratio"],
                outlier_rows(s.latency_outliers),
                numeric=(3, 4, 5),
            )
        )
    if s.examples:
        parts.append("<h3>Recent disagreements (newest last)</h3>")
        parts.append(
            _table(
                [
                    "time",
                    "request",
                    "key",
                    "primary variant",
                    "what differed",
                    "primary output",
                    "shadow output",
                ],
                example_rows(s.examples),
            )
        )
    return parts


def _shadow_section(plotter: _Plotter, report: cpb.ExperimentReport) -> str:
    parts = ['<section id="shadow"><h2>Shadow comparison</h2>']
    s = report.shadow
    if not s.shadow_variant:
        parts.append(_no_data("shadow (no shadow variant configured)"))
        parts.append("</section>")
        return "".join(parts)
    name = recommendation_name(s.recommendation)
    advice = recommendation_text(s.recommendation)
    if advice is not None:
        cls = "good" if name == "PROMOTE_TO_CANARY" else "bad"
        parts.append(f'<p>Recommendation: <span class="{cls}">{_e(advice)}</span></p>')
    if s.reasons:
        parts.append("<ul>" + "".join(f"<li>{_e(r)}</li>" for r in s.reasons) + "</ul>")
    parts.append(_table(["", ""], _shadow_facts(s)))
    parts.append(
        _figure(
            _shadow_plot(plotter, s),
            "Agreement with its interval (noise-adjusted: 1 - the candidate's disagreement "
            "beyond the primary model's own), the shadow/primary latency ratios and the "
            "error rates.",
            "shadow plots",
        )
    )
    parts.extend(_shadow_examples(s))
    parts.append("</section>")
    return "".join(str(p) for p in parts)


def _drift_section(plotter: _Plotter, report: cpb.ExperimentReport) -> str:
    parts = ['<section id="drift"><h2>Drift</h2>']
    d = report.drift
    if not d.enabled:
        parts.append(_no_data("drift (disabled)"))
        parts.append("</section>")
        return "".join(parts)
    facts = (
        f"worst level {d.worst_level or NONE} · PSI moderate ≥ {d.moderate_threshold:g}, major "
        f"≥ {d.major_threshold:g} · sampled {d.sampled}, dropped {d.dropped}"
        + (f" · compared with {d.reference}" if d.reference else "")
    )
    parts.append(_tag("p", facts))
    if not d.features:
        parts.append(_no_data("drift features"))
        parts.append("</section>")
        return "".join(parts)
    parts.append(
        _figure(
            _psi_plot(plotter, d),
            "PSI per feature (inputs) and per variant's predictions, with the moderate and "
            "major thresholds."
            + (
                f" The plot shows the {_MAX_PSI_ROWS} highest; the table has all."
                if len(d.features) > _MAX_PSI_ROWS
                else ""
            ),
            "PSI plot",
        )
    )
    parts.append(
        _figure(
            _shares_plot(plotter, d),
            f"Reference against current share per bin (at most {_MAX_SHARE_PANELS} features, "
            "the highest PSI first).",
            "share plots",
        )
    )
    parts.append(
        _table(
            ["feature", "kind", "variant", "n ref", "n cur", "PSI", "level", "KS D", "KS p"],
            drift_rows(d),
            numeric=(3, 4, 5, 7, 8),
        )
    )
    parts.append("</section>")
    return "".join(str(p) for p in parts)


_FOOTER = (
    "Intervals of the difference are anytime-valid (mixture SPRT confidence sequences): they "
    "stay valid however often the report is read, and the verdicts are taken from them. The "
    "fixed-horizon p-value and the relative lift interval are shown for reading only; they "
    "are not valid under repeated looks."
)


def render_html(report: cpb.ExperimentReport) -> str:
    """The report as one self-contained HTML page (inline SVG plots, inline CSS).

    Raises `ReportExtraMissing` when matplotlib is not installed (the `report` extra)."""
    require_matplotlib()
    plotter = _Plotter()
    title = (
        f"Experiment report{f' ({report.model})' if report.model else ''}: "
        f"{report.control_variant or NONE} vs "
        f"{report.treatment_variant or NONE} (epoch {report.epoch})"
    )
    sections = [
        _header(report),
        _summary(report),
        *(_metric_section(plotter, report, i, m) for i, m in enumerate(report.metrics, start=1)),
    ]
    if not report.metrics:
        sections.append(
            '<section id="metrics"><h2>Metrics</h2>' + _no_data("metrics") + "</section>"
        )
    sections.append(_srm_section(plotter, report))
    sections.append(_shadow_section(plotter, report))
    sections.append(_drift_section(plotter, report))
    sections.append(f"<footer>{_e(_FOOTER)}</footer>")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
