"""The template renderer: real template files in a temporary folder, real Jinja2, Babel and
css-inline."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from duly.core.model import Recipient
from duly.delivery.rendering import Rendered, Renderer, RenderError


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    folder = tmp_path / "templates"
    folder.mkdir()
    return folder


def write(folder: Path, filename: str, source: str) -> None:
    (folder / filename).write_text(source, encoding="utf-8")


def render_one(
    folder: Path,
    source: str,
    context: Mapping[str, Any] | None = None,
    *,
    timezone: str | None = None,
    locale: str | None = None,
) -> str:
    """Render a one-off x.sms.txt template and return its text."""
    write(folder, "x.sms.txt", source)
    text = Renderer(folder).render("x", "sms", context or {}, timezone=timezone, locale=locale).text
    assert text is not None
    return text


INVOICE = {
    "subject": {
        "kind": "invoice",
        "key": "INV-7",
        "attributes": {"due_at": "2026-03-15T08:00:00Z", "amount": "1234.5", "currency": "EUR"},
    },
    "now": "2026-03-12T08:00:00Z",
}


# --------------------------------------------------------------------------- titles and bodies


def test_subject_line_becomes_title_and_leaves_the_body(templates: Path) -> None:
    write(
        templates,
        "due.email.txt",
        "Subject: Invoice {{ subject.key }} is due\n\nHello {{ recipient.name }},\nplease pay.\n",
    )
    out = Renderer(templates).render("due", "email", INVOICE, recipient=Recipient("r1", "Ada"))
    assert out == Rendered(
        title="Invoice INV-7 is due", text="Hello Ada,\nplease pay.\n", html=None
    )


def test_text_and_html_render_separately_and_txt_subject_wins(templates: Path) -> None:
    write(templates, "due.email.txt", "Subject: from txt\nplain {{ subject.key }}\n")
    write(templates, "due.email.html", "Subject: from html\n<p>html {{ subject.key }}</p>\n")
    out = Renderer(templates).render("due", "email", INVOICE)
    assert out.title == "from txt"
    assert out.text == "plain INV-7\n"
    assert out.html is not None and "<p>html INV-7</p>" in out.html
    assert "Subject" not in out.html


def test_html_subject_is_used_without_txt_and_is_plain_text(templates: Path) -> None:
    write(templates, "due.email.html", "Subject: {{ who }} & co\n<p>x</p>")
    out = Renderer(templates).render("due", "email", {"who": "Tom & Jerry"})
    assert out.title == "Tom & Jerry & co"  # a title is never HTML-escaped
    assert out.text is None


def test_title_without_subject_is_first_nonempty_line(templates: Path) -> None:
    write(templates, "a.push.txt", "\n\n   Your invoice   {{ subject.key }}  \nmore\n")
    assert Renderer(templates).render("a", "push", INVOICE).title == "Your invoice INV-7"

    write(
        templates,
        "b.email.html",
        "<html><head><style>p { color: red }</style></head>"
        "<body><h1>Invoice &amp; {{ subject.key }}</h1><p>body</p></body></html>",
    )
    assert Renderer(templates).render("b", "email", INVOICE).title == "Invoice & INV-7"


def test_title_is_one_line_even_when_data_has_newlines(templates: Path) -> None:
    write(templates, "t.email.txt", "Subject: Re: {{ title }}\nbody\n")
    out = Renderer(templates).render("t", "email", {"title": "a\r\nBcc: evil@example.test"})
    assert out.title == "Re: a Bcc: evil@example.test"


def test_trailing_newline_is_kept(templates: Path) -> None:
    assert render_one(templates, "hi\n") == "hi\n"


# --------------------------------------------------------------------------- HTML


def test_html_is_autoescaped_and_txt_is_not(templates: Path) -> None:
    hostile = {"subject": {"attributes": {"title": "<script>alert(1)</script>"}}}
    write(
        templates,
        "x.email.txt",
        "Subject: {{ subject.attributes.title }}\n{{ subject.attributes.title }}\n",
    )
    write(templates, "x.email.html", "<p>{{ subject.attributes.title }}</p>")
    out = Renderer(templates).render("x", "email", hostile)
    assert out.text == "<script>alert(1)</script>\n"
    assert out.title == "<script>alert(1)</script>"
    assert out.html is not None
    assert "<script>" not in out.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out.html


def test_css_is_inlined_and_media_queries_kept(templates: Path) -> None:
    write(
        templates,
        "x.email.html",
        "<html><head><style>p { color: red } "
        "@media (max-width: 600px) { p { color: blue } }</style></head>"
        "<body><p>Hi</p></body></html>",
    )
    html = Renderer(templates).render("x", "email", {}).html
    assert html is not None
    assert '<p style="color: red;">Hi</p>' in html
    assert "@media (max-width: 600px)" in html


# --------------------------------------------------------------------------- helpers

HELPERS = (
    "{{ date(due) }}|{{ time(due) }}|{{ datetime(due, 'short') }}|"
    "{{ money(amount, 'EUR') }}|{{ number(1234567.5) }}|{{ due | date('long') }}"
)


def test_helpers_in_german_and_berlin(templates: Path) -> None:
    ctx = {"due": "2026-03-15T08:00:00Z", "amount": "1234.5"}
    out = render_one(templates, HELPERS, ctx, locale="de_DE", timezone="Europe/Berlin")
    assert out == "15.03.2026|09:00|15.03.26, 09:00|1.234,50\xa0€|1.234.567,5|15. März 2026"


def test_helpers_in_american_english_and_new_york(templates: Path) -> None:
    ctx = {"due": "2026-03-15T08:00:00Z", "amount": "1234.5"}
    out = render_one(templates, HELPERS, ctx, locale="en_US", timezone="America/New_York")
    # 08:00 UTC is 04:00 in New York (EDT since March 8th) — and 03:00 a week earlier.
    assert out == (
        "Mar 15, 2026|4:00\u202fAM|3/15/26, 4:00\u202fAM|€1,234.50|1,234,567.5|March 15, 2026"
    )
    assert (
        render_one(templates, "{{ time('2026-03-01T08:00:00Z') }}", timezone="America/New_York")
        == "3:00\u202fAM"
    )


def test_instant_near_midnight_shows_the_local_date(templates: Path) -> None:
    source = "{{ date('2026-03-15T23:30:00Z', 'yyyy-MM-dd') }}"
    assert render_one(templates, source, timezone="Europe/Berlin") == "2026-03-16"
    assert render_one(templates, source, timezone="America/New_York") == "2026-03-15"


def test_helpers_accept_datetimes_dates_and_local_times(templates: Path) -> None:
    ctx = {
        "aware": datetime(2026, 3, 15, 8, 0, tzinfo=UTC),
        "naive": datetime(2026, 3, 15, 8, 0),  # no offset: already local (spec "Time")
        "day": date(2026, 3, 15),
        "local_iso": "2026-03-15T08:00:00",
    }
    source = (
        "{{ time(aware, 'HH:mm') }} {{ time(naive, 'HH:mm') }} {{ time(local_iso, 'HH:mm') }} "
        "{{ date(day, 'yyyy-MM-dd') }} {{ datetime(day, 'yyyy-MM-dd HH:mm') }}"
    )
    assert render_one(templates, source, ctx, timezone="Asia/Tokyo") == (
        "17:00 08:00 08:00 2026-03-15 2026-03-15 00:00"
    )


def test_local_time_in_a_spring_forward_gap_moves_forward(templates: Path) -> None:
    source = "{{ time('2026-03-08T02:30:00', 'HH:mm') }}"
    assert render_one(templates, source, timezone="America/New_York") == "03:30"


def test_relative_is_measured_from_now(templates: Path) -> None:
    ctx = {"now": "2026-03-12T08:00:00Z"}
    source = "{{ relative('2026-03-15T08:00:00Z') }}|{{ relative('2026-03-12T06:00:00Z') }}"
    assert render_one(templates, source, ctx) == "in 3 days|2 hours ago"
    assert render_one(templates, source, ctx, locale="de") == "in 3 Tagen|vor 2 Stunden"


def test_recipient_locale_and_timezone_apply_unless_given(templates: Path) -> None:
    write(templates, "x.sms.txt", "{{ datetime(due, 'short') }} {{ recipient.name }}")
    renderer = Renderer(templates)
    ada = Recipient("r1", "Ada", timezone="Europe/Berlin", locale="de-DE")
    ctx = {"due": "2026-03-15T08:00:00Z"}
    assert renderer.render("x", "sms", ctx, recipient=ada).text == "15.03.26, 09:00 Ada"
    explicit = renderer.render("x", "sms", ctx, recipient=ada, locale="en", timezone="UTC")
    assert explicit.text == "3/15/26, 8:00\u202fAM Ada"
    # A region Babel doesn't know falls back to its language.
    bo = Recipient("r2", "Bo", locale="de_XX")
    assert renderer.render("x", "sms", ctx, recipient=bo).text == "15.03.26, 08:00 Bo"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ date('next tuesday') }}", "date(): 'next tuesday' is not an ISO 8601 date"),
        (
            "{{ date(42) }}",
            "date(): expected a date, a date-time or an ISO 8601 string, got int 42",
        ),
        (
            "{{ time(none) }}",
            "time(): expected a date, a date-time or an ISO 8601 string, got NoneType",
        ),
        ("{{ money('12,50', 'EUR') }}", "money(): '12,50' is not a number"),
        ("{{ money(12, 'EURO') }}", "money(): 'EURO' is not an ISO 4217 currency code"),
        ("{{ number(true) }}", "number(): expected a number, got bool True"),
        ("{{ relative('2026-01-01') }}", "relative(): needs `now` in the template context"),
        ("{{ date(missing) }}", "'missing' is undefined"),
    ],
)
def test_bad_helper_input_is_a_render_error_with_line(
    templates: Path, source: str, message: str
) -> None:
    with pytest.raises(RenderError) as info:
        render_one(templates, "first line\n" + source + "\n")
    assert info.value.template == "x.sms.txt"
    assert info.value.line == 2
    assert message in str(info.value)


def test_unknown_locale_or_timezone_is_a_render_error(templates: Path) -> None:
    with pytest.raises(RenderError, match="unknown locale 'klingon'"):
        render_one(templates, "x", locale="klingon")
    with pytest.raises(RenderError, match="unknown timezone 'Mars/Olympus'"):
        render_one(templates, "x", timezone="Mars/Olympus")


# --------------------------------------------------------------------------- undefined values


def test_missing_variable_is_a_render_error_naming_file_and_line(templates: Path) -> None:
    write(templates, "due.email.txt", "Subject: ok\nHello,\n\n{{ subjet.key }}\n")
    with pytest.raises(RenderError) as info:
        Renderer(templates).render("due", "email", INVOICE)
    err = info.value
    assert (err.template, err.line) == ("due.email.txt", 4)
    assert str(err) == "due.email.txt, line 4: 'subjet' is undefined"


def test_missing_attribute_fails_when_printed(templates: Path) -> None:
    with pytest.raises(RenderError, match="has no attribute 'po_number'"):
        render_one(templates, "{{ subject.attributes.po_number }}", INVOICE)


def test_optional_data_can_be_tested(templates: Path) -> None:
    source = (
        "{% if po is defined %}PO{% else %}no po{% endif %}|"
        "{{ subject.attributes.get('po_number') }}|"
        "{{ subject.attributes.po_number | default('n/a') }}|"
        "{% if subject.attributes.note %}note{% else %}no note{% endif %}"
    )
    assert render_one(templates, source, INVOICE) == "no po|None|n/a|no note"


def test_a_misspelt_name_fails_even_in_a_test(templates: Path) -> None:
    with pytest.raises(RenderError, match="'subjet' is undefined"):
        render_one(templates, "{% if subjet %}x{% endif %}", INVOICE)


# --------------------------------------------------------------------------- broken templates


def test_syntax_error_names_file_and_line(templates: Path) -> None:
    write(templates, "due.email.html", "Subject: x\n<p>\n{% if %}\n</p>\n")
    with pytest.raises(RenderError) as info:
        Renderer(templates).render("due", "email", {})
    assert (info.value.template, info.value.line) == ("due.email.html", 3)
    assert "due.email.html, line 3: Expected an expression" in str(info.value)


@pytest.mark.parametrize(
    ("name", "subject"),
    [
        pytest.param("due", "{{ nope }}", id="undefined"),
        pytest.param("bad", "{% for %}", id="syntax-error"),
    ],
)
def test_error_in_subject_line_is_line_one(templates: Path, name: str, subject: str) -> None:
    write(templates, f"{name}.email.txt", f"Subject: {subject}\nbody\n")
    with pytest.raises(RenderError) as info:
        Renderer(templates).render(name, "email", {})
    assert (info.value.template, info.value.line) == (f"{name}.email.txt", 1)


def test_missing_template_is_a_render_error(templates: Path) -> None:
    renderer = Renderer(templates)
    assert not renderer.has_template("nope", "email")
    with pytest.raises(RenderError, match="no template nope.email.txt or nope.email.html"):
        renderer.render("nope", "email", {})


def test_has_template(templates: Path) -> None:
    write(templates, "a.email.html", "x")
    write(templates, "b.sms.txt", "x")
    renderer = Renderer(templates)
    assert renderer.has_template("a", "email")
    assert renderer.has_template("b", "sms")
    assert not renderer.has_template("b", "email")
    assert not renderer.has_template("../templates/b", "sms")


# --------------------------------------------------------------------------- sandbox


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ date.__globals__ }}",
        "{{ '{0.__class__}'.format(1) }}",
    ],
)
def test_sandbox_refuses_attribute_attacks(templates: Path, source: str) -> None:
    with pytest.raises(RenderError) as info:
        render_one(templates, source)
    assert info.value.line == 1
    assert "unsafe" in str(info.value) or "not allowed" in str(info.value)


def test_templates_cannot_change_the_data(templates: Path) -> None:
    ctx = {"subject": {"attributes": {"status": "sent"}}}
    with pytest.raises(RenderError, match="not allowed in a template"):
        render_one(templates, "{{ subject.attributes.update({'status': 'paid'}) }}", ctx)
    assert ctx["subject"]["attributes"]["status"] == "sent"


def test_includes_work_but_stay_in_the_folder(templates: Path, tmp_path: Path) -> None:
    write(templates, "_footer.email.txt", "-- \nAcme {{ subject.key }}\n")
    write(templates, "x.email.txt", "Subject: s\nbody\n{% include '_footer.email.txt' %}")
    assert Renderer(templates).render("x", "email", INVOICE).text == "body\n-- \nAcme INV-7\n"

    (tmp_path / "secret.txt").write_text("password")
    write(templates, "y.email.txt", "{% include '../secret.txt' %}")
    with pytest.raises(RenderError, match="included template '../secret.txt' not found"):
        Renderer(templates).render("y", "email", {})


# --------------------------------------------------------------------------- caching


def test_edited_file_is_picked_up(templates: Path) -> None:
    renderer = Renderer(templates)
    write(templates, "x.sms.txt", "one")
    assert renderer.render("x", "sms", {}).text == "one"
    write(templates, "x.sms.txt", "two")
    later = os.stat(templates / "x.sms.txt").st_mtime_ns + 1_000_000_000
    os.utime(templates / "x.sms.txt", ns=(later, later))  # don't depend on mtime resolution
    assert renderer.render("x", "sms", {}).text == "two"


def test_loader_overrides_win_and_changes_are_picked_up(templates: Path) -> None:
    write(templates, "x.email.txt", "Subject: from file\nfile body\n")
    stored: dict[str, str] = {}
    renderer = Renderer(templates, loader_overrides=stored.get)
    assert renderer.render("x", "email", {}).title == "from file"

    stored["x.email.txt"] = "Subject: from db {{ n }}\ndb body\n"
    assert renderer.render("x", "email", {"n": 1}) == Rendered("from db 1", "db body\n", None)

    stored["x.email.txt"] = "Subject: edited\nedited body\n"
    assert renderer.render("x", "email", {}).text == "edited body\n"

    del stored["x.email.txt"]
    assert renderer.render("x", "email", {}).text == "file body\n"


def test_overrides_alone_without_a_folder() -> None:
    stored = {"x.sms.txt": "hi {{ name }}"}
    renderer = Renderer(None, loader_overrides=stored.get)
    assert renderer.has_template("x", "sms")
    assert not renderer.has_template("x", "email")
    assert renderer.render("x", "sms", {"name": "Ada"}).text == "hi Ada"
    with pytest.raises(RenderError, match="no template y.sms.txt or y.sms.html in the database"):
        renderer.render("y", "sms", {})
