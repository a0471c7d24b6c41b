"""Templates: the list, an edit form with a live preview for a chosen
subject and recipient and the list of variables beside it, the version history with diffs
(version 0: the shipped file), restore, and per-locale variants (``NAME.LOCALE``: listed
under their template, created from it, edited and previewed in their own language).

Everything goes through the runtime's TemplateStore (duly.delivery.templates), as the API does
(duly.api.templates): a save is checked first and refused as a whole with the file and line
of the problem (shown next to the part), a preview renders the edited text with a real
subject's data (or sample data) and shows a render error with its file and line.

Forms post every part as ``part:CHANNEL.EXT``. Browsers send a textarea's line ends as CRLF;
they are turned back into LF before anything is checked or saved. The parts of the form and
the preview are duly.web.views.templates_preview.
"""

from __future__ import annotations

import difflib
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from duly.asgi import template_store_of as store_of  # the runtime's TemplateStore
from duly.core.errors import InvalidInput, NotFound
from duly.core.rules.yamlnodes import NAME_RE
from duly.core.templatenames import canonical_locale, is_locale, split_variant
from duly.delivery.rendering import RenderBusy
from duly.delivery.templates import (
    EXTS,
    MAX_BODY,
    TemplateInvalid,
    TemplateStore,
    TemplateView,
    filename,
)
from duly.store.pages_records import recent_subject_refs
from duly.web.auditing import record_now, text_sizes
from duly.web.core import (
    AdminUser,
    CurrentUser,
    engine_of,
    flash,
    frame_response,
    redirect,
    render,
)
from duly.web.views.templates_preview import (
    FRAMES,
    PartForm,
    Preview,
    channels_of,
    language_label,
    parts_form,
    preview_fragment,
    render_preview,
    source_line,
    to_lf,
)

router = APIRouter()

RECENT_SUBJECTS = 20


# --------------------------------------------------------------------------- helpers


def _check_name(name: str) -> None:
    if len(name) > 200 or not NAME_RE.match(name):
        raise HTTPException(404)


def _view(ts: TemplateStore, name: str, version: int | None = None) -> TemplateView:
    _check_name(name)
    try:
        return ts.get(name, version)
    except NotFound:
        raise HTTPException(404) from None


def _recent_subjects(request: Request, kinds: list[str]) -> list[str]:
    """KIND/KEY of recent subjects of the kinds the rules using a template work on."""
    if not kinds:
        return []
    with engine_of(request).db.connect() as conn:
        return recent_subject_refs(conn, kinds, RECENT_SUBJECTS)


def _edit_context(
    request: Request,
    ts: TemplateStore,
    view: TemplateView,
    parts: list[PartForm],
    *,
    channel: str,
    subject_ref: str,
    recipient_id: str,
    preview: Preview | None,
    warnings: list[str] | None = None,
    save_error: str | None = None,
) -> dict[str, Any]:
    using = ts.rules_using(view.name)
    kinds = sorted({r.subject for r in using if r.subject})
    variant = split_variant(view.name)
    base = variant[0] if variant is not None and _exists(ts, variant[0]) else None
    own = variant[1] if base is not None else None
    return {
        "title": f"Template {view.name}",
        "view": view,
        "parts": parts,
        "channels": channels_of(parts),
        "channel": channel,
        "subject_ref": subject_ref,
        "recipient_id": recipient_id,
        "recent": _recent_subjects(request, kinds),
        "kinds": kinds,
        "using": using,
        "preview": preview,
        "warnings": warnings or [],
        "save_error": save_error,
        "variables": ts.variables(view.name),
        "base": base,
        "language": language_label(own) if own else None,
        "variants": [] if base else _variants(ts, view.name),
        "template_language": ts.rules.template_language if ts.rules is not None else None,
    }


def _names(ts: TemplateStore) -> set[str]:
    return {s.name for s in ts.summaries()}


def _exists(ts: TemplateStore, name: str) -> bool:
    return name in _names(ts)


def _variants(ts: TemplateStore, name: str) -> list[dict[str, str]]:
    """The variants of template ``name`` (``NAME.LOCALE``), with their languages' names."""
    out = []
    for n in sorted(_names(ts)):
        v = split_variant(n)
        if v is not None and v[0] == name:
            out.append({"name": n, "locale": v[1], "label": language_label(v[1])})
    return out


def _form_str(form: Any, key: str, limit: int = 400) -> str:
    v = form.get(key)
    return v[:limit] if isinstance(v, str) else ""


# --------------------------------------------------------------------------- list


