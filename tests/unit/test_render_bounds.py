"""Bounded rendering, the in-process half: the rule file's ``render:`` key, and the sandbox
refusing, before it runs, an operation that would build a huge value in one C-level step
(the render processes bound the rest: tests/integration/test_render_limits.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from duly.core.model import RenderLimits
from duly.core.rules.loader import RuleFileError, load_rules_text
from duly.delivery.rendering import Renderer, RenderError, RenderLimitExceeded

# --------------------------------------------------------------------------- the rule file


def test_render_limits_default_and_are_read_with_units() -> None:
    assert load_rules_text("rules: []\n").render == RenderLimits(2.0, 10_000_000, 256_000_000, 2)
    rf = load_rules_text(
        "render:\n  timeout: 500ms\n  max_output: 1MiB\n  max_memory: 1GB\n  workers: 3\n"
        "rules: []\n"
    )
    assert rf.render == RenderLimits(0.5, 1_048_576, 1_000_000_000, 3)
    assert load_rules_text("render: {timeout: 1m, max_output: 2000}\nrules: []\n").render == (
        RenderLimits(timeout=60.0, max_output=2000)
    )


@pytest.mark.parametrize(
    ("section", "line", "says"),
    [
        ("render:\n  timeout: 2h", 3, "render.timeout: expected a time such as 2s"),
        ("render:\n  timeout: 10ms", 3, "render.timeout: expected 100ms to 300s, got 10ms"),
        ("render:\n  max_output: lots", 3, "render.max_output: expected a size such as 10MB"),
        ("render:\n  max_memory: 1MB", 3, "render.max_memory: expected 32MB to 64GB, got 1MB"),
        ("render:\n  workers: 0", 3, "render.workers: expected a whole number of at least 1"),
        ("render:\n  workers: 99", 3, "render.workers: expected 1 to 32, got 99"),
        ("render:\n  timout: 2s", 3, "render.timout: unknown key 'timout'"),
        ("render: 3", 2, "render: expected a mapping"),
    ],
)
def test_bad_render_limits_are_rule_file_errors_with_the_line(
    section: str, line: int, says: str
) -> None:
    with pytest.raises(RuleFileError) as info:
        load_rules_text(f"timezone: UTC\n{section}\nrules: []\n", path="duly.yaml")
    (err,) = info.value.errors
    assert err.line == line and says in str(err), str(err)


# --------------------------------------------------------------------------- the sandbox


@pytest.fixture
def render(tmp_path: Path):  # noqa: ANN201
    """Render a template body in this process (no render process): the sandbox alone."""

    def go(body: str, max_output: int = 100_000) -> str:
        (tmp_path / "t.email.txt").write_text(body)
        r = Renderer(tmp_path, limits=RenderLimits(max_output=max_output), isolated=False)
        out = r.render("t", "email", {"x": "abc"})
        return out.text or ""

    return go


@pytest.mark.parametrize(
    "body",
    [
        "{{ ('x' * 1000000000)|length }}",
        "{{ ([1] * 1000000000)|length }}",
        "{{ 10 ** 100000000 }}",
        "{{ '%999999999s' % 'x' }}",
        "{{ '%*s' % (999999999, 'x') }}",
        "{{ '%.999999999f' % 1 }}",
        "{{ '{:999999999}'.format('x') }}",
        "{{ '{a:999999999}'.format_map({'a': 1}) }}",
        "{{ '%999999999s'|format('x') }}",
        "{{ x.center(1000000000) }}",
        "{{ x.ljust(1000000000) }}",
        "{{ x.zfill(1000000000) }}",
        "{{ ('\t' * 1000).expandtabs(100000000) }}",
        "{% set s = 'y' * 50000 %}{{ s.replace('', s)|length }}",
        "{% set s = 'y' * 50000 %}{{ s|replace('y', s)|length }}",
        "{{ x|center(1000000000) }}",
        "{{ ('a\n' * 10000)|indent(1000000) }}",
        "{{ lipsum(100000) }}",
        "{% for i in range(100000) %}{{ 'z' * 100 }}{% endfor %}",
    ],
)
def test_the_sandbox_refuses_a_huge_value_before_building_it(render, body: str) -> None:  # noqa: ANN001
    t0 = time.monotonic()
    with pytest.raises(RenderLimitExceeded) as info:
        render(body)
    assert time.monotonic() - t0 < 1  # refused up front, never built
    assert info.value.limit == "render.max_output" and info.value.kind == "limit"
    assert "render.max_output" in str(info.value) and "t.email.txt" in str(info.value)


@pytest.mark.parametrize(
    ("body", "out"),
    [
        ("{{ 'ab' * 3 }}", "ababab"),
        ("{{ 2 ** 10 }} {{ 2.0 ** 0.5 > 1 }}", "1024 True"),
        ("{{ '%5s|%-3d|%.2f' % ('a', 7, 1.5) }}", "    a|7  |1.50"),
        ("{{ '{:>4}{}'.format('a', 1) }}", "   a1"),
        ("{{ x.center(7, '*') }} {{ x.replace('b', 'BB') }}", "**abc** aBBc"),
        ("{{ 'a\nb'|indent(2, first=true) }}", "  a\n  b"),
        ("{{ '%s-%s'|format(1, 2) }}", "1-2"),
    ],
)
def test_ordinary_use_of_those_operations_still_works(render, body: str, out: str) -> None:  # noqa: ANN001
    assert render(body) == out


def test_a_width_taken_from_an_argument_is_refused(render) -> None:  # noqa: ANN001
    with pytest.raises(RenderError, match="width taken from an argument"):
        render("{{ '{:{w}}'.format('x', w=999999999) }}")


def test_the_rendered_text_is_capped_while_streaming(render) -> None:  # noqa: ANN001
    with pytest.raises(RenderLimitExceeded, match="longer than 1,000 characters"):
        render("{% for i in range(1000) %}{{ i }}{% endfor %}", max_output=1000)
    assert len(render("{% for i in range(100) %}x{% endfor %}", max_output=1000)) == 100
