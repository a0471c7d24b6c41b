"""Issue 11's runaway template against a real `duly serve`: saved through the API behind an
`{% if %}` that neither sample data nor any subject enters yet, it later fails its own
delivery (`render_error`, naming `render.timeout`) while an ordinary receipt planned beside
it goes out on time; SIGTERM then stops the server promptly and leaves no render process
behind."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import httpx

from duly.core.rules.loader import load_rules
from duly.engine.runtime import build_runtime
from live import live_server

RULES = """
timezone: UTC
render: {timeout: 1s}
rules:
  - name: payment-receipt
    subject: invoice
    on: {change: status, to: paid}
    category: transactional
    to: [customer]
"""
GOOD = "Subject: Receipt {{ subject.key }}\nThanks {{ recipient.name }}.\n"
LOOP = (
    "Subject: Receipt {{ subject.key }}\n{% if attributes.big %}"
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    "{% endif %}Thanks.\n"
)


def children(pid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(entry))
    return out


def test_a_runaway_saved_template_costs_only_its_delivery_and_sigterm_stops(
    tmp_path: Path,
) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "payment-receipt.email.txt").write_text(GOOD)
    (tmp_path / "duly.yaml").write_text(RULES)
    with live_server(tmp_path, rules=tmp_path / "duly.yaml") as srv:
        h = {"Authorization": f"Bearer {srv.key}"}
        with httpx.Client(base_url=srv.url, headers=h, timeout=30) as c:
            c.put("/v1/recipients/c1", json={"name": "Ann", "email": "ann@example.test"})
            for key in ("INV-1", "INV-2"):
                r = c.put(
                    f"/v1/subjects/invoice/{key}",
                    json={"attributes": {"status": "sent"}, "recipients": {"customer": "c1"}},
                )
                assert r.status_code in (200, 201), r.text
            r = c.put("/v1/templates/payment-receipt", json={"channel": "email", "body": LOOP})
            assert r.status_code == 200, r.text  # no subject enters the branch yet
            c.put(
                "/v1/subjects/invoice/INV-1",
                json={
                    "attributes": {"status": "paid", "big": True},
                    "recipients": {"customer": "c1"},
                },
            )
            c.put(
                "/v1/subjects/invoice/INV-2",
                json={"attributes": {"status": "paid"}, "recipients": {"customer": "c1"}},
            )
            t0 = time.monotonic()
            got: dict[str, tuple] = {}
            while time.monotonic() - t0 < 30:
                items = c.get("/v1/deliveries", params={"limit": 50}).json()["items"]
                got = {d["subject"]: (d["state"], d["reason"], d["last_error"]) for d in items}
                if (
                    got.get("invoice/INV-1", ("",))[0] == "failed"
                    and got.get("invoice/INV-2", ("",))[0] == "sent"
                ):
                    break
                time.sleep(0.2)
            assert got["invoice/INV-2"][:2] == ("sent", None), got
            state, reason, error = got["invoice/INV-1"]
            assert (state, reason) == ("failed", "render_error"), got
            # the rule file says 1 s: see test_the_runtime_renders_with_the_rule_files_limits
            assert re.search(
                r"payment-receipt.email.txt: render took longer than \d+ s "
                r"\(render.timeout\)",
                error,
            ), error
            assert time.monotonic() - t0 < 15
            workers = children(srv.proc.pid)
            assert workers  # the render processes
            # SIGTERM now, with a runaway render in flight
            c.put(
                "/v1/subjects/invoice/INV-3",
                json={
                    "attributes": {"status": "paid", "big": True},
                    "recipients": {"customer": "c1"},
                },
            )
            time.sleep(0.3)
        t1 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.communicate(timeout=30)
        assert time.monotonic() - t1 < 15
        time.sleep(0.5)
        assert not [p for p in workers if Path(f"/proc/{p}").exists()], "render processes left"


def test_the_runtime_renders_with_the_rule_files_limits(tmp_path: Path) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "payment-receipt.email.txt").write_text(GOOD)
    (tmp_path / "duly.yaml").write_text(RULES)
    rf = load_rules(tmp_path / "duly.yaml")
    rt = build_runtime(rf, f"sqlite:///{tmp_path / 'duly.db'}")
    try:
        assert rt.dispatcher.renderer.limits == rf.render
    finally:
        rt.db.dispose()