@router.get("/templates", response_class=HTMLResponse)
def template_list(request: Request, user: CurrentUser) -> Response:
    ts = store_of(request)
    rows = []
    summaries = ts.summaries()
    names = {s.name for s in summaries}

    def order(s: Any) -> tuple[str, str]:  # a variant right below its template
        v = split_variant(s.name)
        return (v[0], v[1]) if v is not None and v[0] in names else (s.name, "")

    for s in sorted(summaries, key=order):
        v = split_variant(s.name)
        variant = v if v is not None and v[0] in names else None
        saved = [p for p in s.parts if p.source == "database" and p.version is not None]
        newest = max(saved, key=lambda p: p.version or 0) if saved else None
        rows.append(
            {
                "name": s.name,
                "parts": s.parts,
                "latest": s.latest,
                "updated": newest.saved_at if newest else None,
                "author": newest.author if newest else None,
                "rules": [r.name for r in ts.rules_using(s.name)],
                "variant_of": variant[0] if variant else None,
                "language": language_label(variant[1]) if variant else None,
            }
        )
    language = ts.rules.template_language if ts.rules is not None else None
    return render(
        request,
        "templates/list.html",
        {
            "title": "Templates",
            "rows": rows,
            "folder": ts.templates_dir,
            "template_language": language_label(language) if language else None,
        },
    )


# --------------------------------------------------------------------------- edit and preview


@router.get("/templates/{name}", response_class=HTMLResponse)
def template_edit(
    name: str,
    request: Request,
    user: CurrentUser,
    subject: str | None = None,
    recipient: str = "",
    channel: str = "",
) -> Response:
    ts = store_of(request)
    view = _view(ts, name)
    parts = parts_form(view)
    channels = channels_of(parts)
    channel = channel if channel in channels else channels[0]
    if subject is None:  # first visit: the newest subject a rule using it works on
        kinds = sorted({r.subject for r in ts.rules_using(name) if r.subject})
        recent = _recent_subjects(request, kinds)
        subject = recent[0] if recent else ""
    preview = render_preview(request, ts, name, parts, channel, subject, recipient[:200])
    return render(
        request,
        "templates/edit.html",
        _edit_context(
            request,
            ts,
            view,
            parts,
            channel=channel,
            subject_ref=subject[:301],
            recipient_id=recipient[:200],
            preview=preview,
        ),
    )


async def _read_edit_form(request: Request, name: str) -> tuple[Any, TemplateStore, Any]:
    form = await request.form()
    ts = store_of(request)
    view = await run_in_threadpool(_view, ts, name)
    return form, ts, view


@router.post("/templates/{name}/preview", response_class=HTMLResponse)
async def template_preview(name: str, request: Request, user: CurrentUser) -> Response:
    """The preview fragment for the live preview (duly.js puts it into #preview)."""
    form, ts, view = await _read_edit_form(request, name)
    parts = parts_form(view, form)
    channels = channels_of(parts)
    channel = _form_str(form, "channel", 100) or channels[0]
    preview = await run_in_threadpool(
        render_preview,
        request,
        ts,
        name,
        parts,
        channel,
        _form_str(form, "subject", 301),
        _form_str(form, "recipient", 200),
    )
    return HTMLResponse(preview_fragment(request, preview))


@router.get("/templates/{name}/frame/{token}")
def template_preview_frame(name: str, token: str, user: CurrentUser) -> Response:
    """A preview's HTML part for its sandboxed frame (only for the user who previewed)."""
    html = FRAMES.get(user.id, token[:64])
    if html is None:
        raise HTTPException(404)
    return frame_response(html)


async def _edit_form(request: Request, name: str) -> tuple[Any, ...]:
    """The posted edit form: (form, store, view, edited parts, channel, subject, recipient)."""
    form, ts, view = await _read_edit_form(request, name)
    parts = parts_form(view, form)
    channels = channels_of(parts)
    channel = _form_str(form, "channel", 100)
    channel = channel if channel in channels else channels[0]
    subject_ref, recipient_id = _form_str(form, "subject", 301), _form_str(form, "recipient", 200)
    return form, ts, view, parts, channel, subject_ref, recipient_id


@router.post("/templates/{name}/preview-page", response_class=HTMLResponse)
async def template_preview_page(name: str, request: Request, user: CurrentUser) -> Response:
    """The edit page again with the edited text and its preview (works without JS)."""
    form, ts, view, parts, channel, subject_ref, recipient_id = await _edit_form(request, name)
    preview = await run_in_threadpool(
        render_preview, request, ts, name, parts, channel, subject_ref, recipient_id
    )
    ctx = await run_in_threadpool(
        lambda: _edit_context(
            request,
            ts,
            view,
            parts,
            channel=channel,
            subject_ref=subject_ref,
            recipient_id=recipient_id,
            preview=preview,
        )
    )
    return render(request, "templates/edit.html", ctx)


