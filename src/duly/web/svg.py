"""Charts drawn by the server as SVG: no script, no style attributes (the pages' CSP allows
neither), every text escaped.

``outcome_chart(days)`` draws stacked bars of deliveries per day by outcome (sent, failed,
skipped, cancelled): one ``<g class="day">`` per day holding a ``<rect>`` per outcome with a
``<title>`` (the browser shows it on hover, screen readers read it), a y axis with a few
round ticks, the days under the bars and a legend. The ``<svg>`` has ``role="img"`` and an
``aria-label`` that sums the numbers up; pages put a table of the same numbers beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from markupsafe import Markup

__all__ = ["OUTCOMES", "ChartDay", "nice_ticks", "outcome_chart"]

# outcome -> (fill, label); fills meet 3:1 contrast against white (WCAG 1.4.11)
OUTCOMES: dict[str, tuple[str, str]] = {
    "sent": ("#1f8a4c", "sent"),
    "failed": ("#c0392b", "failed"),
    "skipped": ("#6b7685", "skipped"),
    "cancelled": ("#b07d12", "cancelled"),
}


@dataclass(frozen=True)
class ChartDay:
    """One bar: ``label`` under it (``Mon 23``), ``title`` in tooltips (``Mon 23 Nov``),
    ``key`` (ISO date) on its group, and its counts by outcome."""

    key: str
    label: str
    title: str
    counts: Mapping[str, int]

    @property
    def total(self) -> int:
        return sum(int(self.counts.get(o, 0)) for o in OUTCOMES)


def nice_ticks(top: int, n: int = 4) -> list[int]:
    """Round tick values from 0 to at least ``top`` (at most about ``n`` steps)."""
    if top <= 0:
        return [0, 1]
    raw = top / n
    step = magnitude = 1
    while magnitude * 10 <= raw:
        magnitude *= 10
    for mult in (1, 2, 5, 10):
        step = mult * magnitude
        if step >= raw:
            break
    step = max(1, step)
    ticks = [0]
    while ticks[-1] < top:
        ticks.append(ticks[-1] + step)
    return ticks


def _plural(n: int) -> str:
    return "delivery" if n == 1 else "deliveries"


def _segments_text(counts: Mapping[str, int]) -> str:
    parts = [f"{int(counts.get(o, 0))} {label}" for o, (_, label) in OUTCOMES.items()]
    return ", ".join(parts)


def outcome_chart(
    days: Sequence[ChartDay],
    *,
    title: str = "Deliveries per day by outcome",
    width: int = 560,
    height: int = 250,
) -> Markup:
    """Stacked bars of ``days`` (oldest first). Returns safe markup: every text is escaped."""
    left, right, top, bottom = 44, 10, 20, 58  # room for the y labels, x labels and legend
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((d.total for d in days), default=0)
    ticks = nice_ticks(peak)
    ymax = ticks[-1]
    totals = {o: sum(int(d.counts.get(o, 0)) for d in days) for o in OUTCOMES}
    summary = (
        f"{title}, {len(days)} days: "
        + ", ".join(f"{totals[o]} {label}" for o, (_, label) in OUTCOMES.items())
        + (f"; busiest day {max(days, key=lambda d: d.total).title} with {peak}" if peak else "")
        + "."
    )
    out: list[str] = []
    add = out.append
    add(
        Markup(
            '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" '
            'height="{h}" role="img" aria-label="{label}" class="outcome-chart">'
        ).format(w=width, h=height, label=summary)
    )
    add(Markup("<title>{}</title>").format(summary))
    # y axis: grid lines and labels
    for t in ticks:
        y = top + plot_h - (plot_h * t / ymax if ymax else 0)
        add(
            Markup(
                '<line x1="{x1}" x2="{x2}" y1="{y:.1f}" y2="{y:.1f}" stroke="{c}" class="{k}" '
                'stroke-width="1"/>'
            ).format(
                x1=left,
                x2=width - right,
                y=y,
                c="#9aa4b1" if t == 0 else "#e3e7ec",
                k="g-axis" if t == 0 else "g-grid",
            )
        )
        add(
            Markup(
                '<text x="{x}" y="{y:.1f}" text-anchor="end" font-size="12" fill="#5a6472" class="g-muted" '
                'dominant-baseline="middle">{t}</text>'
            ).format(x=left - 6, y=y, t=t)
        )
    # bars
    n = max(1, len(days))
    slot = plot_w / n
    bar_w = min(56.0, slot * 0.62)
    for i, d in enumerate(days):
        x = left + slot * i + (slot - bar_w) / 2
        add(Markup('<g class="day" data-day="{k}">').format(k=d.key))
        add(
            Markup("<title>{t}: {n} {what} ({parts})</title>").format(
                t=d.title, n=d.total, what=_plural(d.total), parts=_segments_text(d.counts)
            )
        )
        y = top + plot_h
        for o, (fill, label) in OUTCOMES.items():
            count = int(d.counts.get(o, 0))
            if count <= 0 or not ymax:
                continue
            h = plot_h * count / ymax
            y -= h
            add(
                Markup(
                    '<rect class="seg seg-{o}" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" '
                    'height="{h:.1f}" fill="{fill}"><title>{t}: {n} {label}</title></rect>'
                ).format(o=o, x=x, y=y, w=bar_w, h=h, fill=fill, t=d.title, n=count, label=label)
            )
        if d.total:
            add(
                Markup(
                    '<text x="{x:.1f}" y="{y:.1f}" text-anchor="middle" font-size="12" '
                    'fill="#1b2430" class="g-fg">{n}</text>'
                ).format(x=x + bar_w / 2, y=y - 4, n=d.total)
            )
        add(
            Markup(
                '<text x="{x:.1f}" y="{y}" text-anchor="middle" font-size="12" '
                'fill="#5a6472" class="g-muted">{label}</text>'
            ).format(x=x + bar_w / 2, y=top + plot_h + 16, label=d.label)
        )
        add(Markup("</g>"))
    # legend (words beside the colours: never colour alone)
    lx, ly = left, height - 14
    for o, (fill, label) in OUTCOMES.items():
        add(
            Markup(
                '<rect x="{x}" y="{y}" width="11" height="11" rx="2" fill="{fill}"/>'
                '<text x="{tx}" y="{ty}" font-size="12" fill="#1b2430" class="g-fg">{label} ({n})</text>'
            ).format(x=lx, y=ly - 9, fill=fill, tx=lx + 15, ty=ly, label=label, n=totals[o])
        )
        lx += 15 + 7 * (len(label) + len(str(totals[o])) + 3) + 12
    add(Markup("</svg>"))
    return Markup("").join(out)
