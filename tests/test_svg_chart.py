"""The SVG charts (workbench.widgets.svg_chart): what a reader of the picture sees.

Every chart is parsed as XML (a browser shows nothing for a malformed SVG) and read back as
the words and lines on it: tick labels, legend, markers, where a line is drawn and where not.
"""

from __future__ import annotations

import base64
import itertools
import math
import re
import xml.etree.ElementTree as ET

import pytest

from workbench.train.lr_finder import LRFinderResult
from workbench.widgets import _snapshot, lr_finder_panel, svg_chart
from workbench.widgets.svg_chart import bar_chart, histogram_chart, line_chart, svg_img

NS = "{http://www.w3.org/2000/svg}"
NAN = float("nan")
BAD = '<script>alert("x")</script>'


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{NS}svg"
    return root


def x_tick_labels(svg: str) -> list[str]:
    """The words under the x axis, left to right."""
    root = parse(svg)
    baseline = str(int(root.get("height")) - 40 + 16)
    texts = [t for t in root.iter(f"{NS}text") if t.get("y") == baseline and t.text]
    return [t.text for t in sorted(texts, key=lambda t: float(t.get("x")))]


def y_tick_labels(svg: str) -> list[str]:
    """The words beside the y axis, bottom to top."""
    texts = [t for t in parse(svg).iter(f"{NS}text") if t.get("text-anchor") == "end"]
    return [t.text for t in sorted(texts, key=lambda t: -float(t.get("y")))]


def runs(svg: str, name: str) -> list[list[tuple[float, float]]]:
    """The pieces of the line of series ``name``: each a list of pixel points."""
    (path,) = [p for p in parse(svg).iter(f"{NS}path") if p.get("data-label") == name]
    pieces = re.findall(r"M[^M]+", path.get("d"))
    return [
        [(float(x), float(y)) for x, y in re.findall(r"[ML]([-\d.]+) ([-\d.]+)", piece)]
        for piece in pieces
    ]


def dots(svg: str) -> list[tuple[float, float]]:
    return [(float(c.get("cx")), float(c.get("cy"))) for c in parse(svg).iter(f"{NS}circle")]


def texts(svg: str) -> list[str]:
    return [t.text or "" for t in parse(svg).iter(f"{NS}text")]


# -- axes ------------------------------------------------------------------------------------
def test_a_log_axis_has_its_ticks_at_powers_of_ten():
    lrs = [10 ** (-6 + 6 * i / 29) for i in range(30)]
    svg = line_chart([{"name": "loss", "x": lrs, "y": [5 - i / 10 for i in range(30)]}], log_x=True)
    assert x_tick_labels(svg) == ["1e-6", "1e-5", "1e-4", "1e-3", "1e-2", "1e-1", "1e0"]
    # evenly spaced: each decade the same width on the page
    ticks = sorted(
        float(t.get("x"))
        for t in parse(svg).iter(f"{NS}text")
        if t.text in {"1e-6", "1e-5", "1e-4"}
    )
    assert ticks[1] - ticks[0] == pytest.approx(ticks[2] - ticks[1], abs=0.11)
    # so are the points of a sweep whose rates are a constant ratio apart
    (points,) = runs(svg, "loss")
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(points)]
    assert max(gaps) - min(gaps) < 0.11


def test_a_long_log_axis_shows_at_most_nine_powers_and_a_short_one_shows_1_2_5():
    wide = line_chart([{"name": "a", "x": [1e-12, 1.0], "y": [1, 2]}], log_x=True)
    assert x_tick_labels(wide) == ["1e-12", "1e-10", "1e-8", "1e-6", "1e-4", "1e-2", "1e0"]
    short = line_chart([{"name": "a", "x": [2e-4, 8e-3], "y": [1, 2]}], log_x=True)
    assert x_tick_labels(short) == ["2e-4", "5e-4", "1e-3", "2e-3", "5e-3"]


def test_a_linear_axis_has_round_tick_labels():
    svg = line_chart([{"name": "loss", "x": [0, 100], "y": [0.0, 3.0]}])
    assert x_tick_labels(svg) == ["0", "25", "50", "75", "100"]
    assert y_tick_labels(svg) == ["0", "1", "2", "3"]