@router.post("/templates/{name}", response_class=HTMLResponse)
async def template_save(name: str, request: Request, user: AdminUser) -> Response:
    """Save the edited parts as a new version (author: the signed-in user)."""
    form, ts, view, parts, channel, subject_ref, recipient_id = await _edit_form(request, name)

    q = {"subject": subject_ref, "recipient": recipient_id, "channel": channel}
    back = f"/templates/{name}?" + urlencode({k: v for k, v in q.items() if v or k == "subject"})

    def refuse(save_error: str | None = None) -> Response:
        preview = render_preview(request, ts, name, parts, channel, subject_ref, recipient_id)
        ctx = _edit_context(
            request,
            ts,
            view,
            parts,
            channel=channel,
            subject_ref=subject_ref,
            recipient_id=recipient_id,
            preview=preview,
            save_error=save_error,
        )
        return render(request, "templates/edit.html", ctx, status=400)

    def save() -> Response:
        for p in parts:
            if len(p.body) > MAX_BODY:
                p.error = f"a part is at most {MAX_BODY:,} characters"
                return refuse("Not saved: a part is too long.")
        # only the parts edited: saving a file's unchanged text would pin it in the
        # database (later edits of the file would no longer show)
        shown = {(p.channel, p.ext): to_lf(p.body) for p in view.parts}
        edited = [p for p in parts if p.body != shown.get((p.channel, p.ext))]
        if not edited:
            flash(request, "Nothing changed: every part is as shown.", "info")
            return redirect(back)
        try:
            saved = ts.save(
                name,
                [(p.channel, p.ext, p.body) for p in edited],
                author=user.username,
                now=engine_of(request).clock.now(),
            )
        except TemplateInvalid as exc:
            sources = {p.file: p.body for p in parts}
            target = next((p for p in parts if p.file == exc.file), None)
            reason = f"with the data of {exc.subject}: {exc.reason}" if exc.subject else exc.reason
            if target is None:  # an included file failed: show it on the first part
                target = parts[0]
                target.error = f"{exc.file}: {reason}"
            else:
                target.error = reason
            target.error_line = exc.line
            target.error_source_line = source_line(sources, exc.file, exc.line)
            return refuse("Not saved: fix the error shown next to the part. Nothing was changed.")
        except InvalidInput as exc:
            return refuse(f"Not saved: {exc}")
        except RenderBusy:
            return refuse(
                "Not saved: the server is busy rendering messages; try again in a few seconds. "
                "Nothing was changed."
            )
        if saved.version is not None:
            record_now(request, user, "save", "template", name, f"Saved as version "
                       f"{saved.version}", before=text_sizes(shown, edited),
                       after=text_sizes({(p.channel, p.ext): p.body for p in edited}))  # fmt: skip
        if saved.version is None:
            flash(request, "Nothing changed: every part was already current.", "info")
        else:
            flash(
                request,
                f"Saved version {saved.version} ({', '.join(saved.changed)}).",
            )
        for w in saved.warnings:
            flash(request, f"Saved, but: {w}", "info")
        return redirect(back)

    return await run_in_threadpool(save)


# --------------------------------------------------------------------------- variants


@router.post("/templates/{name}/variants")
async def template_add_variant(name: str, request: Request, user: AdminUser) -> Response:
    """Make the variant ``NAME.LOCALE``: the template's current text saved under that name
    (version 1), to be translated on its own page."""
    form = await request.form()
    ts = store_of(request)
    view = await run_in_threadpool(_view, ts, name)
    raw = _form_str(form, "locale", 35).strip()
    if split_variant(name) is not None:
        raise HTTPException(400, f"{name} is a language variant itself: add one to its template.")
    if not is_locale(raw):
        flash(
            request,
            f"No variant made: {raw!r} is not a language code such as fr or fr-CA.",
            "error",
        )
        return redirect(f"/templates/{name}")
    locale = canonical_locale(raw)
    target = f"{name}.{locale}"

    def make() -> Response:
        if _exists(ts, target):
            flash(request, f"{target} exists already.", "info")
            return redirect(f"/templates/{target}")
        try:
            saved = ts.save(
                target,
                [(p.channel, p.ext, p.body) for p in view.parts],
                author=user.username,
                now=engine_of(request).clock.now(),
            )
        except (InvalidInput, RenderBusy) as exc:
            flash(request, f"No variant made: {exc}", "error")
            return redirect(f"/templates/{name}")
        flash(
            request,
            f"Made {target} ({language_label(locale)}) as version {saved.version}, a copy of "
            f"{name}: translate it here.",
        )
        return redirect(f"/templates/{target}")

    return await run_in_threadpool(make)


# --------------------------------------------------------------------------- history


