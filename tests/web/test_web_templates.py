"""Templates pages (U5.7): list, edit with preview, save as a version, history, restore."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

from duly.core.model import Recipient
from duly.engine.service import SubjectInput
from webui import HOSTILE_ATTR, VIEWER, Web, make_web  # tests/webui.py

NAME = "invoice-due-soon"
EDIT = f"/templates/{NAME}"
HOSTILE_TEXT = "<script>alert(1)</script>"


def _seed(web: Web, note: str = "plain") -> None:
    web.engine.put_recipient(
        Recipient(id="c1", name="Carla Diaz", email="carla@example.com", timezone="Europe/Paris")
    )
    web.engine.upsert_subject(
        SubjectInput(
            "invoice",
            "INV-7",
            {
                "status": "sent",
                "amount": 42,
                "currency": "EUR",
                "due_at": "2031-05-01T09:00:00Z",
                "note": note,
            },
            {"customer": "c1"},
        )
    )


def _textarea(page: str, key: str) -> str:
    m = re.search(rf'name="part:{re.escape(key)}"[^>]*>\n(.*?)</textarea>', page, re.S)
    assert m, f"no textarea for {key}"
    return html.unescape(m.group(1))


def _txt(web: Web) -> str:
    return _textarea(web.get(EDIT).text, "email.txt")


def _preview(web: Web, body: str, **extra: str) -> str:
    data = {"part:email.txt": body, "channel": "email", "subject": "invoice/INV-7", **extra}
    r = web.post(f"{EDIT}/preview", data, token_from=EDIT)
    assert r.status_code == 200, r.text[:500]
    return r.text


def test_list_shows_templates_their_parts_and_the_rules_using_them(web: Web) -> None:
    web.login()
    page = web.get("/templates").text
    assert f'href="/templates/{NAME}"' in page
    assert "email.html" in page and "email.txt" in page
    assert 'href="/rules#rule-invoice-reminders"' in page
    assert "payment-receipt" in page


def test_edit_page_shows_every_part_and_a_preview_with_the_newest_subject(web: Web) -> None:
    _seed(web)
    web.login()
    page = web.get(EDIT).text
    assert _textarea(page, "email.txt").startswith("Subject: Invoice {{ subject.key }} is due")
    assert "<html>" in _textarea(page, "email.html")
    assert 'data-preview="/templates/invoice-due-soon/preview"' in page
    assert 'value="invoice/INV-7"' in page  # the newest invoice is the default subject
    assert "Invoice INV-7 is due on" in page  # the title, rendered
    assert "Hello Carla Diaz," in page
    assert '<iframe class="message" sandbox src="/templates/invoice-due-soon/frame/' in page
    assert 'formaction="/templates/invoice-due-soon/preview-page"' in page


def test_save_makes_a_version_with_the_author_and_keeps_the_file_parts(web: Web) -> None:
    _seed(web)
    web.login()
    body = _txt(web).replace("Thank you,", "Many thanks,")
    # a browser sends a textarea's line ends as CRLF
    r = web.post(EDIT, {"part:email.txt": body.replace("\n", "\r\n")}, token_from=EDIT)
    assert r.status_code == 303, r.text[:500]
    page = web.get(r.headers["location"]).text
    assert "Saved version 1 (email.txt)." in page
    view = web.rt.templates.get(NAME)
    assert view.latest == 1
    txt = next(p for p in view.parts if p.ext == "txt")
    assert txt.source == "database" and txt.author == "admin" and txt.body == body
    assert "\r" not in txt.body
    html_part = next(p for p in view.parts if p.ext == "html")
    assert html_part.source == "file"  # not edited: not copied into the database
    assert "Many thanks," in page  # the preview renders the saved text
    # saving the same text again stores nothing
    r = web.post(EDIT, {"part:email.txt": body}, token_from=EDIT)
    assert r.status_code == 303
    assert "Nothing changed" in web.get(r.headers["location"]).text
    assert web.rt.templates.get(NAME).latest == 1
    listing = web.get("/templates").text
    assert "version 1" in listing and ">admin<" in listing


def test_an_invalid_template_is_refused_with_its_line_and_the_text_is_kept(web: Web) -> None:
    web.login()
    body = "Subject: Hi\nline two\n{{ unclosed\n"
    r = web.post(EDIT, {"part:email.txt": body}, token_from=EDIT)
    assert r.status_code == 400
    assert "Not saved" in r.text
    err = re.search(
        r'<div class="error" id="e-part-email-txt" role="alert">(.*?)</div>', r.text, re.S
    )
    assert err, r.text[:3000]
    assert "Line 3:" in err.group(1)
    assert "{{ unclosed" in html.unescape(err.group(1))  # the line itself is shown
    assert _textarea(r.text, "email.txt") == body  # the edited text is kept
    assert 'aria-invalid="true"' in r.text
    assert web.rt.templates.get(NAME).latest is None  # nothing saved
    # an unknown name is refused too (it would fail every delivery)
    r = web.post(EDIT, {"part:email.txt": "Subject: {{ subjet.key }}\n"}, token_from=EDIT)
    assert r.status_code == 400 and "&#39;subjet&#39; is undefined" in r.text
    assert web.rt.templates.get(NAME).latest is None


def test_preview_fragment_renders_for_a_chosen_subject_and_recipient(web: Web) -> None:
    _seed(web)
    web.engine.put_recipient(Recipient(id="r2", name="Rita Two", email="r2@example.com"))
    web.login()
    frag = _preview(web, "Subject: Pay {{ subject.key }}\nDear {{ recipient.name }}\n")
    assert "<html" not in frag  # a fragment, not a page
    assert "Pay INV-7" in frag and "Dear Carla Diaz" in frag
    frag = _preview(
        web, "Subject: Pay {{ subject.key }}\nDear {{ recipient.name }}\n", recipient="r2"
    )
    assert "Dear Rita Two" in frag and "recipient <strong>r2</strong>" in frag
    # no subject: sample data
    frag = _preview(
        web,
        "Subject: x\nDear {{ recipient.name }}\n",
        subject="",
        **{"part:email.html": "<p>{{ recipient.email }}</p>"},
    )
    assert "sample data" in frag and "Dear Sam Sample" in frag
    assert "&lt;p&gt;sam@example.com&lt;/p&gt;" in frag  # the HTML part, edited too


def test_preview_shows_render_errors_inline_with_file_and_line(web: Web) -> None:
    _seed(web)
    web.login()
    frag = _preview(web, "Subject: x\nfine\n{{ attributes.nothing_here }}\n")
    assert 'role="alert"' in frag
    assert "Render error in <code>invoice-due-soon.email.txt</code>, line 3" in frag
    assert "nothing_here" in frag
    frag = _preview(web, "Subject: x\n{% if %}\n")
    assert "line 2" in frag
    frag = _preview(web, "x", subject="invoice/NOPE")
    assert "Subject: no subject invoice/NOPE" in frag
    frag = _preview(web, "x", recipient="nobody")
    assert "Recipient: no recipient with id nobody" in frag


def test_preview_page_works_without_javascript(web: Web) -> None:
    _seed(web)
    web.login()
    body = "Subject: No-JS {{ subject.key }}\nbody\n"
    r = web.post(
        f"{EDIT}/preview-page",
        {"part:email.txt": body, "subject": "invoice/INV-7", "channel": "email"},
        token_from=EDIT,
    )
    assert r.status_code == 200
    assert "No-JS INV-7" in r.text
    assert _textarea(r.text, "email.txt") == body
    assert web.rt.templates.get(NAME).latest is None  # a preview saves nothing


def test_hostile_template_output_and_data_are_escaped_in_preview_and_diff(web: Web) -> None:
    _seed(web, note=HOSTILE_ATTR)
    web.login()
    body = f"Subject: {HOSTILE_TEXT}\n{HOSTILE_TEXT}\nnote: {{{{ attributes.note }}}}\n"
    frag = _preview(web, body)
    assert HOSTILE_TEXT not in frag and "<img src=x" not in frag
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in frag
    assert "&lt;img src=x onerror=alert(1)&gt;" in frag
    # in the HTML part: the iframe's srcdoc and the source view are escaped
    html_body = f"<p>{HOSTILE_TEXT}</p><p>{{{{ attributes.note }}}}</p>"
    frag = _preview(web, body, **{"part:email.html": html_body})
    assert HOSTILE_TEXT not in frag and "<img src=x" not in frag
    # the rendered HTML itself is loaded by the sandboxed frame, under a policy that runs
    # no script, and only by the user who made the preview
    frame = re.search(r'<iframe class="message" sandbox src="([^"]+)"', frag)
    assert frame, frag
    r = web.get(frame.group(1))
    assert r.status_code == 200 and "<p>" in r.text
    assert r.headers["content-security-policy"].startswith("default-src 'none'")
    assert r.headers["content-security-policy"].endswith("sandbox")
    assert "script-src" not in r.headers["content-security-policy"]
    web.logout()
    web.login(VIEWER)
    assert web.get(frame.group(1)).status_code == 404
    web.logout()
    web.login()
    # saved, then shown in the edit page and the history diff, escaped
    r = web.post(EDIT, {"part:email.txt": body}, token_from=EDIT)
    assert r.status_code == 303
    for url in (EDIT, f"{EDIT}/history", f"{EDIT}/history?version=1&against=current"):
        page = web.get(url).text
        assert HOSTILE_TEXT not in page and "<img src=x" not in page, url
    diff = web.get(f"{EDIT}/history").text
    assert '<span class="add">+&lt;script&gt;alert(1)&lt;/script&gt;</span>' in diff


def test_history_shows_versions_and_diffs_and_restore_makes_a_new_version(web: Web) -> None:
    web.login()
    original = _txt(web)
    v1 = original.replace("Acme Billing", "Acme Billing Ltd")
    v2 = v1.replace("Thank you,", "Thanks a lot,")
    for body in (v1, v2):
        assert web.post(EDIT, {"part:email.txt": body}, token_from=EDIT).status_code == 303
    page = web.get(f"{EDIT}/history").text
    assert "What version 2 changed" in page
    assert '<span class="del">-Thank you,</span>' in page
    assert '<span class="add">+Thanks a lot,</span>' in page
    assert '<span class="hunk">@@' in page
    page = web.get(f"{EDIT}/history?version=1").text
    assert '<span class="del">-Acme Billing</span>' in page  # against the file
    assert '<span class="add">+Acme Billing Ltd</span>' in page
    page = web.get(f"{EDIT}/history?version=1&against=current").text
    assert "compared with the current text" in page
    assert '<span class="add">+Thanks a lot,</span>' in page
    assert "Restore this version" in page
    r = web.post(f"{EDIT}/restore", {"version": "1"}, token_from=f"{EDIT}/history")
    assert r.status_code == 303
    page = web.get(r.headers["location"]).text
    assert f"Restored version 1 of {NAME} as version 3." in page
    view = web.rt.templates.get(NAME)
    assert view.latest == 3
    txt = next(p for p in view.parts if p.ext == "txt")
    assert txt.body == v1 and txt.author == "admin"
    assert web.get(f"{EDIT}/history?version=9").status_code == 404
    assert web.get(f"{EDIT}/history?version=x").status_code == 400


def test_a_viewer_can_read_and_preview_but_not_save_or_restore(web: Web) -> None:
    _seed(web)
    web.login()
    body = _txt(web).replace("Acme", "Acme Co")
    assert web.post(EDIT, {"part:email.txt": body}, token_from=EDIT).status_code == 303
    web.logout()
    web.login(VIEWER)
    page = web.get(EDIT).text
    assert "Save as version" not in page and "only an admin can save" in page
    assert "Restore this version" not in web.get(f"{EDIT}/history?version=1").text
    r = web.post(EDIT, {"part:email.txt": "Subject: x\nhijack\n"}, token_from=EDIT)
    assert r.status_code == 403
    r = web.post(f"{EDIT}/restore", {"version": "1"}, token_from=EDIT)
    assert r.status_code == 403
    assert web.rt.templates.get(NAME).latest == 1
    assert "hijack" in _preview(web, "Subject: x\nhijack\n")  # previewing is reading


def test_posts_without_the_csrf_token_are_refused(web: Web) -> None:
    web.login()
    web.get(EDIT)
    r = web.client.post(EDIT, data={"part:email.txt": "Subject: x\ny\n"}, follow_redirects=False)
    assert r.status_code == 403
    r = web.client.post(f"{EDIT}/restore", data={"version": "1"}, follow_redirects=False)
    assert r.status_code == 403
    assert web.rt.templates.get(NAME).latest is None


def test_unknown_templates_and_bad_names_are_404(web: Web) -> None:
    assert web.get("/templates", follow_redirects=False).status_code == 303  # sign in first
    web.login()
    assert web.get("/templates/no-such-template").status_code == 404
    assert web.get("/templates/..%2Fetc").status_code == 404
    assert web.get("/templates/no-such/history").status_code == 404
    r = web.post("/templates/no-such/preview", {"part:email.txt": "x"}, token_from=EDIT)
    assert r.status_code == 404
    r = web.post(f"{EDIT}/restore", {"version": "abc"}, token_from=EDIT)
    assert r.status_code == 400


@pytest.mark.slow
def test_templates_pages_on_postgresql(tmp_path: Path, pg_db_url: str) -> None:
    web = make_web(tmp_path, database=pg_db_url)
    try:
        _seed(web)
        web.login()
        assert "invoice-due-soon" in web.get("/templates").text
        body = _txt(web).replace("Acme Billing", "Acme PG")
        assert web.post(EDIT, {"part:email.txt": body}, token_from=EDIT).status_code == 303
        assert web.post(EDIT, {"part:email.txt": "{{ unclosed"}, token_from=EDIT).status_code == 400
        page = web.get(EDIT).text
        assert "Acme PG" in page and 'value="invoice/INV-7"' in page
        hist = web.get(f"{EDIT}/history").text
        assert '<span class="add">+Acme PG</span>' in hist
        r = web.post(f"{EDIT}/restore", {"version": "1"}, token_from=f"{EDIT}/history")
        assert r.status_code == 303  # already current
        assert web.rt.templates.get(NAME).latest == 1
        assert "Pay INV-7" in _preview(web, "Subject: Pay {{ subject.key }}\n")
    finally:
        web.close()
