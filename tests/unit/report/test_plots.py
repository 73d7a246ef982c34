"""The SVG line chart: one polyline per series, coordinates that follow the data, ticks a person can read."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from kdforge.app.report.plots import Reference, Series, line_chart, nice_ticks, thin, tick_label

SVG = "{http://www.w3.org/2000/svg}"


def polylines(svg: str) -> list[list[tuple[float, float]]]:
    root = ET.fromstring(svg)
    return [
        [tuple(map(float, pair.split(","))) for pair in line.get("points").split()]
        for line in root.iter(f"{SVG}polyline")
    ]


def test_one_polyline_per_series_with_every_point() -> None:
    svg = line_chart(
        "loss",
        [Series("task", [(1, 3.0), (2, 2.0), (3, 1.5)]), Series("kd", [(1, 9.0), (2, 4.0)])],
        "step",
    )
    assert [len(line) for line in polylines(svg)] == [3, 2]
    root = ET.fromstring(svg)
    assert root.find(f"{SVG}title").text == "loss"
    assert {t.text for t in root.iter(f"{SVG}text")} >= {"loss", "task", "kd", "step"}


def test_coordinates_follow_the_data_monotonically() -> None:
    xs = [0, 1, 3, 7, 8, 20]
    ys = [5.0, -2.0, 0.5, 9.0, 3.0, 4.0]
    (line,) = polylines(line_chart("m", [Series("m", list(zip(xs, ys, strict=True)))], "epoch"))
    px, py = [p[0] for p in line], [p[1] for p in line]
    for i in range(len(xs)):
        for j in range(len(xs)):
            assert (xs[i] < xs[j]) == (px[i] < px[j])
            assert (ys[i] < ys[j]) == (py[i] > py[j])  # SVG's y grows downwards


def test_log_axis_keeps_order_and_spaces_decades_evenly() -> None:
    points = [(0, 10.0), (1, 1.0), (2, 0.1), (3, 0.05)]
    svg = line_chart("loss", [Series("loss", points)], "step", log_y=True)
    (line,) = polylines(svg)
    py = [p[1] for p in line]
    assert py[0] < py[1] < py[2] < py[3]
    assert py[1] - py[0] == pytest.approx(py[2] - py[1], abs=0.2)  # one decade = one fixed distance
    assert "(log scale)" in svg


def test_references_stretch_the_axis_and_are_labelled() -> None:
    svg = line_chart("val/acc1", [Series("student", [(1, 50.0), (2, 60.0)])], "epoch", [Reference("teacher", 90.0)])
    root = ET.fromstring(svg)
    ref = root.find(f"{SVG}line[@class='reference']")
    (line,) = polylines(svg)
    assert float(ref.get("y1")) < min(y for _, y in line)  # above the student's points
    assert any(t.text == "teacher 90" for t in root.iter(f"{SVG}text"))


def test_labels_are_escaped() -> None:
    svg = line_chart("<b>", [Series("<script>alert(1)</script>", [(0, 1.0), (1, 2.0)])], "x & y")
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    ET.fromstring(svg)  # still well-formed


def test_a_single_point_or_a_flat_series_still_gets_a_range() -> None:
    assert len(polylines(line_chart("w", [Series("w", [(1, 0.7)])], "epoch"))[0]) == 1
    assert len(polylines(line_chart("w", [Series("w", [(1, 0.0), (2, 0.0)])], "epoch"))[0]) == 2


def test_long_series_are_thinned_keeping_the_ends() -> None:
    points = [(float(i), float(i)) for i in range(10_001)]
    kept = thin(points, limit=1000)
    assert len(kept) <= 1001 and kept[0] == points[0] and kept[-1] == points[-1]
    assert thin(points[:10], limit=1000) == points[:10]


@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [(0, 10, [0, 2, 4, 6, 8, 10]), (0.13, 0.91, [0.2, 0.4, 0.6, 0.8]), (97.5, 100.2, [98, 99, 100])],
)
def test_nice_ticks(lo: float, hi: float, expected: list[float]) -> None:
    assert nice_ticks(lo, hi) == pytest.approx(expected)


def test_whole_numbered_data_gets_whole_ticks() -> None:
    root = ET.fromstring(line_chart("val/acc1", [Series("a", [(1, 50.0), (2, 60.0)])], "epoch"))
    x_ticks = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "tick" and t.get("text-anchor") == "middle"]
    assert x_ticks == ["1", "2"]
    assert nice_ticks(1, 2, min_step=1.0) == [1, 2]


def test_tick_labels() -> None:
    assert [tick_label(v, 0.2) for v in (0.2, 0.4)] == ["0.2", "0.4"]
    assert tick_label(20_000, 10_000) == "20k"
    assert tick_label(0.0005, 0.0005) == "0.0005"
    assert tick_label(100, 50) == "100"
