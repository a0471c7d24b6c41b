"""A rule's or step's own WhatsApp template (``whatsapp:`` in the rule file): read with
located errors, its variables rendered by the real render processes, sent by the real
dispatcher to the local fakes of Twilio's Messages API and Meta's Cloud API (their module
docs cite the documents they follow): a 24-hour reminder goes out as the step's template to
a patient who has not written in the last 24 hours, and as free-form text to one who has.
"""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from duly.core.clock import VirtualClock
from duly.core.model import Recipient, WhatsAppTemplate
from duly.core.rules.loader import RuleFileError, load_rules_text
from duly.delivery.channels import build_channel
from duly.delivery.rendering import Renderer
from duly.engine.dispatch import Dispatcher
from duly.engine.receipts import inbound_message, last_inbound_lookup
from duly.engine.service import Engine, SubjectInput
from duly.store.db import make_engine
from duly.store.tables import deliveries
from fakes.twilio_server import FakeTwilio
from fakes.whatsapp_cloud_server import FakeWhatsAppCloud

HX_CHANNEL = "HX" + "0" * 32
HX_STEP = "HX" + "0123456789abcdef" * 2
ADA, BO = "+15550100001", "+15550100002"

TWILIO_RULES = """
timezone: UTC
channels:
  whatsapp:
    type: twilio-whatsapp
    account: "${TWILIO_ACCOUNT}"
    token: "${TWILIO_TOKEN}"
    from: "+15550100000"
    content_sid: "HX_CHANNEL"
    content_variables: {"1": recipient_name}
    base_url: "${TWILIO_URL}"
    allow_private: true
rules:
  - name: appointment-reminder
    subject: appointment
    to: [patient]
    channels: [whatsapp]
    template: remind
    steps:
      - name: day-before
        at: "starts_at - 24h"
        whatsapp:
          content_sid: "HX_STEP"
          variables:
            "1": "{{ recipient.name }}"
            "2": "{{ attributes.starts_at | datetime('short') }}"
      - {name: hour-before, at: "starts_at - 1h"}
""".replace("HX_CHANNEL", HX_CHANNEL).replace("HX_STEP", HX_STEP)

CLOUD_RULES = """
timezone: UTC
channels:
  whatsapp:
    type: whatsapp-cloud
    phone_number_id: "${WA_PHONE_ID}"
    token: "${WA_TOKEN}"
    base_url: "${WA_URL}"
    allow_private: true
rules:
  - name: appointment-reminder
    subject: appointment
    to: [patient]
    channels: [whatsapp]
    template: remind
    whatsapp:
      template: appointment_reminder
      language: en_US
      variables:
        "1": "{{ recipient.name }}"
        "2": "{{ attributes.starts_at | datetime('short') }}"
    steps:
      - {name: day-before, at: "starts_at - 24h"}
"""


