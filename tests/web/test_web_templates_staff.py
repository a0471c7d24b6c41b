"""Templates staff can edit, in the web UI: the shipped wording is version 0 and can be
restored; saves are checked with real subjects (no false warnings on the demo data); the
variables a template can read are listed beside the editor (without JavaScript); per-locale
variants are listed, created, edited and previewed in their language."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

from duly.core.model import Recipient
from duly.demo import seed
from duly.engine.service import SubjectInput
from webui import VIEWER, Web, make_web

NAME = "invoice-overdue"
EDIT = f"/templates/{NAME}"


def _textarea(page: str, key: str) -> str:
    m = re.search(rf'name="part:{re.escape(key)}"[^>]*>\n(.*?)</textarea>', page, re.S)
    assert m, f"no textarea for {key}"
    return html.unescape(m.group(1))


def _flashes(page: str) -> str:
    return " ".join(re.findall(r'class="flash[^"]*"[^>]*>(.*?)<', page, re.S))


def _carol_invoice(web: Web) -> None:
    web.engine.put_recipient(
        Recipient(id="cd", name="Carol", email="c@x.test", timezone="Europe/Madrid", locale="es_ES")
    )
    web.engine.upsert_subject(
        SubjectInput(
            "invoice",
            "INV-9",
            {"status": "sent", "amount": 42, "currency": "EUR", "due_at": "2026-12-08T09:00:00Z"},
            {"customer": "cd"},
        )
    )


# --------------------------------------------------------------------------- version 0


def test_history_starts_with_the_shipped_wording_which_can_be_restored(web: Web) -> None:
    web.login()
    shipped = _textarea(web.get(EDIT).text, "email.txt")
    page = web.get(f"{EDIT}/history").text
    assert "shipped with the rule file" in page  # before any save, too
    edited = shipped.replace("Acme Billing", "Acme Billing Ltd")
    assert web.post(EDIT, {"part:email.txt": edited}, token_from=EDIT).status_code == 303
    page = web.get(f"{EDIT}/history").text
    row0 = re.search(r'<tr[^>]*>\s*<td class="num">0.*?</tr>', page, re.S)
    assert row0 and "shipped with the rule file" in row0.group(0)
    assert "Restore the shipped wording" in row0.group(0)
    page = web.get(f"{EDIT}/history?version=0").text
    assert "The shipped wording compared with the current text" in page
    assert '<span class="add">+Acme Billing Ltd</span>' in page

    r = web.post(f"{EDIT}/restore", {"version": "0"}, token_from=f"{EDIT}/history")
    assert r.status_code == 303, r.text[:300]
    page = web.get(r.headers["location"]).text
    assert f"Restored the shipped wording of {NAME} as version 2." in _flashes(page)
    view = web.rt.templates.get(NAME)
    assert view.latest == 2
    assert next(p for p in view.parts if p.ext == "txt").body == shipped
    # nothing differs from the shipped wording now: no button, and a restore says so
    assert "Restore the shipped wording" not in web.get(f"{EDIT}/history").text
    r = web.post(f"{EDIT}/restore", {"version": "0"}, token_from=f"{EDIT}/history")
    assert "already" in _flashes(web.get(r.headers["location"]).text)


def test_restoring_is_for_admins_and_versions_are_checked(web: Web) -> None:
    web.login(VIEWER)
    assert "Restore the shipped wording" not in web.get(f"{EDIT}/history").text
    r = web.post(f"{EDIT}/restore", {"version": "0"}, token_from=EDIT)
    assert r.status_code == 403
    web.logout()
    web.login()
    for bad in ("abc", "-1", ""):
        r = web.post(f"{EDIT}/restore", {"version": bad}, token_from=EDIT)
        assert r.status_code == 400, bad


# --------------------------------------------------------------------------- save checks


def test_saving_the_demo_templates_unchanged_gives_no_warning(web: Web) -> None:
    seed(web.engine)
    ts = web.rt.templates
    for s in ts.summaries():
        view = ts.get(s.name)
        saved = ts.save(
            s.name,
            [(p.channel, p.ext, p.body) for p in view.parts],
            author="admin",
            now=web.engine.clock.now(),
        )
        assert saved.warnings == [], (s.name, saved.warnings)
    # and through the page: a small edit saves without "Saved, but"
    web.login()
    body = _textarea(web.get(EDIT).text, "email.txt").replace("Acme Billing", "Acme Billing.")
    r = web.post(EDIT, {"part:email.txt": body}, token_from=EDIT)
    page = web.get(r.headers["location"]).text
    assert "Saved version" in page and "Saved, but" not in page


# --------------------------------------------------------------------------- variables


def test_the_variables_are_listed_beside_the_editor_without_javascript(web: Web) -> None:
    _carol_invoice(web)
    web.login()
    page = web.get(EDIT).text
    aside = re.search(r'<aside class="card variables".*?</aside>', page, re.S)
    assert aside, "no variables list"
    box = aside.group(0)
    assert 'data-insert="{{ attributes.amount }}"' in box
    assert "attributes.amount" in box and ">42<" in box  # an example value
    assert "recipient.name" in box and "rule.name" in box and "money" in box
    assert '<script src="/static/templates.js"' in page


# --------------------------------------------------------------------------- variants


def test_a_variant_is_listed_created_edited_and_previewed_in_its_language(web: Web) -> None:
    _carol_invoice(web)
    web.login()
    r = web.post(f"{EDIT}/variants", {"locale": "fr"}, token_from=EDIT)
    assert r.status_code == 303, r.text[:300]
    assert r.headers["location"].startswith(f"{EDIT}.fr")
    view = web.rt.templates.get(f"{NAME}.fr")
    assert view.latest == 1  # a copy of the plain template, to translate
    listing = web.get("/templates").text
    assert f'href="/templates/{NAME}.fr"' in listing and "French" in listing
    page = web.get(f"{EDIT}.fr?subject=invoice/INV-9").text
    assert "French" in page
    assert "8 déc. 2026" in page  # its own language, for a Spanish reader
    plain = web.get(f"{EDIT}?subject=invoice/INV-9").text
    assert f'href="/templates/{NAME}.fr"' in plain  # the plain page lists its variants
    assert "8 Dec 2026" in plain  # the demo rule file says template_language: en-GB
    # a variant of a variant, a bad locale, an existing one: refused with a reason
    for bad in ("xx-nope", "fr", ""):
        r = web.post(f"{EDIT}/variants", {"locale": bad}, token_from=EDIT)
        assert r.status_code in (303, 400)
        assert web.rt.templates.get(f"{NAME}.fr").latest == 1
    assert web.post(f"{EDIT}.fr/variants", {"locale": "de"}, token_from=EDIT).status_code == 400


@pytest.mark.slow
def test_version_0_and_variants_on_postgresql(tmp_path: Path, pg_db_url: str) -> None:
    web = make_web(tmp_path, database=pg_db_url)
    try:
        _carol_invoice(web)
        web.login()
        shipped = _textarea(web.get(EDIT).text, "email.txt")
        edited = shipped.replace("Acme Billing", "Acme PG")
        assert web.post(EDIT, {"part:email.txt": edited}, token_from=EDIT).status_code == 303
        r = web.post(f"{EDIT}/restore", {"version": "0"}, token_from=f"{EDIT}/history")
        assert r.status_code == 303
        assert next(p for p in web.rt.templates.get(NAME).parts if p.ext == "txt").body == shipped
        r = web.post(f"{EDIT}/variants", {"locale": "fr"}, token_from=EDIT)
        assert r.status_code == 303
        assert "8 déc. 2026" in web.get(f"{EDIT}.fr?subject=invoice/INV-9").text
    finally:
        web.close()
