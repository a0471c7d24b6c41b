"""`duly import FILE`: existing recipients and subjects brought in through the batch API, into
the database directly (SQLite and PostgreSQL) or through a running server; rejected records
reported by line; safe to run again."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from tests.live import DULY, live_server

from duly.cli import main
from duly.client import Client

RECIPIENTS = (
    "id,name,email,timezone,consent.promotional\n"
    "carol,Carol Díaz,carol@example.test,Europe/Madrid,no\n"
    "bob,Bob,bob@example.test,Mars/Olympus,\n"  # line 3: unknown timezone
    "ann,Ann,ann@example.test,,maybe\n"  # line 4: not yes/no
    "dan,Dan,dan@example.test,Europe/London,yes\n"
)
SUBJECTS = (
    "key,status,amount:number,due_at,recipients.customer\n"
    "INV-1,sent,120.50,2099-01-10T09:00:00Z,carol\n"
    "INV-2,sent,80,2099-02-01T09:00:00Z,dan\n"
    "INV-3,sent,ten,2099-02-01T09:00:00Z,dan\n"  # line 4: not a number
    "INV-4,draft,5,2099-03-01T09:00:00Z,carol\n"
)


def _files(tmp_path: Path) -> tuple[Path, Path]:
    r = tmp_path / "customers.csv"
    s = tmp_path / "invoices.csv"
    r.write_text(RECIPIENTS, encoding="utf-8")
    s.write_text(SUBJECTS, encoding="utf-8")
    return r, s


def _run(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, ["import", *args])
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), (
        res.output
    )
    return res.exit_code, res.stdout, res.stderr


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'duly.db'}"
        assert CliRunner().invoke(main, ["migrate", "--database", url]).exit_code == 0
        return url
    return str(request.getfixturevalue("pg_db_url"))


def test_import_into_the_database_reports_rejects_by_line_and_is_safe_to_rerun(
    database: str, tmp_path: Path
) -> None:
    people, invoices = _files(tmp_path)
    rejects = tmp_path / "rejects.csv"
    code, out, err = _run(str(people), "--database", database, "--rejects", str(rejects))
    assert code == 1  # some records were refused
    assert "recipients: 2 imported (2 new, 0 updated)" in out
    assert "rejected: 2 records" in out
    assert f"{people}:3: timezone: unknown timezone 'Mars/Olympus'" in err
    assert f"{people}:4: consent.promotional: 'maybe' is not yes/no" in err
    with rejects.open(encoding="utf-8") as f:
        listed = list(csv.DictReader(f))
    assert [(r["line"], r["field"]) for r in listed] == [
        ("3", "timezone"),
        ("4", "consent.promotional"),
    ]

    code, out, err = _run(str(invoices), "--kind", "invoice", "--database", database)
    assert code == 1
    assert "subjects: 3 imported (3 new, 0 updated)" in out
    # INV-1 and INV-2 each plan due-soon and overdue; the draft INV-4 plans nothing
    assert "deliveries planned: 4" in out
    assert f"{invoices}:4: amount:number: 'ten' is not a number" in err

    from duly.store.db import make_engine
    from duly.store.store import Store

    db = make_engine(database)
    store = Store(postgres=database.startswith("postgresql"))
    try:
        with db.connect() as conn:
            carol = store.get_recipients(conn, ["carol"])["carol"]
            plan = store.plan_of_subject(conn, "invoice/INV-1")
            count_before = _deliveries(db)
        assert carol.name == "Carol Díaz" and carol.timezone == "Europe/Madrid"
        assert carol.consent == {"promotional": False}
        assert sorted(r["step"] for r in plan) == ["due-soon", "overdue"]

        # the same files again: every record updated, nothing new planned, no new rows
        code, out, _ = _run(str(people), "--database", database)
        assert "recipients: 2 imported (0 new, 2 updated)" in out
        code, out, _ = _run(str(invoices), "--kind", "invoice", "--database", database)
        assert "subjects: 3 imported (0 new, 3 updated)" in out
        assert "deliveries planned" not in out
        assert _deliveries(db) == count_before
    finally:
        db.dispose()


def _deliveries(db: object) -> int:
    import sqlalchemy as sa

    with db.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(sa.text("SELECT count(*) FROM deliveries")).scalar_one())


def test_import_through_a_running_server_with_mixed_json_lines(tmp_path: Path) -> None:
    lines = tmp_path / "records.jsonl"
    lines.write_text(
        "\n".join(
            [
                '{"id": "carol", "name": "Carol Díaz", "email": "carol@example.test"}',
                '{"kind": "invoice", "key": "INV-9", "attributes": {"status": "sent", '
                '"due_at": "2099-05-01T09:00:00Z"}, "recipients": {"customer": "carol"}}',
                '{"kind": "invoice/bad", "key": "INV-10"}',
                '{"id": "ed", "timezone": "Nowhere/Town"}',
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    with live_server(tmp_path) as live:
        res = subprocess.run(
            [*DULY, "import", str(lines), "--url", live.url, "--api-key", live.key],
            capture_output=True,
            text=True,
            env=live.env,
            timeout=60,
        )
        assert res.returncode == 1, res.stderr
        assert "recipients: 1 imported (1 new, 0 updated)" in res.stdout
        assert "subjects: 1 imported (1 new, 0 updated)" in res.stdout
        assert f"{lines}:3: kind: " in res.stderr
        assert f"{lines}:4: timezone: unknown timezone" in res.stderr
        with Client(live.url, live.key) as c:
            detail = c.get_subject("invoice", "INV-9")
            assert {p.step for p in detail.plan} == {"due-soon", "overdue"}
            assert c.get_recipient("carol").name == "Carol Díaz"


def test_a_server_that_cannot_be_reached_stops_the_import_with_a_clear_error(
    tmp_path: Path,
) -> None:
    people, _ = _files(tmp_path)
    code, _, err = _run(str(people), "--url", "http://127.0.0.1:9", "--api-key", "k")
    assert code == 1
    assert "cannot reach the server" in err and "re-running the import is safe" in err


def test_a_bad_header_stops_before_anything_is_written(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'duly.db'}"
    CliRunner().invoke(main, ["migrate", "--database", url])
    bad = tmp_path / "people.csv"
    bad.write_text("id,name,shoe_size\ncarol,Carol,38\n", encoding="utf-8")
    code, out, err = _run(str(bad), "--database", url)
    assert code == 2
    assert "column 3: 'shoe_size' is not a recipient column" in err
    assert out == ""


def test_dry_run_checks_and_imports_nothing(tmp_path: Path) -> None:
    people, _ = _files(tmp_path)
    code, out, err = _run(str(people), "--dry-run")
    assert code == 1
    assert "recipients: 3 checked, none imported (--dry-run)" in out
    assert ":4: consent.promotional" in err  # shape errors are found without a database
