"""The server-drawn chart (duly.web.svg): structure, numbers, accessibility, escaping."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from markupsafe import Markup

from duly.web.svg import ChartDay, nice_ticks, outcome_chart

NS = "{http://www.w3.org/2000/svg}"


def days() -> list[ChartDay]:
    return [
        ChartDay("2026-03-08", "Sun 08", "Sun 08 Mar", {"sent": 5, "failed": 1}),
        ChartDay("2026-03-09", "Mon 09", "Mon 09 Mar", {}),
        ChartDay(
            "2026-03-10",
            "Tue 10",
            "Tue 10 Mar",
            {"sent": 12, "skipped": 3, "cancelled": 2, "set": 9},
        ),
    ]


def test_nice_ticks_cover_the_top_with_round_steps() -> None:
    assert nice_ticks(0) == [0, 1]
    assert nice_ticks(7) == [0, 2, 4, 6, 8]
    assert nice_ticks(17) == [0, 5, 10, 15, 20]
    assert nice_ticks(1234)[-1] >= 1234
    for top in (1, 3, 9, 10, 11, 99, 101, 5000, 123456):
        ticks = nice_ticks(top)
        assert ticks[0] == 0 and ticks[-1] >= top and len(ticks) <= 7
        steps = {b - a for a, b in zip(ticks, ticks[1:], strict=False)}
        assert len(steps) == 1


def test_one_group_per_day_with_a_title_per_segment() -> None:
    svg = outcome_chart(days())
    assert isinstance(svg, Markup)
    root = ET.fromstring(str(svg))  # well-formed XML
    assert root.get("role") == "img"
    groups = root.findall(f"{NS}g")
    assert [g.get("data-day") for g in groups] == ["2026-03-08", "2026-03-09", "2026-03-10"]
    first = groups[0]
    assert first.find(f"{NS}title").text == (  # type: ignore[union-attr]
        "Sun 08 Mar: 6 deliveries (5 sent, 1 failed, 0 skipped, 0 cancelled)"
    )
    segs = {r.get("class"): r.find(f"{NS}title").text for r in first.findall(f"{NS}rect")}  # type: ignore[union-attr]
    assert segs == {"seg seg-sent": "Sun 08 Mar: 5 sent", "seg seg-failed": "Sun 08 Mar: 1 failed"}
    assert groups[1].findall(f"{NS}rect") == []  # an empty day: no bar, still a group
    # "set" is not one of the four outcomes drawn
    assert len(groups[2].findall(f"{NS}rect")) == 3
    label = root.get("aria-label") or ""
    assert "17 sent, 1 failed, 3 skipped, 2 cancelled" in label
    assert "busiest day Tue 10 Mar with 17" in label


def test_bars_are_stacked_to_scale() -> None:
    root = ET.fromstring(str(outcome_chart(days())))
    tue = root.findall(f"{NS}g")[2]
    rects = tue.findall(f"{NS}rect")
    heights = [float(r.get("height") or 0) for r in rects]
    # 12 : 3 : 2 as drawn
    assert abs(heights[0] / heights[1] - 4) < 0.01 and abs(heights[1] / heights[2] - 1.5) < 0.01
    # stacked: each segment sits on the one below
    for below, above in zip(rects, rects[1:], strict=False):
        assert (
            abs(
                float(above.get("y") or 0)
                + float(above.get("height") or 0)
                - float(below.get("y") or 0)
            )
            < 0.2
        )


def test_no_style_attributes_and_text_is_escaped() -> None:
    hostile = [ChartDay('"><script>x</script>', "<b>", "<img src=x onerror=alert(1)>", {"sent": 1})]
    svg = str(outcome_chart(hostile, title="<i>t</i>"))
    assert "<script>" not in svg and "<img" not in svg and "<b>" not in svg and "<i>" not in svg
    assert "&lt;img src=x onerror=alert(1)&gt;" in svg
    assert "style=" not in svg
    assert re.search(r'fill="#[0-9a-f]{6}"', svg)
    ET.fromstring(svg)


def test_an_empty_chart_is_still_a_chart() -> None:
    root = ET.fromstring(str(outcome_chart([])))
    assert root.get("role") == "img" and root.findall(f"{NS}g") == []
