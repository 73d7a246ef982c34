"""Line charts as inline SVG, so a report is one file that opens anywhere, offline, with no JavaScript."""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

WIDTH, PLOT_HEIGHT = 560, 220
LEFT, RIGHT, TOP = 64, 16, 34
LEGEND_ROW, CHAR_WIDTH = 16, 7.0  # legend layout: row height and the average width of an 11px character
MAX_POINTS = 1500  # per series; longer logs are thinned so a long run's report stays a few MiB
MARKERS_UP_TO = 25  # series this short get a dot (with a tooltip) at each point

# Okabe-Ito (colour-blind safe), then a few darker extras for charts with many series.
COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#8C564B", "#7F7F7F", "#BCBD22")
DASHES = ("", "7 4", "2 3", "9 3 2 3")  # one per overlaid run, so runs differ even in grey print

CHART_CSS = """
svg.chart { max-width: 100%; height: auto; display: block; }
svg .title { font-size: 13px; font-weight: 600; } svg .tick { font-size: 10px; fill: #555; }
svg .axis { font-size: 11px; fill: #333; } svg .legend { font-size: 11px; fill: #222; }
svg .frame { fill: none; stroke: #bbb; } svg .grid { stroke: #eee; }
svg .series { stroke-width: 1.8; stroke-linejoin: round; } svg .key { stroke-width: 2.5; }
svg line.reference { stroke: #888; stroke-dasharray: 4 3; } svg text.reference { font-size: 10px; fill: #666; }
"""  # the page's <style> carries it: charts are drawn with classes, not per-element attributes


@dataclass
class Series:
    """One line: `points` are ``(x, y)`` pairs sorted by x."""

    label: str
    points: list[tuple[float, float]]
    color: str = COLORS[0]
    dash: str = ""


@dataclass
class Reference:
    """A horizontal line across the chart, e.g. the teacher's accuracy on a student's accuracy curve."""

    label: str
    value: float


def style(index: int, run: int) -> tuple[str, str]:
    """Colour and dash pattern of the `index`-th series of a chart, which belongs to overlaid run `run`."""
    return COLORS[index % len(COLORS)], DASHES[run % len(DASHES)]


def line_chart(
    title: str,
    series: list[Series],
    x_label: str,
    references: list[Reference] | None = None,
    log_y: bool = False,
) -> str:
    """An ``<svg>`` with axes, ticks, one ``<polyline>`` per series, optional reference lines and a legend;
    `series` hold at least one point between them.

    `log_y` draws the y axis in decades (every y must then be positive): losses that fall a hundredfold
    otherwise flatten into the x axis after the first steps. A lone series named like the chart has no legend.
    """
    references = references or []
    y_of = math.log10 if log_y else float
    series = [Series(s.label, thin(s.points), s.color, s.dash) for s in series if s.points]
    shown = [Series(s.label, [(x, y_of(y)) for x, y in s.points], s.color, s.dash) for s in series]
    refs = [r for r in references if not log_y or r.value > 0]
    xs = [x for s in shown for x, _ in s.points]
    ys = [y for s in shown for _, y in s.points] + [y_of(r.value) for r in refs]
    x_lo, x_hi = _domain(xs, pad=0.0)
    y_lo, y_hi = _domain(ys, pad=0.05)
    x_ticks = _linear_ticks(x_lo, x_hi, whole=all(x == int(x) for x in xs))
    y_ticks = _log_ticks(y_lo, y_hi) if log_y else _linear_ticks(y_lo, y_hi)
    keyed = [] if len(series) == 1 and series[0].label == title else series
    legend, legend_height = _legend(keyed, TOP + PLOT_HEIGHT + 56)
    parts = [
        f'<text class="title" x="{LEFT}" y="20">{escape(title)}{" (log scale)" if log_y else ""}</text>',
        *_axes(x_lo, x_hi, y_lo, y_hi, x_ticks, y_ticks, x_label),
        *(_reference(r, y_of(r.value), y_lo, y_hi) for r in refs),
        *(_series(s, raw.points, x_lo, x_hi, y_lo, y_hi) for s, raw in zip(shown, series, strict=True)),
        *legend,
    ]
    total = TOP + PLOT_HEIGHT + 46 + legend_height
    return (
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {total}" '
        f'width="{WIDTH}" height="{total}" role="img"><title>{escape(title)}</title>' + "".join(parts) + "</svg>"
    )


def thin(points: list[tuple[float, float]], limit: int = MAX_POINTS) -> list[tuple[float, float]]:
    """Every k-th point (and always the last) when there are more than `limit`."""
    if len(points) <= limit:
        return points
    stride = math.ceil(len(points) / limit)
    kept = points[::stride]
    return kept if kept[-1] == points[-1] else [*kept, points[-1]]


