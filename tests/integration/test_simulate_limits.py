"""Bounded simulation: `duly simulate` has limits on virtual span, outcomes and wall time
(flags and environment variables to raise them), exits only 0 or 2, and reports bad
durations and out-of-range times with their file and line, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from duly.api.keys import KeyStore
from duly.cli import main
from duly.core.rules.loader import load_rules_text
from duly.engine import simulation as simulate
from duly.engine.simulation import (
    LimitExceeded,
    Limits,
    ServerSimulations,
    execute,
    parse_timeline,
    run,
)
from webui import Web, make_web  # tests/webui.py

# A schedule that fires every minute: ~1 outcome per virtual minute, the costliest shape.
TICK = """\
timezone: UTC
groups:
  ops: [o1]
rules:
  - name: tick
    cron: "* * * * *"
    to: [group:ops]
"""
OPS = {"at": "2026-03-01T00:00:00Z", "recipient": {"id": "o1", "email": "o1@x.test"}}

INVOICES = """\
timezone: UTC
rules:
  - name: inv
    subject: invoice
    to: [customer]
    steps:
      - {name: s1, at: "due_at - 1d"}
"""


def invoice(at: str, key: str = "I1", due: str = "2026-03-10") -> dict:
    return {
        "at": at,
        "subject": {
            "kind": "invoice",
            "key": key,
            "attributes": {"due_at": due},
            "recipients": {"customer": "o1"},
        },
    }


def write(tmp: Path, rules: str, timeline: list[dict] | str) -> tuple[str, str]:
    r, t = tmp / "duly.yaml", tmp / "timeline.jsonl"
    r.write_text(rules)
    if not isinstance(timeline, str):
        timeline = "".join(json.dumps(x) + "\n" for x in timeline)
    t.write_text(timeline)
    return str(r), str(t)


def sim(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, ["simulate", "--no-render", *args], env=env)
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exc_info
    return res.exit_code, res.stdout, res.stderr


# --------------------------------------------------------------------------- limits (CLI)


def test_span_over_the_limit_exits_2_naming_the_flag(tmp_path: Path) -> None:
    r, t = write(tmp_path, TICK, [OPS])
    code, out, err = sim(r, t, "--max-span", "10d")  # default until: 30 days after
    assert code == 2 and out == ""
    assert "--max-span" in err and "10 days" in err and "30 days" in err, err
    code, _, err = sim(r, t, "--until", "2026-03-11T00:00:01Z", "--max-span", "10d")
    assert code == 2 and "--max-span" in err and "--until" in err, err
    # the environment variable named in --help raises it the same way
    code, _, err = sim(r, t, "--until", "2026-03-01T00:05:00Z", env={"DULY_SIM_MAX_SPAN": "1h"})
    assert code == 0, err


def test_the_default_span_limit_refuses_a_thousand_years(tmp_path: Path) -> None:
    r, t = write(tmp_path, TICK, [OPS])
    t0 = time.perf_counter()
    code, out, err = sim(r, t, "--until", "3026-03-01T00:00:00Z")
    assert code == 2 and out == "", err
    assert "--max-span" in err and "400 days" in err, err
    assert time.perf_counter() - t0 < 5


def test_outcomes_over_the_limit_exit_2_naming_the_flag(tmp_path: Path) -> None:
    r, t = write(tmp_path, TICK, [OPS])
    code, out, err = sim(r, t, "--max-outcomes", "5")
    assert code == 2 and out == ""
    assert "--max-outcomes" in err and "5 outcomes" in err, err
    code, out, err = sim(r, t, "--until", "2026-03-01T00:04:00Z", "--max-outcomes", "5")
    assert code == 0, err
    assert len(out.splitlines()) == 5  # exactly the limit is allowed


def test_wall_time_over_the_limit_stops_the_run_and_exits_2(tmp_path: Path) -> None:
    r, t = write(tmp_path, TICK, [OPS])
    t0 = time.perf_counter()
    code, out, err = sim(r, t, "--timeout", "0.5")  # 30 virtual days: minutes of work
    took = time.perf_counter() - t0
    assert code == 2 and out == ""
    assert "--timeout" in err and "0.5 s" in err, err
    assert took < 5, took


def test_limit_flags_are_validated_and_named_in_help(tmp_path: Path) -> None:
    r, t = write(tmp_path, TICK, [OPS])
    for flag, bad in (("--max-span", "ten days"), ("--max-outcomes", "0"), ("--timeout", "-1")):
        code, _, err = sim(r, t, flag, bad)
        assert code == 2 and flag in err, (flag, err)
    out = CliRunner().invoke(main, ["simulate", "--help"], terminal_width=200).output
    for var in ("DULY_SIM_MAX_SPAN", "DULY_SIM_MAX_OUTCOMES", "DULY_SIM_TIMEOUT"):
        assert var in out


def test_a_normal_simulation_is_within_the_default_limits(tmp_path: Path) -> None:
    r, t = write(tmp_path, INVOICES, [OPS, invoice("2026-03-01T00:00:00Z")])
    code, out, err = sim(r, t)
    assert code == 0, err
    got = [json.loads(x) for x in out.splitlines()]
    assert [(x["at"], x["outcome"]) for x in got] == [("2026-03-09T00:00:00Z", "sent")]


# --------------------------------------------------------------------------- exit 0 or 2


def test_huge_durations_are_rule_file_errors_with_their_line(tmp_path: Path) -> None:
    timeline = [OPS, invoice("2026-03-01T00:00:00Z")]
    cases = [
        ("    expire: 99999999999999y\n", 6, "expire"),
        ("    expire: 1001y\n", 6, "expire"),
        ("    delay: 366000d\n    on: invoice.viewed\n", 6, "delay"),
    ]
    for extra, line, field in cases:
        rules = INVOICES.replace("    to: [customer]\n", "    to: [customer]\n" + extra)
        if "on:" in extra:
            rules = rules.split("    steps:")[0]
        r, t = write(tmp_path, rules, timeline)
        code, out, err = sim(r, t)
        assert code == 2 and out == "", err
        assert f"duly.yaml:{line}" in err and field in err and "1000 years" in err, err
    rules = INVOICES.replace('"due_at - 1d"', '"due_at + 99999999y"')
    r, t = write(tmp_path, rules, timeline)
    code, _, err = sim(r, t)
    assert code == 2 and "duly.yaml:7" in err and "1000 years" in err, err
    # a condition's duration too
    rules = INVOICES.replace("    to:", '    if: "due_at < 99999999999999999999999d"\n    to:')
    r, t = write(tmp_path, rules, timeline)
    code, _, err = sim(r, t)
    assert code == 2 and "duly.yaml:5" in err and "1000 years" in err, err
    # 1000 years is allowed
    rules = INVOICES.replace("    to: [customer]\n", "    to: [customer]\n    expire: 1000y\n")
    r, t = write(tmp_path, rules, timeline)
    code, out, err = sim(r, t)
    assert code == 0 and len(out.splitlines()) == 1, err


@pytest.mark.parametrize(
    "line,field",
    [
        ({"at": "9999-12-31T23:59:59-12:00", "delete": "a/b"}, "at"),
        ({"at": "0001-01-01T00:00:00+14:00", "delete": "a/b"}, "at"),
        ({"at": "9999-12-31T00:00:00Z", "delete": "a/b"}, "at"),
        (
            {
                "at": "2026-03-01T00:00:00Z",
                "subject": {
                    "kind": "invoice",
                    "key": "I",
                    "hold_until": "9999-12-31T23:59:59-12:00",
                },
            },
            "subject.hold_until",
        ),
        (
            {
                "at": "2026-03-01T00:00:00Z",
                "fail": {"channel": "email", "until": "0001-01-01T00:00:00+14:00"},
            },
            "fail.until",
        ),
    ],
)
def test_times_out_of_range_in_a_timeline_are_errors_with_their_line(
    tmp_path: Path, line: dict, field: str
) -> None:
    r, t = write(tmp_path, INVOICES, [OPS, line] if line["at"].startswith("2026") else [line])
    code, out, err = sim(r, t)
    n = 2 if line["at"].startswith("2026") else 1
    assert code == 2 and out == "", err
    assert f"timeline.jsonl:{n}: {field}:" in err and "range" in err, err


def test_until_out_of_range_exits_2(tmp_path: Path) -> None:
    r, t = write(tmp_path, INVOICES, [OPS])
    for until in ("9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00"):
        code, _, err = sim(r, t, "--until", until)
        assert code == 2 and "--until" in err, err


def test_a_failure_during_the_run_exits_2_with_a_message_not_a_traceback(
    tmp_path: Path,
) -> None:
    """A real process: exit status 2 and one clear message naming the rule file, never a
    traceback (a schedule that can never fire, February 30th: it failed every cycle of the
    run with a traceback; the loader now refuses it with its line)."""
    rules = TICK.replace('"* * * * *"', '"0 0 30 2 *"')
    r, t = write(tmp_path, rules, [OPS])
    p = subprocess.run(
        [sys.executable, "-m", "duly.cli", "simulate", "--no-render", r, t],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr and "duly.yaml" in p.stderr, p.stderr


# --------------------------------------------------------------------------- the library


def _timeline(lines: list[dict]) -> list:
    return parse_timeline("".join(json.dumps(x) + "\n" for x in lines))


def test_execute_keeps_only_the_rows_asked_for_but_counts_them_all() -> None:
    rf = load_rules_text(TICK, check_templates=False, resolve_env=False, check_channels=False)
    tl = _timeline([OPS])
    until = datetime(2026, 3, 1, 0, 10, tzinfo=UTC)
    full = run(rf, tl, until=until, render=False)
    assert len(full) == 11
    res = execute(rf, tl, until=until, render=False, keep=4)
    assert res.total == 11 and res.rows == full[:4]
    assert res.counts == {"sent": 11}


def test_limit_exceeded_names_the_limit() -> None:
    rf = load_rules_text(TICK, check_templates=False, resolve_env=False, check_channels=False)
    tl = _timeline([OPS])
    with pytest.raises(LimitExceeded) as exc:
        run(rf, tl, render=False, limits=Limits(wall=0.2))
    assert exc.value.limit == "wall"
    with pytest.raises(LimitExceeded) as exc:
        run(rf, tl, render=False, limits=Limits(outcomes=3))
    assert exc.value.limit == "outcomes"
    with pytest.raises(LimitExceeded) as exc:
        run(rf, tl, render=False, limits=Limits(span=timedelta(days=1)))
    assert exc.value.limit == "span"


def test_an_expiry_past_the_year_9999_never_comes_instead_of_failing(tmp_path: Path) -> None:
    rules = INVOICES.replace("    to: [customer]\n", "    to: [customer]\n    expire: 1000y\n")
    r, t = write(
        tmp_path,
        rules,
        [
            OPS,
            invoice("2026-03-01T00:00:00Z", due="9500-03-10"),
            invoice("2026-03-01T00:00:00Z", key="I2"),
        ],
    )
    code, out, err = sim(r, t)
    assert code == 0 and err == "", err
    assert [json.loads(x)["subject"] for x in out.splitlines()] == ["invoice/I2"]


# --------------------------------------------------------------------------- the API


def serve_with(monkeypatch: pytest.MonkeyPatch, limits: Limits, n: int = 2) -> ServerSimulations:
    """The server's simulations with these limits (small ones: fast tests)."""
    srv = ServerSimulations(limits, n)
    monkeypatch.setattr(simulate, "server", srv)
    return srv


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Web]:
    w = make_web(tmp_path)
    token, _ = KeyStore(w.rt.db).create("sim", datetime.now(UTC))
    w.client.headers["Authorization"] = f"Bearer {token}"
    try:
        yield w
    finally:
        w.close()


