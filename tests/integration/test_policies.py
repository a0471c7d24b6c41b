"""Delivery policies through the real engine in virtual time: fallback, rate limits,
suppression and the circuit breaker (docs/reference/rules.md "Policies")."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from duly.cli import main


def sim(tmp: Path, rules: str, lines: list[dict], *, until: str | None = None) -> list[dict]:
    (tmp / "templates").mkdir(exist_ok=True)
    for ch in ("email", "sms", "push"):
        (tmp / "templates" / f"n.{ch}.txt").write_text(
            "Subject: {{ rule.name }} {{ subject.key }}\nx\n"
        )
    (tmp / "duly.yaml").write_text(rules)
    (tmp / "t.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    args = ["simulate", str(tmp / "duly.yaml"), str(tmp / "t.jsonl")] + (
        ["--until", until] if until else []
    )
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.stderr
    return [json.loads(x) for x in res.stdout.splitlines()]


def person(pid: str, **kw: object) -> dict:
    return {"at": "2026-05-01T08:00:00Z", "recipient": {"id": pid, **kw}}


def job(key: str, due: str, who: str, at: str = "2026-05-01T08:00:00Z") -> dict:
    return {
        "at": at,
        "subject": {
            "kind": "job",
            "key": key,
            "attributes": {"due_at": due},
            "recipients": {"owner": who},
        },
    }


FALLBACK = """
rules:
  - name: r
    subject: job
    to: [owner]
    fallback: [sms, email]
    template: n
    steps: [{name: s, at: due_at}]
"""


def test_fallback_moves_to_the_next_channel_without_address_or_after_a_permanent_failure(
    tmp_path: Path,
) -> None:
    rows = sim(
        tmp_path,
        FALLBACK,
        [
            person("nophone", email="a@x.test"),
            person("both", email="b@x.test", phone="+15550100001"),
            person("badphone", email="c@x.test", phone="+15550100002"),
            job("J1", "2026-05-02T09:00:00Z", "nophone"),
            job("J2", "2026-05-02T09:00:00Z", "both"),
            job("J3", "2026-05-02T10:00:00Z", "badphone"),
            {
                "at": "2026-05-02T09:30:00Z",
                "fail": {"channel": "sms", "until": "2026-05-02T10:30:00Z", "kind": "permanent"},
            },
        ],
    )
    got = [(r["at"], r["subject"], r["channel"], r["outcome"], r["reason"]) for r in rows]
    assert got == [
        ("2026-05-02T09:00:00Z", "job/J1", "email", "sent", None),
        ("2026-05-02T09:00:00Z", "job/J1", "sms", "skipped", "no_address"),
        ("2026-05-02T09:00:00Z", "job/J2", "sms", "sent", None),  # the first channel worked
        ("2026-05-02T10:00:00Z", "job/J3", "email", "sent", None),
        ("2026-05-02T10:00:00Z", "job/J3", "sms", "failed", "permanent_error"),
    ]


def test_promotional_rate_limit_per_recipient_transactional_never(tmp_path: Path) -> None:
    rules = """
limits: {promotional: "1/7d"}
rules:
  - name: promo
    subject: job
    to: [owner]
    category: promotional
    template: n
    steps: [{name: s, at: due_at}]
  - name: tx
    subject: job
    to: [owner]
    category: transactional
    template: n
    steps: [{name: s, at: due_at}]
