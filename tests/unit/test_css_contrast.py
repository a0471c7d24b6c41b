"""The colours of duly.css meet WCAG 2.1 AA contrast (4.5:1 for text) on the backgrounds
they are used on: state badges, messages, buttons, navigation, muted text; in the light
palette and in the dark one (``prefers-color-scheme: dark``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CSS = (Path(__file__).parents[2] / "src" / "duly" / "web" / "static" / "duly.css").read_text()
VAR_RE = r"--([\w-]+):\s*(#[0-9a-fA-F]{6}\b|#[0-9a-fA-F]{3}\b)"
_DARK_AT = CSS.index("@media (prefers-color-scheme: dark)")
LIGHT = dict(re.findall(VAR_RE, CSS[:_DARK_AT]))
# the dark palette overrides some variables; the rest keep their light values
DARK = {**LIGHT, **dict(re.findall(VAR_RE, CSS[_DARK_AT : CSS.index("\n}\n", _DARK_AT)]))}
PALETTES = {"light": LIGHT, "dark": DARK}
VARS = LIGHT


def _colour(v: str, palette: dict[str, str] | None = None) -> str:
    v = (palette or VARS)[v[2:]] if v.startswith("--") else v
    return "#" + "".join(c * 2 for c in v[1:]) if len(v) == 4 else v


def _luminance(hex_: str) -> float:
    def ch(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (int(hex_[i : i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * ch(r) + 0.7152 * ch(g) + 0.0722 * ch(b)


def contrast(a: str, b: str, palette: dict[str, str] | None = None) -> float:
    la, lb = sorted(
        (_luminance(_colour(a, palette)), _luminance(_colour(b, palette))), reverse=True
    )
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
    ("--on-blue", "--blue", "primary button"),
    ("--nav-fg", "--nav-bg", "navigation links"),
    ("#ffffff", "--nav-bg", "brand and current page"),
    ("--nav-fg", "--role-bg", "role badge"),
    ("--info", "--blue-bg", "info message"),
    ("--fg", "--card", "text on a card"),
    ("--fg", "--input-bg", "text in a field"),
    ("--muted", "--head-bg", "table headings"),
    ("--fg", "--hover-bg", "a row under the pointer"),
    ("--fg", "--pre-bg", "code blocks"),
    ("--blue", "--bg", "links on the page"),
]


@pytest.mark.parametrize("palette", ["light", "dark"])
@pytest.mark.parametrize(("fg", "bg", "where"), PAIRS, ids=[p[2] for p in PAIRS])
def test_text_contrast_is_at_least_aa(fg: str, bg: str, where: str, palette: str) -> None:
    ratio = contrast(fg, bg, PALETTES[palette])
    assert ratio >= 4.5, f"{where} ({palette}): {ratio:.2f}:1"


def test_the_dark_palette_redefines_the_surfaces() -> None:
    for name in ("bg", "fg", "card", "muted", "input-bg", "head-bg"):
        assert DARK[name] != LIGHT[name], name
    assert contrast("--bg", "#000000", DARK) < 2  # a dark page, not a light one


def test_the_check_itself() -> None:
    assert round(contrast("#000000", "#ffffff"), 1) == 21.0
    assert contrast("#777777", "#ffffff") < 4.5  # a grey that fails AA