def _post(api: Web, rules: str, lines: list[dict] | str, **kw: object) -> Any:
    tl = lines if isinstance(lines, str) else "".join(json.dumps(x) + "\n" for x in lines)
    return api.client.post("/v1/simulate", json={"rules": rules, "timeline": tl, **kw})


def _error(r: Any, status: int, code: str, field: str | None) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert (err["code"], err["field"]) == (code, field), err
    return str(err["message"])


def test_api_simulation_within_the_limits_answers_the_rows(api: Web) -> None:
    r = _post(api, INVOICES, [OPS, invoice("2026-03-01T00:00:00Z")])
    assert r.status_code == 200, r.text
    assert [x["outcome"] for x in r.json()["rows"]] == ["sent"]


def test_api_refuses_a_span_over_92_days_naming_until(api: Web) -> None:
    r = _post(api, TICK, [OPS], until="2026-06-02T00:00:00Z")
    msg = _error(r, 422, "limit_exceeded", "until")
    assert "93 days" in msg and "92 days" in msg and "duly simulate" in msg, msg
    r = _post(api, TICK, [OPS], until="3026-03-01T00:00:00Z")  # 1,000 years: refused at once
    _error(r, 422, "limit_exceeded", "until")


def test_api_stops_at_the_outcome_limit(api: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    serve_with(monkeypatch, Limits(span=timedelta(days=92), outcomes=5, wall=60))
    msg = _error(_post(api, TICK, [OPS]), 422, "limit_exceeded", "until")
    assert "more than 5 outcomes" in msg and "(outcomes)" in msg, msg


def test_api_stops_at_the_wall_time_limit_and_stays_responsive(
    api: Web, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A per-minute schedule over 30 days (minutes of work) is stopped at the limit; while
    it runs the server answers other requests, and a second simulation is refused as busy
    (the gate allows one here) with Retry-After."""
    srv = serve_with(monkeypatch, Limits(span=timedelta(days=92), wall=2.0), 1)
    got: dict[str, Any] = {}

    def first() -> None:
        t0 = time.perf_counter()
        got["r"] = _post(api, TICK, [OPS])
        got["took"] = time.perf_counter() - t0

    th = threading.Thread(target=first)
    th.start()
    try:
        for _ in range(300):
            if srv.running:
                break
            time.sleep(0.1)
        assert srv.running == 1
        t0 = time.perf_counter()
        assert api.client.get("/healthz").status_code == 200
        assert time.perf_counter() - t0 < 1.5
        busy = _post(api, INVOICES, [OPS])
        _error(busy, 429, "busy", None)
        assert busy.headers["Retry-After"] == "2"
    finally:
        th.join(60)
    msg = _error(got["r"], 422, "limit_exceeded", "until")
    assert "longer than 2 s" in msg and "(wall)" in msg, msg
    assert got["took"] < 6, got["took"]
    assert srv.running == 0  # its place is free again
    assert _post(api, INVOICES, [OPS, invoice("2026-03-01T00:00:00Z")]).status_code == 200


def test_api_bad_durations_and_times_are_422_naming_the_field(api: Web) -> None:
    rules = INVOICES.replace(
        "    to: [customer]\n", "    to: [customer]\n    expire: 99999999999999y\n"
    )
    msg = _error(_post(api, rules, [OPS]), 422, "invalid_rules", "rules")
    assert "duly.yaml:6" in msg and "1000 years" in msg, msg
    rules = INVOICES.replace("    to:", '    if: "due_at < 99999999999999999999999d"\n    to:')
    msg = _error(_post(api, rules, [OPS]), 422, "invalid_rules", "rules")
    assert "duly.yaml:5" in msg and "1000 years" in msg, msg
    bad = [{"at": "9999-12-31T23:59:59-12:00", "delete": "a/b"}]
    msg = _error(_post(api, INVOICES, bad), 422, "invalid_timeline", "timeline")
    assert msg.startswith("timeline.jsonl:1: at:") and "range" in msg, msg
    for until in ("9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00"):
        msg = _error(_post(api, INVOICES, [OPS], until=until), 422, "invalid", "until")
        assert "range" in msg, msg


def test_rules_check_reports_a_huge_duration_in_a_condition(api: Web, tmp_path: Path) -> None:
    rules = INVOICES.replace("    to:", '    if: "x < 99999999999999999999999d"\n    to:')
    r = api.client.post("/v1/rules:check", json={"rules": rules})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is False and [e["line"] for e in body["errors"]] == [5], body
    assert "1000 years" in body["errors"][0]["message"]
    (tmp_path / "duly.yaml").write_text(rules)
    res = CliRunner().invoke(
        main, ["rules", "check", "--no-templates", str(tmp_path / "duly.yaml")]
    )
    assert res.exit_code == 2, res.output
    assert "duly.yaml:5" in res.stderr and "1000 years" in res.stderr, res.stderr


def test_hostile_json_in_a_timeline_is_an_error_with_its_line(tmp_path: Path) -> None:
    at = '"at": "2026-03-01T00:00:00Z"'
    cases = {
        "a number has too many digits": f'{{{at}, "subject": {{"kind": "a", "key": {"1" * 5000}}}}}',
        "nested too deeply": f'{{{at}, "subject": {{"kind": "a", "key": "k", "attributes": '
        f'{{"x": {"[" * 100_000}{"]" * 100_000}}}}}}}',
    }
    for what, line in cases.items():
        r, t = write(tmp_path, INVOICES, json.dumps(OPS) + "\n" + line + "\n")
        code, out, err = sim(r, t)
        assert code == 2 and out == "", err
        assert "timeline.jsonl:2: " in err and what in err, err


def test_api_rules_nested_thousands_deep_are_422(api: Web) -> None:
    rules = "rules: " + "[" * 5000 + "]" * 5000 + "\n"
    msg = _error(_post(api, rules, [OPS]), 422, "invalid_rules", "rules")
    assert "nested too deeply" in msg or "duly.yaml" in msg, msg


def test_the_flags_defaults_are_the_cli_limits() -> None:
    defaults = {p.name: p.default for p in main.commands["simulate"].params}
    assert simulate.CLI_LIMITS == Limits(
        span=timedelta(days=int(str(defaults["max_span"]).removesuffix("d"))),
        outcomes=defaults["max_outcomes"],
        wall=defaults["timeout"],
    )


def test_a_reader_that_stops_early_does_not_make_it_fail(tmp_path: Path) -> None:
    """`duly simulate ... | head -1`: the run completed, so exit 0 and nothing on stderr."""
    r, t = write(tmp_path, TICK, [OPS])
    p = subprocess.Popen(
        [sys.executable, "-m", "duly.cli", "simulate", "--no-render", r, t],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "DULY_SIM_UNTIL": "2026-03-01T06:00:00Z"},  # 361 lines, > 64 KiB
    )
    assert p.stdout is not None and p.stderr is not None
    assert json.loads(p.stdout.readline())["rule"] == "tick"
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(60) == 0 and err == "", err
