"""Bounded rendering (issue 11): a template that loops, grows or eats memory without bound
costs its own delivery (``render_error`` naming the limit) and never another's; the
dispatcher's render returns within the limit."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from duly.channels.smtp import SmtpChannel
from duly.engine.clock import VirtualClock
from duly.engine.dispatcher import Dispatcher
from duly.engine.service import Engine, SubjectInput
from duly.model import Recipient
from duly.render import Renderer
from duly.rules.loader import load_rules_text
from duly.store.db import make_engine
from duly.store.tables import deliveries
from test_dispatch import smtp  # noqa: F401  (the real SMTP server fixture)

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)

RULES = """
timezone: UTC
render: {timeout: 2s, max_output: 1MB, max_memory: 128MB}
rules:
  - name: receipt
    subject: invoice
    on: {change: status, to: paid}
    category: transactional
    to: [customer]
    template: TEMPLATE
"""

GOOD = "Subject: Receipt {{ subject.key }}\nThanks {{ recipient.name }}.\n"
# each runaway hides behind an {% if %} the save check's sample data never enters
LOOP = (
    "Subject: Receipt {{ subject.key }}\n{% if attributes.big %}"
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    "{% endif %}ok\n"
)
GROW = "Subject: R\n{% if attributes.big %}{{ ('x' * 1000000000)|length }}{% endif %}\n"
# no single operation is large: a list of 100,000 strings of 100,000 characters (10 GB)
MEMORY = (
    "Subject: R\n{% if attributes.big %}{% set s = 'y' * 100000 %}"
    "{{ range(100000)|map('string')|map('replace', '', s)|list|length }}{% endif %}\n"
)


def setup(db_url: str, tmp: Path, body: str):  # noqa: ANN201
    d = tmp / "templates"
    d.mkdir()
    (d / "good.email.txt").write_text(GOOD)
    (d / "bad.email.txt").write_text(body)
    rules = RULES.replace("TEMPLATE", "bad") + RULES.split("rules:\n")[1].replace(
        "name: receipt", "name: good-receipt"
    ).replace("TEMPLATE", "good")
    rf = load_rules_text(rules, path=str(tmp / "duly.yaml"), templates_dir=str(d))
    return rf


@pytest.mark.parametrize(
    ("body", "limit"),
    [(LOOP, "render.timeout"), (GROW, "render.max_output"), (MEMORY, "render.max_memory")],
    ids=["loop", "grow", "memory"],
)
def test_a_runaway_template_fails_its_own_delivery_and_the_other_goes_out(
    db_url: str,
    tmp_path: Path,
    smtp,  # noqa: ANN001, F811
    body: str,
    limit: str,
) -> None:
    sink, port = smtp
    rf = setup(db_url, tmp_path, body)
    clock = VirtualClock(T0)
    db = make_engine(db_url)
    engine = Engine(rf, db, clock=clock)
    chan = SmtpChannel("email", url=f"smtp://127.0.0.1:{port}", from_="billing@acme.test")
    renderer = Renderer(rf.templates_dir, limits=rf.render)
    disp = Dispatcher(engine, {"email": chan}, renderer, send_workers=1)
    try:
        engine.put_recipient(Recipient("c1", name="Alice", email="alice@example.test"))
        engine.upsert_subjects(
            [SubjectInput("invoice", "A", {"status": "sent", "big": True}, {"customer": "c1"})]
        )
        engine.upsert_subjects(
            [SubjectInput("invoice", "A", {"status": "paid", "big": True}, {"customer": "c1"})]
        )
        t0 = time.monotonic()
        disp.run_once()
        took = time.monotonic() - t0
        with db.connect() as c:
            got = {
                r.rule: (r.state, r.reason, r.last_error)
                for r in c.execute(sa.select(deliveries))
            }
        assert got["good-receipt"][:2] == ("sent", None)
        assert len(sink.messages) == 1 and sink.messages[0]["Subject"] == "Receipt A"
        state, reason, error = got["receipt"]
        assert (state, reason) == ("failed", "render_error")
        assert "bad.email.txt" in error and limit in error, error
        assert took < 15, took  # the limit is 2 s; spawning a replacement worker is not waited
    finally:
        renderer.close()
        db.dispose()