def test_values_beyond_the_y_range_are_drawn_at_its_edge():
    svg = line_chart(
        [{"name": "loss", "x": [1, 2, 3], "y": [1.0, 2.0, 40.0]}],
        y_range=(0.5, 2.5),
    )
    assert y_tick_labels(svg) == ["0.5", "1", "1.5", "2", "2.5"]
    (points,) = runs(svg, "loss")
    top = float(parse(svg).find(f"{NS}rect[@stroke='#ccc']").get("y"))
    assert points[2][1] == pytest.approx(top, abs=0.06)  # 40 sits on the top edge


# -- lines, gaps and dots --------------------------------------------------------------------
def test_a_nan_breaks_the_line_and_skip_joins_over_it():
    series = [{"name": "loss", "x": [1, 2, 3, 4, 5], "y": [3.0, 2.5, NAN, 1.5, 1.0]}]
    broken = runs(line_chart(series), "loss")
    assert [len(piece) for piece in broken] == [2, 2]
    joined = runs(line_chart(series, gaps="skip"), "loss")
    assert [len(piece) for piece in joined] == [4]
    assert joined[0] == broken[0] + broken[1]  # the same points, one line through them


def test_a_point_alone_between_gaps_is_a_dot_and_a_series_of_dots_is_dotted():
    svg = line_chart([{"name": "loss", "x": [1, 2, 3, 4, 5], "y": [3.0, NAN, 2.0, math.inf, 1.0]}])
    assert len(dots(svg)) == 3 and not [p for p in parse(svg).iter(f"{NS}path")]
    svg = line_chart([{"name": "eval", "x": [1, 2, 3], "y": [3.0, 2.0, 1.0], "dots": True}])
    (points,) = runs(svg, "eval")
    assert dots(svg) == points


def test_points_a_log_axis_cannot_show_are_left_out_of_the_line():
    svg = line_chart([{"name": "a", "x": [0.0, 1e-3, 1e-2, 1e-1], "y": [9, 3, 2, 1]}], log_x=True)
    assert [len(piece) for piece in runs(svg, "a")] == [3]


def test_a_long_series_is_thinned_keeping_its_last_point_and_its_gaps():
    n = 10_000
    ys = [1.0 + i / n for i in range(n)]
    ys[5000] = NAN
    svg = line_chart([{"name": "loss", "x": list(range(n)), "y": ys}], markers=[{"x": n - 1}])
    pieces = runs(svg, "loss")
    assert len(pieces) == 2  # the one NaN still breaks the line
    assert sum(len(p) for p in pieces) <= svg_chart.MAX_POINTS
    (last,) = [g[0] for g in parse(svg).iter(f"{NS}g") if g.get("class") == "wb-chart-marker"]
    assert pieces[-1][-1][0] == float(last.get("x1"))  # the line reaches the last step


def test_thinning_keeps_a_spike_and_a_dip_of_one_step():
    n = 10_000
    ys = [2.0] * n
    ys[7777], ys[1234] = 50.0, 0.5  # one diverging step, one lucky batch
    svg = line_chart([{"name": "loss", "x": list(range(n)), "y": ys}])
    (drawn,) = runs(svg, "loss")
    assert len(drawn) <= svg_chart.MAX_POINTS
    frame_ys = sorted({y for _, y in drawn})  # pixels: the top is the highest loss
    assert len(frame_ys) == 3  # the flat line, the spike's peak and the dip's bottom
    spike, flat, dip = frame_ys
    assert spike < flat < dip
    xs = [x for x, y in drawn if y == spike], [x for x, y in drawn if y == dip]
    assert len(xs[0]) == 1 and len(xs[1]) == 1


def test_an_empty_chart_says_so():
    for series in ([], [{"name": "loss", "x": [1, 2], "y": [NAN, NAN]}]):
        svg = line_chart(series, title="loss")
        assert "no data yet" in texts(svg) and "loss" in texts(svg)


# -- markers and legend ----------------------------------------------------------------------
def test_a_marker_stands_on_its_point_with_a_dot_and_a_label():
    xs, ys = [1e-4, 1e-3, 1e-2], [3.0, 2.0, 2.5]
    svg = line_chart(
        [{"name": "smoothed", "x": xs, "y": ys}],
        log_x=True,
        markers=[{"x": 1e-3, "y": 2.0, "label": "suggested 1.0e-3", "color": "#d62728"}],
    )
    (group,) = [g for g in parse(svg).iter(f"{NS}g") if g.get("class") == "wb-chart-marker"]
    assert float(group.get("data-x")) == 1e-3
    line, dot, label = list(group)
    assert line.get("stroke-dasharray") and label.text == "suggested 1.0e-3"
    (points,) = runs(svg, "smoothed")
    assert float(line.get("x1")) == points[1][0] == float(dot.get("cx"))
    assert float(dot.get("cy")) == points[1][1]


