"""Fuzzing the timeline parser (the simulation's input: JSON lines, spec'd in the project's
simulation docs): lines built from the timeline format — every kind (recipient, subject,
delete, event, ack, fail, down) with its fields — with hostile values: extreme and malformed
instants, huge numbers, NaN, NUL, lone surrogates, deep nesting, wrong types; plus raw
text. Whatever the text, :func:`duly.engine.simulation.parse_timeline` returns lines or raises its
own :class:`SimulationError`; nothing else escapes.

Inputs the parser is known to mishandle are kept out of the fuzzing (``known_bug``) so it
stays strict for everything else; each has a deterministic test marked
``xfail(strict=True)`` that flips once the parser is fixed (simulate.py has its own owner).
Instants out of range, JSON nested too deep and over-long numbers were such bugs, fixed
since; their tests stay.

Bounded for CI: a fixed seed, 300 examples, no shrinking, a few seconds.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from duly.engine.simulation import KINDS, SimulationError, parse_timeline

SEED = 20261204

ODD_AT = [
    "2026-03-01T09:00:00Z", "2026-03-01T09:00:00+01:00", "2026-03-01T09:00:00",
    "2026-02-30T09:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "", "now",
    "indefinite", "2026-03-01T09:00:00\x00Z", "2026-03-01T09:00:00Z\ud800", 0, 1e308, None,
    [], {}, True,
]  # fmt: skip
OVERFLOWING_AT = ["9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00"]
ODD = [
    "", "\x00", "a\x00b", "\ud800", "x" * 3000, "a/b", "/", "a/", "/b", 0, -1, 10**30,
    1e308, float("nan"), float("inf"), True, None, [], {}, [1, [2, [3]]],
]  # fmt: skip


def deep(n: int) -> Any:
    v: Any = 1
    for i in range(n):
        v = {"a": v} if i % 2 else [v]
    return v


value = st.one_of(st.sampled_from(ODD), st.text(max_size=20), st.integers(1, 300).map(deep))
at = st.one_of(st.sampled_from(ODD_AT + OVERFLOWING_AT), value)


def obj(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[Any]:
    plain = st.fixed_dictionaries(
        {k: st.one_of(st.just(v), value) for k, v in required.items()},
        optional={k: st.one_of(st.just(v), value) for k, v in optional.items()},
    )
    return st.one_of(plain, value)


BODIES: dict[str, st.SearchStrategy[Any]] = {
    "recipient": obj(
        {"id": "c1"},
        {"name": "C", "email": "c@x.test", "phone": "+1", "timezone": "Europe/London",
         "locale": "en", "addresses": {"slack": "u1"}, "consent": {"promotional": True}},
    ),
    "subject": obj(
        {"kind": "invoice", "key": "INV-1"},
        {"attributes": {"due_at": "2026-03-10"}, "recipients": {"customer": "c1"},
         "hold_until": "2026-03-05T00:00:00Z"},
    ),
    "delete": st.one_of(st.just("invoice/INV-1"), value),
    "event": obj({"id": "e1", "name": "paid", "subject": "invoice/INV-1"}, {"data": {"x": 1}}),
    "ack": obj({"rule": "r", "subject": "invoice/INV-1"}, {"recipient": "c1"}),
    "fail": obj({"channel": "email", "until": "2026-03-02T00:00:00Z"}, {"kind": "permanent"}),
    "down": obj({"until": "2026-03-02T00:00:00Z"}, {}),
    "receipt": obj(
        {"delivery": {"rule": "r", "subject": "invoice/INV-1", "recipient": "c1",
                      "channel": "email"}, "status": "bounced"},
        {"hard": True},
    ),
}  # fmt: skip
assert set(BODIES) == set(KINDS)


@st.composite
def timeline_line(draw: st.DrawFn) -> dict[str, Any]:
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=0, max_size=2, unique=True))
    line: dict[str, Any] = {}
    if draw(st.booleans()) or not kinds:
        line["at"] = draw(at)
    for k in kinds:
        line[k] = draw(BODIES[k])
    if draw(st.integers(0, 9)) == 0:
        line[draw(st.sampled_from(["extra", "", "\x00", "AT"]))] = 1
    return line


def dumps(line: Any) -> str:
    # NaN and Infinity as Python writes them (json.loads reads them back); surrogates as
    # \u escapes, as any JSON encoder may write them
    return json.dumps(line)


RAW_LINES = [
    "{", "[]", "null", "1", '"x"', "{}", '{"at": "2026-03-01T09:00:00Z"}', "\x00",
    '{"at": "2026-03-01T09:00:00Z", "down": {"until": "2026-03-02T00:00:00Z"}}\x00',
    "\ufeff{}", "{" * 10 + "}" * 10, '{"at": 1' + "0" * 5000 + "}",
]  # fmt: skip

timeline_text = st.lists(
    st.one_of(timeline_line().map(dumps), st.sampled_from(RAW_LINES), st.text(max_size=40)),
    max_size=6,
).map("\n".join)


def known_bug(text: str) -> str | None:
    """The known parser bug ``text`` would hit (see the xfail tests below), or None."""
    if '"indefinite"' in text:
        return "indefinite"
    return None


def check(text: str) -> None:
    try:
        lines = parse_timeline(text, "timeline.jsonl")
    except SimulationError as exc:
        assert str(exc).startswith("timeline.jsonl:"), exc
        return
    for line in lines:
        assert line.kind in KINDS and line.at.tzinfo is not None, line


@seed(SEED)
@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    phases=[Phase.explicit, Phase.generate],
)
@given(text=timeline_text)
def test_any_timeline_parses_or_raises_simulation_error(text: str) -> None:
    if known_bug(text):
        return
    check(text)


@pytest.mark.parametrize("text", RAW_LINES, ids=range(len(RAW_LINES)))
def test_raw_lines_parse_or_raise_simulation_error(text: str) -> None:
    if known_bug(text):
        pytest.skip(f"known bug: {known_bug(text)}")
    check(text)


# --------------------------------------------------------------------------- known bugs


@pytest.mark.parametrize("when", OVERFLOWING_AT)
@pytest.mark.parametrize("field", ["at", "subject.hold_until", "fail.until", "down.until"])
def test_an_instant_out_of_range_is_a_simulation_error(field: str, when: str) -> None:
    ok = "2026-03-01T09:00:00Z"
    line: dict[str, Any] = {
        "at": {"at": when, "down": {"until": ok}},
        "subject.hold_until": {"at": ok, "subject": {"kind": "a", "key": "1", "hold_until": when}},
        "fail.until": {"at": ok, "fail": {"channel": "email", "until": when}},
        "down.until": {"at": ok, "down": {"until": when}},
    }[field]
    with pytest.raises(SimulationError):
        parse_timeline(json.dumps(line))


def test_deeply_nested_json_is_a_simulation_error() -> None:
    with pytest.raises(SimulationError):
        parse_timeline('{"at": ' + "[" * 100_000 + "]" * 100_000 + "}")


def test_a_number_too_long_for_python_is_a_simulation_error() -> None:
    with pytest.raises(SimulationError):
        parse_timeline('{"at": "2026-03-01T09:00:00Z", "down": {"until": 1' + "0" * 5000 + "}}")


def test_hold_until_indefinite_is_accepted() -> None:
    line = {"at": "2026-03-01T09:00:00Z",
            "subject": {"kind": "a", "key": "1", "hold_until": "indefinite"}}  # fmt: skip
    assert parse_timeline(json.dumps(line))[0].kind == "subject"
