"""The colours of duly.css meet WCAG 2.1 AA contrast (4.5:1 for text) on the backgrounds
they are used on: state badges, messages, buttons, navigation, muted text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CSS = (Path(__file__).parents[2] / "src" / "duly" / "web" / "static" / "duly.css").read_text()
VARS = dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{6}\b|#[0-9a-fA-F]{3}\b)", CSS))


def _colour(v: str) -> str:
    v = VARS[v[2:]] if v.startswith("--") else v
    return "#" + "".join(c * 2 for c in v[1:]) if len(v) == 4 else v


def _luminance(hex_: str) -> float:
    def ch(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (int(hex_[i : i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * ch(r) + 0.7152 * ch(g) + 0.0722 * ch(b)


def contrast(a: str, b: str) -> float:
    la, lb = sorted((_luminance(_colour(a)), _luminance(_colour(b))), reverse=True)
    return (la + 0.05) / (lb + 0.05)


PAIRS = [
    # text, background, where
    ("--fg", "--bg", "body text"),
    ("--muted", "--bg", "muted text on the page"),
    ("--muted", "--card", "muted text on a card"),
    ("--blue", "--card", "links"),
    ("--green", "--green-bg", "sent badge"),
    ("--blue", "--blue-bg", "pending badge"),
    ("--purple", "--purple-bg", "sending badge"),
    ("--amber", "--amber-bg", "overdue badge"),
    ("--red", "--red-bg", "failed badge, error message"),
    ("--grey", "--grey-bg", "skipped and cancelled badges"),
    ("--teal", "--teal-bg", "set badge"),
    ("--red", "--card", "field errors"),
    ("#ffffff", "--blue", "primary button"),
    ("#d5deea", "#14243b", "navigation links"),
    ("#173f7d", "--blue-bg", "info message"),
]


@pytest.mark.parametrize(("fg", "bg", "where"), PAIRS, ids=[p[2] for p in PAIRS])
def test_text_contrast_is_at_least_aa(fg: str, bg: str, where: str) -> None:
    assert contrast(fg, bg) >= 4.5, f"{where}: {contrast(fg, bg):.2f}:1"


def test_the_check_itself() -> None:
    assert round(contrast("#000000", "#ffffff"), 1) == 21.0
    assert contrast("#777777", "#ffffff") < 4.5  # a grey that fails AA