def test_markers_outside_the_x_range_are_left_out():
    svg = line_chart(
        [{"name": "a", "x": [10, 20], "y": [1, 2]}],
        markers=[{"x": 15}, {"x": 500}, {"x": NAN}],
    )
    found = [g.get("data-x") for g in parse(svg).iter(f"{NS}g") if g.get("class")]
    assert found == ["15"]


def test_the_legend_names_every_drawn_series_in_its_style():
    svg = line_chart(
        [
            {"name": "train loss", "x": [1, 2], "y": [2, 1], "opacity": 0.35},
            {"name": "parent", "x": [1, 2], "y": [3, 2], "dash": True, "color": "#123456"},
            {"name": "nothing yet", "x": [], "y": []},
        ]
    )
    names = texts(svg)
    assert "train loss" in names and "parent" in names and "nothing yet" not in names
    legend = [line for line in parse(svg).iter(f"{NS}line") if line.get("y1") == "31"]
    assert [line.get("stroke") for line in legend] == [svg_chart.PALETTE[0], "#123456"]
    assert legend[1].get("stroke-dasharray") and not legend[0].get("stroke-dasharray")
    assert float(legend[0].get("stroke-opacity")) == 0.5  # faint lines stay readable here


# -- escaping and self-containment -----------------------------------------------------------
def test_every_text_in_every_chart_is_escaped():
    charts = [
        line_chart(
            [{"name": BAD, "x": [1, 2], "y": [1, 2], "color": '"><script>'}],
            title=BAD,
            x_label=BAD,
            y_label=BAD,
            markers=[{"x": 1.5, "label": BAD, "color": '"><script>'}],
        ),
        bar_chart([BAD], [{"name": BAD, "values": [1.0], "color": '"><script>'}], title=BAD),
        histogram_chart([1, 2], [0, 1, 2], title=BAD, x_label=BAD, y_label=BAD),
    ]
    for svg in charts:
        root = parse(svg)  # still well-formed
        assert "<script" not in svg and "href" not in svg
        assert svg.count("http") == 1  # the SVG namespace only
        assert BAD in texts(svg)  # the words shown as written
        assert not list(root.iter(f"{NS}script"))
    line = charts[0]
    assert [t for t in texts(line) if t == BAD] == [BAD] * 5  # title, axes, legend, marker
    root = parse(line)
    assert root.get("aria-label") == root.find(f"{NS}title").text == BAD


def test_svg_img_is_a_data_uri_image_of_the_chart():
    svg = line_chart([{"name": "loss", "x": [1, 2], "y": [2, 1]}], title="loss")
    tag = svg_img(svg, 'loss "curve" <b>')
    data = re.search(r'src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', tag).group(1)
    assert base64.b64decode(data).decode() == svg
    assert 'alt="loss &quot;curve&quot; &lt;b&gt;"' in tag and 'width="560"' in tag


# -- one writer for every caller -------------------------------------------------------------
def test_the_snapshot_and_the_lr_finder_draw_with_this_module():
    assert _snapshot.line_chart is line_chart and _snapshot.svg_img is svg_img
    assert _snapshot.bar_chart is bar_chart and _snapshot.histogram_chart is histogram_chart
    assert lr_finder_panel.line_chart is line_chart
    result = LRFinderResult.from_curve([1e-4, 1e-3, 1e-2], [3.0, 1.0, 0.9], 0.0)
    root = parse(lr_finder_panel.LRFinderPanel(result).svg())
    assert root.get("class") == "wb-chart"
    lines = root.iter(f"{NS}path")
    labels = [p.get("data-label") for p in lines if p.get("class") == "wb-chart-line"]
    assert labels == ["loss", "smoothed"]
    markers = [g for g in root.iter(f"{NS}g") if g.get("class") == "wb-chart-marker"]
    assert [g.get("data-x") for g in markers] == [str(result.suggested_lr)]