def _parts_at(ts: TemplateStore, view_now: TemplateView, name: str, version: int) -> dict:
    """``{CHANNEL.EXT: body}`` as of ``version``; version 0: the files alone."""
    if version >= 1:
        v = ts.get(name, version)
        return {f"{p.channel}.{p.ext}": p.body for p in v.parts}
    out = {}
    for p in view_now.parts:
        if p.has_file and ts.templates_dir is not None:
            try:
                out[f"{p.channel}.{p.ext}"] = (
                    ts.templates_dir / filename(name, p.channel, p.ext)
                ).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
    return out


def diff_lines(old: str, new: str, old_label: str, new_label: str) -> list[tuple[str, str]]:
    """A unified diff as (css class, line) pairs: add, del, hunk, head or ctx."""
    out = []
    for line in difflib.unified_diff(
        old.split("\n"), new.split("\n"), old_label, new_label, lineterm="", n=3
    ):
        if line.startswith(("+++", "---")):
            cls = "head"
        elif line.startswith("@@"):
            cls = "hunk"
        elif line.startswith("+"):
            cls = "add"
        elif line.startswith("-"):
            cls = "del"
        else:
            cls = "ctx"
        out.append((cls, line or " "))
    return out


@router.get("/templates/{name}/history", response_class=HTMLResponse)
def template_history(
    name: str,
    request: Request,
    user: CurrentUser,
    version: int | None = None,
    against: str = "previous",
) -> Response:
    ts = store_of(request)
    current = _view(ts, name)
    latest = current.latest
    diffs: list[dict[str, Any]] = []
    lowest = 0 if current.shipped else 1
    if version is not None and not lowest <= version <= (latest or 0):
        raise HTTPException(404)
    if latest is not None or version == 0:
        if version is None:
            version = latest
        assert version is not None
        against = "current" if against == "current" or version == 0 else "previous"
        new = _parts_at(ts, current, name, version)
        if against == "previous":
            old, old_name = (
                _parts_at(ts, current, name, version - 1),
                (f"version {version - 1}" if version > 1 else "the shipped wording"),
            )
            new_name = f"version {version}"
        else:
            old, old_name = new, ("the shipped wording" if version == 0 else f"version {version}")
            new, new_name = {f"{p.channel}.{p.ext}": p.body for p in current.parts}, "current"
        for key in sorted(set(old) | set(new)):
            a, b = old.get(key), new.get(key)
            if a == b:
                continue
            file = filename(name, *key.rsplit(".", 1))
            diffs.append(
                {
                    "key": key,
                    "lines": diff_lines(
                        a or "", b or "", f"{file} ({old_name})", f"{file} ({new_name})"
                    ),
                    "added": a is None,
                    "removed": b is None,
                }
            )
    return render(
        request,
        "templates/history.html",
        {
            "title": f"History of {name}",
            "view": current,
            "history": list(reversed(current.history)),
            "shipped_in_use": current.latest is None
            or all(
                p.body == body
                for key, body in _parts_at(ts, current, name, 0).items()
                for p in current.parts
                if f"{p.channel}.{p.ext}" == key
            ),
            "version": version,
            "against": against,
            "diffs": diffs,
        },
    )


@router.post("/templates/{name}/restore")
async def template_restore(name: str, request: Request, user: AdminUser) -> Response:
    form = await request.form()
    ts = store_of(request)
    raw = form.get("version")
    try:
        version = int(raw) if isinstance(raw, str) else -1
    except ValueError:
        version = -1
    _check_name(name)
    if not 0 <= version <= 2**31 - 1:
        raise HTTPException(400, "Choose a version to restore.")
    what = "the shipped wording" if version == 0 else f"version {version}"

    def restore() -> Response:
        try:
            saved = ts.restore(
                name, version, author=user.username, now=engine_of(request).clock.now()
            )
        except NotFound:
            raise HTTPException(404) from None
        except (TemplateInvalid, InvalidInput) as exc:
            flash(request, f"{what.capitalize()} of {name} cannot be restored: {exc}", "error")
            return redirect(f"/templates/{name}/history?version={version}")
        except RenderBusy:
            flash(request, "Not restored: the server is busy rendering; try again.", "error")
            return redirect(f"/templates/{name}/history?version={version}")
        if saved.version is None:
            flash(request, f"{what.capitalize()} of {name} is already the current text.", "info")
            return redirect(f"/templates/{name}/history?version={version}")
        record_now(request, user, "restore", "template", name,
                   f"Restored {what} as version {saved.version}")  # fmt: skip
        if version == 0:
            flash(request, f"Restored the shipped wording of {name} as version {saved.version}.")
        else:
            flash(request, f"Restored version {version} of {name} as version {saved.version}.")
        for w in saved.warnings:
            flash(request, f"Restored, but: {w}", "info")
        return redirect(f"/templates/{name}/history?version={saved.version}")

    return await run_in_threadpool(restore)


__all__ = ["EXTS", "diff_lines", "render_preview", "router"]
