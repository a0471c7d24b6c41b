"""WhatsApp templates on the twilio-whatsapp channel (Twilio Content API): ``ContentSid`` and
``ContentVariables`` instead of ``Body`` outside the 24-hour customer-service window, the
``freeform`` modes, the ``last_inbound`` hook, and error 63016 — against the local fake at
the network edge (fakes/twilio_server.py), plus one run through the real dispatcher."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from duly.core.clock import VirtualClock
from duly.core.model import ChannelConfig, Recipient
from duly.core.rules.loader import load_rules_text
from duly.delivery.channels import ChannelConfigError, build_channel
from duly.delivery.channels.base import DeliveryError, Message
from duly.delivery.channels.twilio import TwilioWhatsAppChannel
from duly.delivery.rendering import Renderer
from duly.engine.dispatch import Dispatcher
from duly.engine.service import Engine, SubjectInput
from duly.store.db import make_engine
from fakes.twilio_server import FakeTwilio  # tests/ is on sys.path (conftest.py)

FROM = "+15550100000"
TO = "+15550100001"
HX = "HX" + "0123456789abcdef" * 2
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
ACCOUNT = "AC" + "a" * 32


def message(text: str | None = "Your appointment is tomorrow.", **kw: Any) -> Message:
    return Message(
        to=kw.pop("to", TO),
        title=kw.pop("title", "Appointment"),
        text=text,
        html=None,
        message_id=kw.pop("message_id", "d-1@duly.test"),
        recipient_id="r1",
        recipient_name=kw.pop("recipient_name", "Ada"),
        headers=kw.pop("headers", {"X-Duly-Subject": "appointment/A-1"}),
    )


def variables(text: str = "Hi Ada, see you tomorrow.", **values: str) -> str:
    return json.dumps({"1": "Ada", "2": "3 March 10:00", **values, "text": text})


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        yield fake


def channel(twilio: FakeTwilio, **options: Any) -> TwilioWhatsAppChannel:
    config: dict[str, Any] = {
        "account": twilio.account,
        "token": twilio.token,
        "from": FROM,
        "base_url": twilio.base_url,
        "allow_private": True,  # the fake listens on 127.0.0.1
        "content_sid": HX,
        **options,
    }
    built = build_channel(
        ChannelConfig("wa", "twilio-whatsapp", {k: v for k, v in config.items() if v is not None})
    )
    assert isinstance(built, TwilioWhatsAppChannel)
    built.clock = lambda: NOW
    return built


def wrote_in(ago: timedelta, calls: list[str] | None = None) -> Any:
    def last_inbound(address: str) -> datetime:
        if calls is not None:
            calls.append(address)
        return NOW - ago

    return last_inbound


# --------------------------------------------------------------------------- templates


def test_without_inbound_messages_the_template_is_sent_instead_of_a_body(
    twilio: FakeTwilio,
) -> None:
    ch = channel(twilio)
    assert ch.freeform == "window"
    receipt = ch.send(message(variables()))
    ch.close()
    [req] = twilio.requests
    assert "Body" not in req.form
    assert req.form["To"] == f"whatsapp:{TO}" and req.form["From"] == f"whatsapp:{FROM}"
    assert req.form["ContentSid"] == HX
    assert json.loads(req.form["ContentVariables"]) == {"1": "Ada", "2": "3 March 10:00"}
    assert receipt.provider_id is not None and receipt.provider_id.startswith("SM")


def test_inside_the_window_the_free_form_text_is_sent(twilio: FakeTwilio) -> None:
    ch = channel(twilio)
    calls: list[str] = []
    ch.last_inbound = wrote_in(timedelta(hours=23, minutes=59), calls)
    ch.send(message(variables("Hi Ada!"), to=f"whatsapp:{TO}"))
    ch.last_inbound = wrote_in(timedelta(hours=24))  # the window has just closed
    ch.send(message(variables("Hi Ada!")))
    ch.close()
    assert calls == [TO]  # asked about the bare number
    first, second = (r.form for r in twilio.requests)
    assert first["Body"] == "Hi Ada!" and "ContentSid" not in first
    assert second["ContentSid"] == HX and "Body" not in second


def test_a_naive_last_inbound_time_is_taken_as_utc(twilio: FakeTwilio) -> None:
    ch = channel(twilio)
    ch.last_inbound = lambda address: (NOW - timedelta(hours=1)).replace(tzinfo=None)
    ch.send(message(variables()))
    ch.close()
    assert "Body" in twilio.requests[0].form


def test_without_a_text_member_the_template_is_used_even_inside_the_window(
    twilio: FakeTwilio,
) -> None:
    ch = channel(twilio)
    ch.last_inbound = wrote_in(timedelta(minutes=5))
    ch.send(message(json.dumps({"1": "Ada", "2": 3})))
    ch.close()
    [req] = twilio.requests
    assert json.loads(req.form["ContentVariables"]) == {"1": "Ada", "2": "3"}


def test_freeform_never_and_always(twilio: FakeTwilio) -> None:
    never = channel(twilio, freeform="never")
    never.last_inbound = wrote_in(timedelta(minutes=5))
    never.send(message(variables()))
    never.close()
    always = channel(twilio, freeform="ALWAYS")
    always.send(message(variables("Text anyway")))
    always.close()
    first, second = (r.form for r in twilio.requests)
    assert "ContentSid" in first and "Body" not in first
    assert second["Body"] == "Text anyway" and "ContentSid" not in second


def test_content_variables_map_message_fields_for_a_plain_text_template(
    twilio: FakeTwilio,
) -> None:
    ch = channel(
        twilio,
        content_variables={
            "1": "recipient_name",
            "2": "text",
            "3": "X-Duly-Subject",
            "4": "title",
        },
    )
    ch.send(message("  Your appointment is tomorrow.\n"))
    # a JSON text's members win over the option's
    ch.send(message(json.dumps({"2": "from the template"})))
    ch.close()
    first, second = (json.loads(r.form["ContentVariables"]) for r in twilio.requests)
    assert first == {
        "1": "Ada",
        "2": "Your appointment is tomorrow.",
        "3": "appointment/A-1",
        "4": "Appointment",
    }
    assert second["2"] == "from the template" and second["1"] == "Ada"


def test_content_variables_may_come_as_a_json_string(twilio: FakeTwilio) -> None:
    ch = channel(twilio, content_variables='{"name": "recipient_name"}')
    ch.send(message("plain"))
    ch.close()
    assert json.loads(twilio.requests[0].form["ContentVariables"]) == {"name": "Ada"}


def test_a_template_without_variables_sends_no_content_variables(twilio: FakeTwilio) -> None:
    ch = channel(twilio)
    ch.send(message("Plain text, no variables"))
    ch.close()
    [req] = twilio.requests
    assert req.form["ContentSid"] == HX and "ContentVariables" not in req.form


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"1": "Ada", ', "is not valid JSON"),
        ('{"1": ""}', "template variable '1' is empty"),
        ('{"1": null}', "must be a string or a number"),
        ('{"1": true}', "must be a string or a number"),
        ('{"has space": "x"}', "is not a name"),
    ],
)
def test_a_broken_variables_text_fails_permanently_without_a_request(
    twilio: FakeTwilio, text: str, problem: str
) -> None:
    ch = channel(twilio)
    with pytest.raises(DeliveryError) as info:
        ch.send(message(text))
    ch.close()
    assert info.value.permanent and problem in str(info.value)
    assert twilio.requests == []


# --------------------------------------------------------------------------- 63016


def test_63016_without_a_template_is_permanent_and_names_the_fix(twilio: FakeTwilio) -> None:
    twilio.outside_window.add(TO)
    ch = channel(twilio, content_sid=None)
    assert ch.freeform == "always"
    with pytest.raises(DeliveryError) as info:
        ch.send(message())
    ch.close()
    err = info.value
    assert (err.permanent, err.code, err.address) == (True, "63016", False)
    assert "24-hour" in str(err) and "configure content_sid" in str(err)
    assert twilio.requests[0].form["Body"] == "Your appointment is tomorrow."


def test_63016_on_free_form_text_sends_the_template_at_once(twilio: FakeTwilio) -> None:
    twilio.outside_window.add(TO)
    ch = channel(twilio)
    ch.last_inbound = wrote_in(timedelta(hours=2))  # duly thinks the window is open
    receipt = ch.send(message(variables()))
    ch.close()
    first, second = (r.form for r in twilio.requests)
    assert "Body" in first
    assert second["ContentSid"] == HX and "Body" not in second
    assert receipt.provider_id is not None


def test_other_errors_on_free_form_text_are_not_retried_as_the_template(
    twilio: FakeTwilio,
) -> None:
    ch = channel(twilio)
    ch.last_inbound = wrote_in(timedelta(hours=2))
    twilio.answer(400, code=63003)
    with pytest.raises(DeliveryError) as info:
        ch.send(message(variables()))
    ch.close()
    assert info.value.code == "63003" and info.value.address
    assert len(twilio.requests) == 1


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"content_sid": "HX123"}, "content_sid: expected a Content SID"),
        ({"content_sid": HX, "freeform": "sometimes"}, "freeform: expected window"),
        ({"freeform": "window"}, "freeform: 'window' needs option 'content_sid'"),
        ({"freeform": "never"}, "freeform: 'never' needs option 'content_sid'"),
        ({"content_variables": {"1": "text"}}, "content_variables: needs option 'content_sid'"),
        (
            {"content_sid": HX, "content_variables": {"1": "subject.key"}},
            "content_variables: 1: 'subject.key' is not a message field",
        ),
        ({"content_sid": HX, "content_variables": "[1]"}, "content_variables: expected a mapping"),
    ],
)
def test_bad_template_options_name_the_option(options: dict[str, Any], problem: str) -> None:
    base = {"account": ACCOUNT, "token": "t", "from": FROM}
    with pytest.raises(ChannelConfigError) as info:
        build_channel(ChannelConfig("wa", "twilio-whatsapp", {**base, **options}))
    assert str(info.value).startswith("channel 'wa' (type twilio-whatsapp): ")
    assert problem in str(info.value)


def test_sms_channels_take_no_template_options() -> None:
    with pytest.raises(ChannelConfigError, match="unknown option 'content_sid'"):
        build_channel(
            ChannelConfig(
                "sms",
                "twilio-sms",
                {"account": ACCOUNT, "token": "t", "from": FROM, "content_sid": HX},
            )
        )


def test_the_fake_checks_content_fields_as_twilio_does(twilio: FakeTwilio) -> None:
    ch = channel(twilio, content_sid=None)
    base = {**ch._envelope(TO)}
    for form, code in [
        ({**base, "Body": "x", "ContentVariables": "{}"}, "21654"),
        ({**base, "ContentSid": "HX1"}, "21655"),
        ({**base, "ContentSid": HX, "ContentVariables": "[1]"}, "21656"),
    ]:
        with pytest.raises(DeliveryError) as info:
            ch._post(message(), form)
        assert info.value.code == code and info.value.permanent
    ch.close()


# --------------------------------------------------------------------------- end to end

RULES = """
timezone: UTC
channels:
  whatsapp:
    type: twilio-whatsapp
    account: "${TWILIO_ACCOUNT}"
    token: "${TWILIO_TOKEN}"
    from: "+15550100000"
    content_sid: "${CONTENT_SID}"
    base_url: "${TWILIO_URL}"
    allow_private: true