def nice_ticks(lo: float, hi: float, count: int = 6, min_step: float = 0.0) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart, at least `min_step`) inside ``[lo, hi]``."""
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = max(next(m * power for m in (1, 2, 5, 10) if m * power >= raw), min_step)
    first = math.ceil(lo / step - 1e-9)
    return [round(i * step, 12) for i in range(first, math.floor(hi / step + 1e-9) + 1)]


def tick_label(value: float, step: float) -> str:
    """As many decimals as the tick spacing needs; k / M for large numbers, scientific notation for tiny ones."""
    magnitude = max(abs(value), step)
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if magnitude >= 10 * size:
            return f"{value / size:g}{unit}"
    if magnitude < 1e-3:
        return f"{value:.2g}"
    return f"{value:.{max(0, -math.floor(math.log10(step)))}f}"


def _domain(values: list[float], pad: float) -> tuple[float, float]:
    """Data range, widened by `pad` of itself; a single value gets a range around it."""
    lo, hi = min(values), max(values)
    if hi == lo:
        half = abs(lo) * 0.1 or 1.0
        return lo - half, hi + half
    margin = (hi - lo) * pad
    return lo - margin, hi + margin


def _sx(x: float, lo: float, hi: float) -> float:
    return LEFT + (x - lo) / (hi - lo) * (WIDTH - LEFT - RIGHT)


def _sy(y: float, lo: float, hi: float) -> float:
    return TOP + (hi - y) / (hi - lo) * PLOT_HEIGHT


def _linear_ticks(lo: float, hi: float, whole: bool = False) -> list[tuple[float, str]]:
    """(position, label) of round ticks; `whole`: data of whole numbers (epochs, steps) gets whole ticks."""
    ticks = nice_ticks(lo, hi, min_step=1.0 if whole else 0.0)
    spacing = ticks[1] - ticks[0] if len(ticks) > 1 else abs(ticks[0]) or 1.0
    return [(t, tick_label(t, spacing)) for t in ticks]


def _log_ticks(lo: float, hi: float) -> list[tuple[float, str]]:
    """(log10 position, label) of each power of ten in ``[lo, hi]`` (log10 units), and of 2x and 5x over a
    range of under three decades, so even a short range has ticks."""
    multiples = (1,) if hi - lo > 3 else (1, 2, 5)
    values = [m * 10.0**d for d in range(math.floor(lo), math.ceil(hi) + 1) for m in multiples]
    return [(math.log10(v), tick_label(v, v)) for v in values if lo <= math.log10(v) <= hi]


def _axes(
    x_lo: float,
    x_hi: float,
    y_lo: float,
    y_hi: float,
    x_ticks: list[tuple[float, str]],
    y_ticks: list[tuple[float, str]],
    x_label: str,
) -> list[str]:
    """Frame, grid lines with tick labels on both axes, and the x-axis label."""
    bottom, right = TOP + PLOT_HEIGHT, WIDTH - RIGHT
    parts = [f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{right - LEFT}" height="{PLOT_HEIGHT}"/>']
    for tick, label in x_ticks:
        x = _sx(tick, x_lo, x_hi)
        parts.append(f'<line class="grid" x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{bottom}"/>')
        parts.append(f'<text class="tick" x="{x:.1f}" y="{bottom + 14}" text-anchor="middle">{label}</text>')
    for tick, label in y_ticks:
        y = _sy(tick, y_lo, y_hi)
        parts.append(f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}"/>')
        parts.append(f'<text class="tick" x="{LEFT - 5}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    parts.append(
        f'<text class="axis" x="{(LEFT + right) / 2}" y="{bottom + 32}" text-anchor="middle">{escape(x_label)}</text>'
    )
    return parts


def _series(s: Series, values: list[tuple[float, float]], x_lo: float, x_hi: float, y_lo: float, y_hi: float) -> str:
    """The polyline of `s` (in axis units; its tooltip names the series) and, for short series, a dot per point
    whose tooltip gives the point's value in `values`."""
    coords = [(_sx(x, x_lo, x_hi), _sy(y, y_lo, y_hi)) for x, y in s.points]
    dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
    out = (
        f'<polyline class="series" fill="none" stroke="{s.color}"{dash} '
        f'points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in coords)}"><title>{escape(s.label)}</title></polyline>'
    )
    if len(coords) <= MARKERS_UP_TO:
        out += "".join(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="2.5" fill="{s.color}"><title>{escape(s.label)}: '
            f"{x:g}, {y:.5g}</title></circle>"
            for (cx, cy), (x, y) in zip(coords, values, strict=True)
        )
    return out


def _reference(ref: Reference, at: float, y_lo: float, y_hi: float) -> str:
    y = _sy(at, y_lo, y_hi)
    text = escape(f"{ref.label} {ref.value:.4g}")
    return (
        f'<line class="reference" x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}"/>'
        f'<text class="reference" x="{WIDTH - RIGHT - 4}" y="{y - 4:.1f}" text-anchor="end">{text}</text>'
    )


def _legend(series: list[Series], top: float) -> tuple[list[str], float]:
    """Legend entries flowed left to right under the plot; returns the parts and the height they take."""
    parts, x, y = [], float(LEFT), top
    for s in series:
        width = 30 + len(s.label) * CHAR_WIDTH + 16
        if x + width > WIDTH and x > LEFT:
            x, y = float(LEFT), y + LEGEND_ROW
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        parts.append(
            f'<line class="key" x1="{x:.1f}" y1="{y - 4}" x2="{x + 24:.1f}" y2="{y - 4}" stroke="{s.color}"{dash}/>'
            f'<text class="legend" x="{x + 30:.1f}" y="{y}">{escape(s.label)}</text>'
        )
        x += width
    return parts, (y - top + LEGEND_ROW if series else 0)