def run_day_before(
    rules: str, environ: dict[str, str], tmp_path: Path, sqlite_url: str, *, ada_name: str = "Ada"
) -> Engine:
    """Two patients with an appointment on 3 March 10:00; Bo wrote in at 09:00 on 2 March
    (inside the window at 10:00), Ada never did; the real dispatcher at 10:00."""
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "remind.whatsapp.txt").write_text("Hi {{ recipient.name }}, see you tomorrow\n")
    rf = load_rules_text(
        rules, path=str(tmp_path / "duly.yaml"), templates_dir=str(templates), environ=environ
    )
    clock = VirtualClock(datetime(2026, 3, 1, 8, 0, tzinfo=UTC))
    db = make_engine(sqlite_url)
    engine = Engine(rf, db, clock=clock)
    wa = build_channel(rf.channels["whatsapp"])
    wa.last_inbound = last_inbound_lookup(db, "whatsapp")  # type: ignore[attr-defined]
    for rid, name, phone in [("p1", ada_name, ADA), ("p2", "Bo", BO)]:
        engine.put_recipient(Recipient(rid, name=name, phone=phone))
        engine.upsert_subject(
            SubjectInput(
                "appointment", f"A-{rid}", {"starts_at": "2026-03-03T10:00:00Z"}, {"patient": rid}
            )
        )
    inbound_message(engine, "whatsapp", BO, "ok", at=datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    clock.set(datetime(2026, 3, 2, 10, 0, tzinfo=UTC))  # 24 hours before: due
    wa.clock = clock.now  # type: ignore[attr-defined]
    renderer = Renderer(rf.templates_dir)  # the render processes, as in production
    disp = Dispatcher(engine, {"whatsapp": wa}, renderer, send_workers=1)
    try:
        disp.run_once()
        clock.set(datetime(2026, 3, 3, 9, 0, tzinfo=UTC))  # the hour-before step, if any
        wa.clock = clock.now  # type: ignore[attr-defined]
        disp.run_once()
    finally:
        wa.close()
        renderer.close()
    return engine


def states(engine: Engine) -> dict[tuple[str, str], tuple[str, str | None, str | None]]:
    with engine.db.connect() as c:
        q = sa.select(deliveries.c.recipient, deliveries.c.step, deliveries.c.state,
                      deliveries.c.reason, deliveries.c.last_error)  # fmt: skip
        return {(r[0], r[1]): (r[2], r[3], r[4]) for r in c.execute(q)}


def test_a_step_template_through_twilio_outside_and_inside_the_window(
    sqlite_url: str, tmp_path: Path
) -> None:
    with FakeTwilio() as twilio:
        environ = {
            "TWILIO_ACCOUNT": twilio.account,
            "TWILIO_TOKEN": twilio.token,
            "TWILIO_URL": twilio.base_url,
        }
        engine = run_day_before(TWILIO_RULES, environ, tmp_path, sqlite_url)
        sent = [r.form for r in twilio.requests]
    assert {v[0] for v in states(engine).values()} == {"sent"}, states(engine)
    day_before = [f for f in sent if f.get("ContentSid") == HX_STEP or "Body" in f][:2]
    by_to = {f["To"]: f for f in day_before}
    ada = by_to[f"whatsapp:{ADA}"]  # no inbound message in 24 h: the step's template
    assert "Body" not in ada and ada["ContentSid"] == HX_STEP
    variables = json.loads(ada["ContentVariables"])
    assert variables["1"] == "Ada"
    assert variables["2"].startswith("3/3/26") and "10:00" in variables["2"]  # the helper
    assert by_to[f"whatsapp:{BO}"]["Body"] == "Hi Bo, see you tomorrow"  # inside the window
    # the hour-before step has no whatsapp: of its own: the channel's template and mapping
    later = [f for f in sent if f.get("ContentSid") == HX_CHANNEL]
    assert {f["To"] for f in later} == {f"whatsapp:{ADA}", f"whatsapp:{BO}"}
    assert all(json.loads(f["ContentVariables"]).keys() == {"1"} for f in later)


def test_a_rule_template_through_the_cloud_api(sqlite_url: str, tmp_path: Path) -> None:
    with FakeWhatsAppCloud() as meta:
        meta.inside_window.add(BO.lstrip("+"))
        environ = {"WA_PHONE_ID": meta.phone_number_id, "WA_TOKEN": meta.token, "WA_URL": meta.url}
        # the channel has no template of its own: the rule's is the only one
        engine = run_day_before(CLOUD_RULES, environ, tmp_path, sqlite_url)
        sent = [r.body for r in meta.requests]
    assert {v[0] for v in states(engine).values()} == {"sent"}, states(engine)
    by_to = {b["to"]: b for b in sent}
    ada = by_to[ADA]
    assert ada["type"] == "template"
    assert ada["template"]["name"] == "appointment_reminder"
    params = [p["text"] for p in ada["template"]["components"][0]["parameters"]]
    assert params[0] == "Ada" and params[1].startswith("3/3/26")
    assert by_to[BO] == {**by_to[BO], "type": "text", "text": {"preview_url": False,
                                                            "body": "Hi Bo, see you tomorrow"}}  # fmt: skip


def test_a_variable_that_fails_to_render_fails_only_its_delivery(
    sqlite_url: str, tmp_path: Path
) -> None:
    rules = CLOUD_RULES.replace("{{ recipient.name }}", "{{ recipient.nickname }}")
    with FakeWhatsAppCloud() as meta:
        environ = {"WA_PHONE_ID": meta.phone_number_id, "WA_TOKEN": meta.token, "WA_URL": meta.url}
        meta.inside_window.add(BO.lstrip("+"))
        engine = run_day_before(rules, environ, tmp_path, sqlite_url)
        assert meta.requests == []
    got = states(engine)
    assert {v[:2] for v in got.values()} == {("failed", "render_error")}
    assert all(
        "appointment-reminder.whatsapp.variables.1, line 1" in (v[2] or "") for v in got.values()
    ), got


# --------------------------------------------------------------------------- the rule file


def load(text: str) -> Any:
    return load_rules_text(textwrap.dedent(text), path="/srv/duly.yaml", check_templates=False)


BASE = """\
timezone: UTC
channels:
  whatsapp: {type: outbox}
rules:
  - name: r
    subject: appointment
    to: [patient]
    channels: [whatsapp]
    steps:
      - name: s
        at: starts_at - 1d
        whatsapp:
"""


def test_the_key_is_read_on_steps_and_rules() -> None:
    rf = load(
        BASE
        + f'          content_sid: "{HX_STEP}"\n'
        + '          variables: {"1": "{{ recipient.name }}", "when": "{{ subject.key }}"}\n'
        + "          freeform: Never\n"
    )
    step = rf.rule("r").steps[0]
    assert step.whatsapp == WhatsAppTemplate(
        content_sid=HX_STEP,
        variables=(("1", "{{ recipient.name }}"), ("when", "{{ subject.key }}")),
        freeform="never",
    )
    assert rf.rule("r").whatsapp is None


@pytest.mark.parametrize(
    ("body", "line", "field", "message"),
    [
        ("          content_sid: HX12\n", 13, "whatsapp.content_sid", "Content SID"),
        ("          template: Appointment\n          language: en_US\n", 13,
         "whatsapp.template", "not a template name"),
        ("          template: appointment\n", 13, "whatsapp", "language"),
        ("          template: a\n          language: en_US\n          variables: {a: x}\n", 15,
         "whatsapp.variables", "numbered 1 to N"),
        ("          variables: {\"1\": x, \"3\": y}\n          template: a\n"
         "          language: en\n", 13, "whatsapp.variables", "numbered"),
        ("          variables: {\"no spaces\": x}\n", 13, "whatsapp.variables.no spaces",
         "not a variable name"),
        ("          variables: {\"1\": [x]}\n", 13, "whatsapp.variables.1", "expected a text"),
        ("          variables: [x]\n", 13, "whatsapp.variables", "mapping"),
        ("          freeform: sometimes\n          variables: {\"1\": x}\n", 13,
         "whatsapp.freeform", "window, always or never"),
        ("          freeform: never\n", 13, "whatsapp", "content_sid, template or variables"),
        ("          contentsid: HX1\n", 13, "whatsapp.contentsid", "content_sid"),
        ("          hello\n", 13, "whatsapp", "mapping"),
    ],
)  # fmt: skip
def test_errors_name_the_file_line_and_field(
    body: str, line: int, field: str, message: str
) -> None:
    with pytest.raises(RuleFileError) as exc:
        load(BASE + body)
    errs = exc.value.errors
    assert any(
        e.file == "/srv/duly.yaml"
        and e.line == line
        and e.field == "rules[0].steps[0]." + field
        and message in e.message
        for e in errs
    ), [(e.line, e.field, e.message) for e in errs]
    assert f"/srv/duly.yaml:{line}" in str(exc.value)


def test_too_many_or_too_long_variables_are_refused() -> None:
    many = "{" + ", ".join(f'"{i}": x' for i in range(1, 52)) + "}"
    with pytest.raises(RuleFileError, match="more than 50 variables"):
        load(BASE + f"          variables: {many}\n")
    with pytest.raises(RuleFileError, match="longer than 2000 characters"):
        load(BASE + '          variables: {"1": "%s"}\n' % ("x" * 2001))
