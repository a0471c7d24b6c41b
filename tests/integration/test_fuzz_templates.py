"""Fuzzing the template save check (:meth:`TemplateStore.check`, what every save through
the API and the UI runs first): Jinja sources built from the template language — text,
``{{ }}`` with the context's names, attribute chains, duly's helpers (date, money, …) and
Jinja's filters, ``if``/``for``/``set``/``macro`` blocks, a ``Subject:`` line — with hostile
pieces: NUL, lone surrogates, huge numbers, unclosed and stray tags, dunder attributes,
includes and imports of other files, recursive macros. Whatever the source, the check
returns warnings or raises its own :class:`TemplateInvalid`; nothing else escapes.

What it finds in the renderer (render.py, templates_db.py: another owner) is kept out of
the fuzzing (``known_bug``) and pinned by a deterministic ``xfail(strict=True)`` test until
fixed.

Bounded for CI: a fixed seed, 250 examples, no shrinking, well under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from duly.core.rules.loader import load_rules
from duly.delivery.templates import CONTEXT_NAMES, TemplateInvalid, TemplateStore
from duly.engine.runtime import BUNDLED_RULES
from duly.store.db import make_engine

SEED = 20261204
NAME = "invoice-due-soon"
NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def store(
    tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
) -> Iterator[TemplateStore]:
    import shutil

    path = tmp_path_factory.mktemp("templates") / "duly.db"
    shutil.copyfile(sqlite_template, path)
    db = make_engine(f"sqlite:///{path}")
    rf = load_rules(str(BUNDLED_RULES))
    yield TemplateStore(db, Path(BUNDLED_RULES).parent / "templates", rules=rf)
    db.dispose()


NAMES = sorted(CONTEXT_NAMES) + ["x", "missing", "range", "lipsum", "cycler", "namespace"]
ATTRS = ["key", "name", "amount", "due_at", "attributes", "email", "__class__", "mro",
         "__globals__", "items", "format", "\x00", "é"]  # fmt: skip
FILTERS = ["date", "time", "datetime", "money", "number", "relative", "upper", "length",
           "default('x')", "int", "float", "round", "join(',')", "safe", "e", "tojson",
           "attr('__class__')", "format('%s')", "truncate(5)", "nope", "map('upper')"]  # fmt: skip
SCALARS = ["1", "0", "-1", "99999999999999999999999999", "1e309", "1.5", "'x'", '"\x00"',
           "'\ud800'", "none", "true", "[]", "{}", "[1, 2]", "{'a': 1}", "'9999-12-31'",
           "'0001-01-01T00:00:00+14:00'", "(1, 2)", "1 / 0", "'a' ~ 1"]  # fmt: skip
RAW = ["{{", "}}", "{%", "%}", "{#", "#}", "{% endif %}", "{% endfor %}", "{% raw %}",
       "\x00", "\ud800", "\r\n", "\t", "Subject:", "Subject: {{", "{{ }}", "{% %}",
       "{% include 'invoice-overdue.email.txt' %}", "{% include 'x' %}",
       "{% extends 'invoice-overdue.email.txt' %}", "{% import 'nope' as n %}",
       "{% from 'invoice-overdue.email.txt' import x %}",
       "{% macro m(n) %}{{ m(n) }}{% endmacro %}{{ m(1) }}"]  # fmt: skip


@st.composite
def expr(draw: st.DrawFn, depth: int = 0) -> str:
    base = draw(
        st.one_of(
            st.sampled_from(SCALARS),
            st.builds(
                lambda n, a: n + "".join("." + x for x in a),
                st.sampled_from(NAMES),
                st.lists(st.sampled_from(ATTRS), max_size=3),
            ),
        )
    )
    if depth < 3 and draw(st.integers(0, 3)) == 0:
        op = draw(st.sampled_from(["+", "-", "*", "~", "==", "<", "and", "or", "in", "%"]))
        base = f"({base} {op} {draw(expr(depth + 1))})"
    for f in draw(st.lists(st.sampled_from(FILTERS), max_size=2)):
        base = f"{base}|{f}"
    return base


@st.composite
def piece(draw: st.DrawFn, depth: int = 0) -> str:
    kind = draw(st.integers(0, 7 if depth < 2 else 3))
    if kind == 0:
        return draw(st.text(max_size=20))
    if kind == 1:
        return "{{ " + draw(expr()) + " }}"
    if kind == 2:
        return draw(st.sampled_from(RAW))
    if kind == 3:
        return "{% set v = " + draw(expr()) + " %}{{ v }}"
    inner = "".join(draw(st.lists(piece(depth + 1), max_size=3)))
    if kind == 4:
        return "{% if " + draw(expr()) + " %}" + inner + "{% else %}x{% endif %}"
    if kind == 5:
        return "{% for i in " + draw(expr()) + " %}" + inner + "{% endfor %}"
    if kind == 6:
        return "{% macro f(a) %}" + inner + "{% endmacro %}{{ f(1) }}"
    return "(" * draw(st.integers(1, 40)) + inner + ")" * draw(st.integers(0, 40))


@st.composite
def source(draw: st.DrawFn) -> str:
    body = "".join(draw(st.lists(piece(), max_size=6)))
    if draw(st.booleans()):
        body = "Subject: " + draw(piece()) + "\n\n" + body
    return body


def check(store: TemplateStore, ext: str, body: str) -> None:
    try:
        warnings = store.check(NAME, {f"{NAME}.email.{ext}": body}, NOW)
    except TemplateInvalid as exc:
        assert exc.field or str(exc), exc
        str(exc).encode("utf-8", "surrogatepass")
        return
    assert all(isinstance(w, str) for w in warnings), warnings


def known_bug(body: str) -> str | None:
    """The known renderer bug ``body`` would hit (see the xfail tests), or None. (None left:
    expressions nested ~1,000 deep, a RecursionError out of check(), are refused now.)"""
    return None


@seed(SEED)
@settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)
@given(body=source(), ext=st.sampled_from(["txt", "html"]))
def test_any_template_is_saved_or_refused_with_template_invalid(
    store: TemplateStore, body: str, ext: str
) -> None:
    if known_bug(body):
        return
    check(store, ext, body)


@pytest.mark.parametrize("body", RAW, ids=range(len(RAW)))
def test_raw_pieces_are_saved_or_refused(store: TemplateStore, body: str) -> None:
    check(store, "txt", body)


def test_deeply_nested_expressions_are_refused(store: TemplateStore) -> None:
    with pytest.raises(TemplateInvalid):
        store.check(NAME, {f"{NAME}.email.txt": "{{ " + "(" * 1000 + "1" + ")" * 1000 + " }}"},
                    NOW)  # fmt: skip