rules:
  - name: appointment-reminder
    subject: appointment
    to: [patient]
    channels: [whatsapp]
    template: remind
    steps:
      - {name: day-before, at: "starts_at - 24h"}
"""


def send_day_before_reminders(
    rules: str, environ: dict[str, str], tmp_path: Path, sqlite_url: str, channel_type: type
) -> None:
    """The end-to-end run both WhatsApp channels share: a template rendering the variables as
    JSON (and the free-form text), two patients with an appointment, the real dispatcher at
    the reminder's time; Bo wrote in at 09:00 (inside the window), Ada never did."""
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "remind.whatsapp.txt").write_text(
        '{"1": {{ recipient.name | tojson }}, "2": {{ attributes.starts_at | tojson }},\n'
        ' "text": {{ ("Hi " ~ recipient.name ~ ", see you tomorrow") | tojson }}}\n'
    )
    rf = load_rules_text(
        rules, path=str(tmp_path / "duly.yaml"), templates_dir=str(templates), environ=environ
    )
    clock = VirtualClock(datetime(2026, 3, 1, 8, 0, tzinfo=UTC))
    engine = Engine(rf, make_engine(sqlite_url), clock=clock)
    wa = build_channel(rf.channels["whatsapp"])
    assert isinstance(wa, channel_type)
    disp = Dispatcher(engine, {"whatsapp": wa}, Renderer(rf.templates_dir), send_workers=1)
    for rid, name, phone in [("p1", 'Ada "A" Lovelace', TO), ("p2", "Bo", "+15550100002")]:
        engine.put_recipient(Recipient(rid, name=name, phone=phone))
        engine.upsert_subject(
            SubjectInput(
                "appointment", f"A-{rid}", {"starts_at": "2026-03-03T10:00:00Z"}, {"patient": rid}
            )
        )
    clock.set(datetime(2026, 3, 2, 10, 30, tzinfo=UTC))  # 24 hours before: due
    wa.clock = clock.now
    wa.last_inbound = lambda address: NOW if address == "+15550100002" else None
    assert disp.run_once() == 2
    wa.close()


def test_the_dispatcher_sends_a_rendered_template_through_twilio(
    sqlite_url: str, tmp_path: Path, twilio: FakeTwilio
) -> None:
    environ = {
        "TWILIO_ACCOUNT": twilio.account,
        "TWILIO_TOKEN": twilio.token,
        "CONTENT_SID": HX,
        "TWILIO_URL": twilio.base_url,
    }
    send_day_before_reminders(RULES, environ, tmp_path, sqlite_url, TwilioWhatsAppChannel)
    by_to = {r.form["To"]: r.form for r in twilio.requests}
    ada = by_to[f"whatsapp:{TO}"]
    assert "Body" not in ada and ada["ContentSid"] == HX
    assert json.loads(ada["ContentVariables"]) == {
        "1": 'Ada "A" Lovelace',
        "2": "2026-03-03T10:00:00Z",
    }
    assert by_to["whatsapp:+15550100002"]["Body"] == "Hi Bo, see you tomorrow"