"""
    rows = sim(
        tmp_path,
        rules,
        [
            person("p", email="p@x.test", consent={"promotional": True}),
            job("A", "2026-05-02T09:00:00Z", "p"),
            job("B", "2026-05-03T09:00:00Z", "p"),
            job("C", "2026-05-10T09:00:00Z", "p"),
        ],
    )
    promo = [(r["subject"], r["outcome"], r["reason"]) for r in rows if r["rule"] == "promo"]
    assert promo == [
        ("job/A", "sent", None),
        ("job/B", "skipped", "rate_limited"),
        ("job/C", "sent", None),
    ]
    assert {r["outcome"] for r in rows if r["rule"] == "tx"} == {"sent"}


def test_a_permanent_address_failure_suppresses_the_address_for_later_deliveries(
    tmp_path: Path,
) -> None:
    rules = FALLBACK.replace("    fallback: [sms, email]\n", "    channels: [email]\n")
    rows = sim(
        tmp_path,
        rules,
        [
            person("p", email="Gone@x.test"),
            person("q", email="q@x.test"),
            job("A", "2026-05-02T09:00:00Z", "p"),
            job("B", "2026-05-03T09:00:00Z", "p"),
            job("C", "2026-05-03T09:00:00Z", "q"),
            {
                "at": "2026-05-02T08:00:00Z",
                "fail": {"channel": "email", "until": "2026-05-02T10:00:00Z", "kind": "permanent"},
            },
        ],
    )
    got = [(r["subject"], r["outcome"], r["reason"]) for r in rows]
    assert got == [
        ("job/A", "failed", "permanent_error"),
        ("job/B", "skipped", "suppressed"),
        ("job/C", "sent", None),
    ]


def test_circuit_breaker_pauses_a_failing_channel_without_spending_attempts(tmp_path: Path) -> None:
    rules = FALLBACK.replace("    fallback: [sms, email]\n", "    channels: [email]\n").replace(
        "    template: n\n", "    template: n\n    retry: {attempts: 10, delay: 10s, factor: 1}\n"
    )
    lines = [person("p", email="p@x.test")] + [
        job(f"J{i}", "2026-05-02T09:00:00Z", "p") for i in range(3)
    ]
    lines.append(
        {
            "at": "2026-05-02T08:00:00Z",
            "fail": {"channel": "email", "until": "2026-05-02T09:03:00Z"},
        }
    )
    rows = sim(tmp_path, rules, lines)
    assert [(r["outcome"]) for r in rows] == ["sent", "sent", "sent"]
    # Without a breaker, 3 deliveries retried every 10 s through a 3-minute outage would
    # spend 19 attempts each. The breaker opens after 5 consecutive failures and rests 60 s
    # at a time with one probe. 09:00: all three fail (3); ~09:00:10: two retries fail (5:
    # the breaker opens), the third waits; then one probe a minute, the others wait without
    # spending attempts and follow the first successful probe (09:03:10). A probe that
    # fails costs no attempt either (the outage is the channel's): the probing delivery
    # ends on attempt 3, as if the two failed probes had not happened (they made it 5).
    attempts = sorted(r["attempt"] for r in rows)
    assert attempts == [2, 3, 3]
    assert sum(attempts) < 19
    assert all(r["at"] >= "2026-05-02T09:03:00Z" for r in rows)


def test_a_thirty_minute_outage_spends_no_attempts_beyond_the_first_failures(
    tmp_path: Path,
) -> None:
    """Default retries (3 after the first try), a channel down for 30 minutes: the breaker's
    probes find it down about thirty times, and that costs the deliveries nothing; every
    one goes out once the channel is back, well within its grace."""
    rules = FALLBACK.replace("    fallback: [sms, email]\n", "    channels: [email]\n")
    lines = [person("p", email="p@x.test")] + [
        job(f"J{i}", "2026-05-02T09:00:00Z", "p") for i in range(6)
    ]
    lines.append(
        {
            "at": "2026-05-02T08:00:00Z",
            "fail": {"channel": "email", "until": "2026-05-02T09:30:00Z"},
        }
    )
    rows = sim(tmp_path, rules, lines)
    assert [r["outcome"] for r in rows] == ["sent"] * 6
    assert all("2026-05-02T09:30:00Z" <= r["at"] < "2026-05-02T09:33:00Z" for r in rows)
    assert max(r["attempt"] for r in rows) <= 4  # retries left over, never exhausted


def test_breaker_threshold_and_cooldown_are_configurable(tmp_path: Path) -> None:
    from datetime import timedelta

    from duly.core.rules.loader import load_rules_text
    from duly.engine.runtime import build_runtime

    rf = load_rules_text(
        FALLBACK.replace("    fallback: [sms, email]\n", "    channels: [email]\n"),
        check_templates=False,
    )
    rt = build_runtime(
        rf, f"sqlite:///{tmp_path / 'd.db'}", breaker_failures=2, breaker_cooldown=7.5
    )
    try:
        b = rt.dispatcher.breakers["email"]
        assert (b.threshold, b.cooldown) == (2, timedelta(seconds=7.5))
    finally:
        rt.db.dispose()
