"""The template edit form's parts and its live preview (the pages of
duly.web.views.templates): each part as a textarea, and a preview of the edited text rendered
with a real subject's and recipient's data (or sample data), its HTML part kept for a
sandboxed frame.

Browsers send a textarea's line ends as CRLF; they are turned back into LF (``to_lf``)
before anything is checked or saved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from fastapi import Request

from duly.core.errors import NotFound
from duly.delivery.rendering import RenderError
from duly.delivery.templates import (
    TemplateStore,
    TemplateView,
    filename,
    preview_input,
    preview_parties,
)
from duly.web.core import FrameStore, engine_of, env, session_user, viewer_tz

__all__ = [
    "FRAMES",
    "PartForm",
    "Preview",
    "channels_of",
    "language_label",
    "parts_form",
    "preview_fragment",
    "render_preview",
    "source_line",
    "to_lf",
]

# rendered previews' HTML, loaded by the preview's sandboxed frame
FRAMES = FrameStore()


def language_label(locale: str) -> str:
    """``fr-CA`` → ``French (Canada) (fr-CA)``, for people; the code alone if unknown."""
    from babel import Locale, UnknownLocaleError

    try:
        name = Locale.parse(locale.replace("-", "_")).get_display_name("en")
    except (ValueError, UnknownLocaleError):
        return locale
    return f"{name} ({locale})" if name else locale


def to_lf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _field_id(key: str) -> str:
    return "part-" + "".join(c if c.isalnum() else "-" for c in key)


@dataclass
class PartForm:
    """One textarea of the edit form."""

    key: str  # "CHANNEL.EXT"
    channel: str
    ext: str
    file: str  # NAME.CHANNEL.EXT
    source: str  # "database" | "file"
    body: str
    version: int | None = None
    has_file: bool = False
    error: str | None = None
    error_line: int | None = None
    error_source_line: str | None = None

    @property
    def field_id(self) -> str:
        return _field_id(self.key)

    @property
    def rows(self) -> int:
        return max(6, min(30, self.body.count("\n") + 2))


def parts_form(view: TemplateView, form: Any | None = None) -> list[PartForm]:
    out = []
    # per channel, the text part first: its "Subject:" line is the title
    for p in sorted(view.parts, key=lambda p: (p.channel, p.ext != "txt")):
        key = f"{p.channel}.{p.ext}"
        body = p.body
        if form is not None:
            sent = form.get(f"part:{key}")
            if isinstance(sent, str):
                body = to_lf(sent)
        out.append(
            PartForm(
                key=key,
                channel=p.channel,
                ext=p.ext,
                file=filename(view.name, p.channel, p.ext),
                source=p.source,
                body=body,
                version=p.version,
                has_file=p.has_file,
            )
        )
    return out


def channels_of(parts: list[PartForm]) -> list[str]:
    seen: list[str] = []
    for p in parts:
        if p.channel not in seen:
            seen.append(p.channel)
    return seen


@dataclass
class Preview:
    """What the preview fragment shows."""

    channel: str
    title: str | None = None
    text: str | None = None
    html: str | None = None
    data: str = "sample"  # sample | real
    subject: str | None = None
    recipient: str | None = None
    error: dict[str, Any] | None = None  # file, line, reason, source_line
    field_errors: dict[str, str] = field(default_factory=dict)
    frame_url: str | None = None  # the HTML part, for the sandboxed frame
    locale: str | None = None  # the locale the helpers wrote in
    variant: str | None = None  # the variant this recipient would get instead (NAME.LOCALE)


def source_line(sources: dict[str, str], file: str | None, line: int | None) -> str | None:
    if not file or not line or file not in sources:
        return None
    lines = sources[file].split("\n")
    return lines[line - 1] if 1 <= line <= len(lines) else None


def render_preview(
    request: Request,
    ts: TemplateStore,
    name: str,
    parts: list[PartForm],
    channel: str,
    subject_ref: str,
    recipient_id: str,
) -> Preview:
    """Render ``name`` for ``channel`` with the edited ``parts`` in place of the saved ones,
    with a subject's and recipient's real data (else sample data); as POST
    /v1/templates/{name}/preview does. Problems come back in the Preview, never raised."""
    eng = engine_of(request)
    now = eng.clock.now()
    out = Preview(channel=channel)
    if channel not in channels_of(parts):
        out.field_errors["channel"] = f"this template has no part for channel {channel!r}"
        return out
    sources = {p.file: p.body for p in parts}
    subject_ref, recipient_id = subject_ref.strip()[:301], recipient_id.strip()[:200]
    try:
        subject, recipient = preview_parties(eng, subject_ref or None, recipient_id or None)
    except NotFound as exc:
        if exc.field == "subject":
            out.field_errors["subject"] = (
                f"no subject {subject_ref} (write it as KIND/KEY, e.g. invoice/INV-1)"
            )
        else:
            out.field_errors["recipient"] = f"no recipient with id {recipient_id}"
        return out
    pin = preview_input(ts, eng, name, subject, recipient, now=now)
    out.data = "real" if pin.real else "sample"
    out.subject = pin.subject.ref
    out.recipient = pin.recipient.id if pin.recipient is not None else None
    try:
        r = ts.preview(
            name,
            channel,
            pin.context,
            sources=sources,
            recipient=pin.recipient,
            timezone=pin.timezone,
            locale=pin.locale,
        )
    except RenderError as exc:  # also over a render: limit, or every render process busy
        out.error = {
            "file": exc.template,
            "line": exc.line,
            "reason": exc.reason,
            "source_line": source_line(sources, exc.template, exc.line),
            "busy": exc.kind == "busy",
        }
        return out
    out.title, out.text, out.html = r.title, r.text, r.html
    renderer = ts.renderer()
    _, out.locale = renderer.resolve(
        name, channel, recipient=pin.recipient, locale=pin.locale, variants=False
    )
    chosen, _ = renderer.resolve(name, channel, recipient=pin.recipient, locale=pin.locale)
    out.variant = chosen if chosen != name else None
    user = session_user(request)
    if r.html and user is not None:
        token = FRAMES.put(user.id, r.html)
        out.frame_url = f"/templates/{quote(name, safe='')}/frame/{token}"
    return out


def preview_fragment(request: Request, preview: Preview) -> str:
    tmpl = env.get_template("templates/_preview.html")
    return tmpl.render(preview=preview, tz=viewer_tz(request), now=engine_of(request).clock.now())
