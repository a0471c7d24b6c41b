"""The `duly` command as a user runs it: real processes, real databases, real SMTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from duly.cli import main
from duly.core.model import Recipient
from duly.core.rules.loader import load_rules
from duly.engine.service import Engine, SubjectInput
from duly.store.db import make_engine, migrate
from duly.store.tables import deliveries

DULY = [sys.executable, "-m", "duly.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_every_option_names_its_environment_variable() -> None:
    runner = CliRunner()
    for cmd in (["serve"], ["worker"], ["migrate"], ["simulate"], ["outbox"], ["rules", "check"]):
        out = runner.invoke(main, [*cmd, "--help"], terminal_width=200).output
        options = [
            line
            for line in out.splitlines()
            if line.strip().startswith("-") and not line.strip().startswith(("-h,", "--help"))
        ]
        assert options, cmd
        assert out.count("env var: DULY_") == len(options), (cmd, out)
    serve_help = runner.invoke(main, ["serve", "--help"]).output
    for var in ("DULY_RULES", "DULY_DATABASE_URL", "DULY_HOST", "DULY_PORT"):
        assert var in serve_help


def test_rules_check_lists_every_error_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "duly.yaml"
    bad.write_text(
        "timezone: Mars/Base\n"
        "rules:\n"
        "  - name: a\n"
        "    subject: invoice\n"
        '    at: "due_at - 3 days"\n'
        "  - name: b\n"
        "    subject: invoice\n"
        '    if: "status =="\n'
        "    at: due_at\n"
    )
    res = CliRunner().invoke(main, ["rules", "check", "--no-templates", str(bad)])
    assert res.exit_code == 2
    err = res.stderr
    assert "duly.yaml:1" in err and "timezone" in err
    assert "duly.yaml:5" in err and "rules[0]" in err
    assert "duly.yaml:8" in err and "rules[1]" in err
    good = Path(__file__).parents[2] / "src" / "duly" / "demo" / "duly.yaml"
    res = CliRunner().invoke(main, ["rules", "check", str(good)])
    assert res.exit_code == 0 and "OK, 3 rules" in res.stdout


def test_migrate_then_outbox_lists_and_shows_messages(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'duly.db'}"
    res = CliRunner().invoke(main, ["migrate", "--database", url])
    assert res.exit_code == 0 and "revision" in res.stdout
    res = CliRunner().invoke(main, ["outbox", "--database", url])
    assert res.exit_code == 0 and "empty" in res.stdout


def test_outbox_says_when_more_messages_exist(tmp_path: Path) -> None:
    """With more sent messages than --limit, the list says so (in JSON mode, on stderr)."""
    from duly import demo
    from duly.engine.runtime import BUNDLED_RULES

    url = f"sqlite:///{tmp_path / 'duly.db'}"
    db = make_engine(url)
    migrate(db)
    demo.seed_history(Engine(load_rules(BUNDLED_RULES), db))
    with db.connect() as conn:
        sent = conn.execute(
            sa.select(sa.func.count()).where(deliveries.c.state == "sent")
        ).scalar_one()
    db.dispose()
    assert sent > 3
    res = CliRunner().invoke(main, ["outbox", "--database", url, "--limit", "3"])
    assert res.exit_code == 0
    assert len(res.stdout.strip().splitlines()) == 3 + 2  # three messages, a blank, the note
    assert "The newest 3 messages of more; `--limit N` shows more" in res.stdout
    res = CliRunner().invoke(main, ["outbox", "--database", url, "--limit", str(sent)])
    assert res.exit_code == 0 and f"\n{sent} messages; `duly outbox ID`" in res.stdout
    assert "of more" not in res.stdout
    res = CliRunner().invoke(main, ["outbox", "--database", url, "--limit", "3", "--json"])
    assert len(json.loads(res.stdout)) == 3
    assert "more than 3 messages" in res.stderr


def test_rules_check_warns_of_what_this_environment_lacks(tmp_path: Path) -> None:
    """A ``${VAR}`` that is unset here passes the check of the file as written, with a
    warning naming it (`duly serve` would refuse the file here); --strict makes it an error."""
    rules = tmp_path / "duly.yaml"
    rules.write_text(
        'channels:\n  email: {type: smtp, url: "${DULY_TEST_UNSET_SMTP_URL}"}\nrules: []\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "DULY_TEST_UNSET_SMTP_URL"}
    res = CliRunner(env=env).invoke(main, ["rules", "check", str(rules)])
    assert res.exit_code == 0 and "OK, 0 rules" in res.stdout
    assert "warning:" in res.stderr and "DULY_TEST_UNSET_SMTP_URL is not set" in res.stderr
    assert "duly.yaml:2" in res.stderr
    res = CliRunner(env=env).invoke(main, ["rules", "check", "--strict", str(rules)])
    assert res.exit_code == 2 and "error:" in res.stderr and "OK" not in res.stdout
    set_env = {**env, "DULY_TEST_UNSET_SMTP_URL": "smtp://127.0.0.1:2525"}
    res = CliRunner(env=set_env).invoke(main, ["rules", "check", "--strict", str(rules)])
    assert res.exit_code == 0 and res.stderr == ""


def _wait(pred, timeout: float = 20.0) -> bool:  # noqa: ANN001
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_serve_runs_the_demo_and_the_outbox_shows_what_went_out(
    tmp_path: Path, stop_signal: int
) -> None:
    """The README's first command: demo rules on a fresh SQLite file; the first message
    (a payment receipt) goes out at once and is readable with `duly outbox`."""
    port = free_port()
    env = {
        **os.environ,
        "DULY_PORT": str(port),
        "DULY_DATABASE_URL": f"sqlite:///{tmp_path / 'duly.db'}",
    }
    env.pop("DULY_RULES", None)
    proc = subprocess.Popen(
        [*DULY, "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    return json.load(r)["status"] == "ok"
            except OSError:
                return False

        assert _wait(ready), "serve did not become ready"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            assert json.load(r) == {"status": "ok"}

        def receipt_listed() -> bool:
            out = subprocess.run(
                [*DULY, "outbox"], cwd=tmp_path, env=env, capture_output=True, text=True
            )
            return "Payment received for invoice INV-1003" in out.stdout

        assert _wait(receipt_listed)
    finally:
        proc.send_signal(stop_signal)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "sent delivery" in out and "demo data loaded" in out
    assert "dispatcher" in out and out.rstrip().endswith("stopped")


@pytest.fixture
def smtp_sink():  # noqa: ANN201
    from aiosmtpd.controller import Controller

    class Sink:
        def __init__(self) -> None:
            self.count = 0

        async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, ANN201
            self.count += 1
            return "250 OK"

    sink = Sink()
    port = free_port()
    ctl = Controller(sink, hostname="127.0.0.1", port=port)
    ctl.start()
    yield sink, port
    ctl.stop()


def test_worker_stops_cleanly_on_sigterm_and_loses_nothing(
    db_url: str, tmp_path: Path, smtp_sink
) -> None:  # noqa: ANN001
    sink, port = smtp_sink
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "n.email.txt").write_text("Subject: {{ subject.key }}\nhi\n")
    (tmp_path / "duly.yaml").write_text(
        "channels:\n"
        f'  email: {{type: smtp, url: "smtp://127.0.0.1:{port}", from: "a@b.test"}}\n'
        "rules:\n"
        "  - name: r\n    subject: job\n    to: [owner]\n    template: n\n"
        '    steps:\n      - {name: s, at: "due_at"}\n'
    )
    rf = load_rules(tmp_path / "duly.yaml")
    migrate(db_url)
    db = make_engine(db_url)
    eng = Engine(rf, db)
    eng.put_recipient(Recipient("o", email="o@example.test"))
    soon = datetime.now(UTC) + timedelta(seconds=2)
    n = 300
    eng.upsert_subjects(
        [
            SubjectInput("job", str(i), {"due_at": soon.isoformat()}, {"owner": "o"})
            for i in range(n)
        ]
    )
    env = {**os.environ, "DULY_DATABASE_URL": db_url, "DULY_RULES": str(tmp_path / "duly.yaml")}
    proc = subprocess.Popen(
        [*DULY, "worker", "--concurrency", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert _wait(lambda: sink.count > 20, 30), "the worker sent nothing"
    proc.send_signal(signal.SIGTERM)  # in the middle of the drain
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "worker stopped" in out
    with db.connect() as c:
        states = dict(
            c.execute(
                sa.select(deliveries.c.state, sa.func.count()).group_by(deliveries.c.state)
            ).all()
        )
    assert states.get("sending", 0) == 0, states  # nothing left claimed
    assert states.get("sent", 0) == sink.count  # every send recorded, none twice
    assert states.get("sent", 0) + states.get("pending", 0) == n
    db.dispose()


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_an_http_base_url_is_warned_about_at_start(command: str, tmp_path: Path, smtp_sink) -> None:  # noqa: ANN001
    """Unsubscribe links in email need https (RFC 8058): duly says so on stderr, in its log."""
    _, port = smtp_sink
    (tmp_path / "duly.yaml").write_text(
        "channels:\n"
        f'  email: {{type: smtp, url: "smtp://127.0.0.1:{port}", from: "a@b.test"}}\n'
        "rules: []\n"
    )
    env = {
        **os.environ,
        "DULY_DATABASE_URL": f"sqlite:///{tmp_path / 'duly.db'}",
        "DULY_RULES": str(tmp_path / "duly.yaml"),
        "DULY_BASE_URL": "http://duly.example.test",
    }
    args = [*DULY, command] + (["--port", str(free_port())] if command == "serve" else [])
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    lines: list[str] = []

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert _wait(lambda: any("started" in x or "DULY_BASE_URL" in x for x in lines), 30)
        time.sleep(0.5)  # a warning comes before the start line; give it a moment anyway
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        reader.join(10)
    out = "".join(lines)
    [warning] = [line for line in out.splitlines() if "DULY_BASE_URL" in line]
    assert "WARNING" in warning and "duly.preferences" in warning
    assert "http://duly.example.test" in warning and "https" in warning
