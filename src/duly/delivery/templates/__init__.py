"""Templates kept in the database, versioned, overriding the files.

A template is a *name* with *parts*, one per channel and extension, exactly like the files
``templates/NAME.CHANNEL.txt`` and ``.html``. Saving through the API writes rows to the
``templates`` table; the newest row of a part wins over the file of the same name when the
dispatcher renders (:meth:`TemplateStore.override`, handed to the Renderer).

Versions are counted per *name*: each save makes version N+1 and holds the parts it changed
(one or several), so "version 4" is the whole template as it was after the fourth save —
each part at its newest row with ``version <= 4``, the files for parts never saved. Nothing
is ever deleted or rewritten; restoring is saving an old body again (a new version).

A save is checked before it is stored, in this order, and refused as a whole
(:class:`TemplateInvalid`, naming the file and line) when a part

1. does not compile (Jinja syntax, an unknown filter, a bad ``Subject:`` line);
2. reads a name the dispatcher never provides (``{{ subjet.key }}``: a typo that would fail
   every delivery) or a dunder attribute (``x.__class__``: refused by the sandbox);
3. breaks the sandbox, includes a missing template or goes over a ``render:`` limit of the
   rule file (:class:`TemplateOverLimit`) when rendered with the data of the most recent
   subjects (REAL_SUBJECTS of them) of the kinds its rules work on, each with up to
   RECIPIENTS_PER_SUBJECT of its recipients (in their language: see
   :mod:`duly.core.templatenames`); the error then names the subject. Only when there is no
   such subject is it rendered with sample data.

Other failures — ``subject.attributes.amount`` is missing in a real subject, a helper gets
a value it cannot format — come back as warnings (naming the subject and recipient) and the
save goes through: what a delivery to them would fail with. Sample data has no attributes,
so its warnings say plainly that they come from sample data.

The shipped file is **version 0**: :meth:`TemplateStore.get` with ``version=0`` shows the
files alone, and :meth:`TemplateStore.restore` of version 0 saves their text as a new
version (the parts saved here that have no file stay).

A per-locale variant ``NAME.LOCALE`` (``invoice-overdue.fr``) is a template of its own here
(its own versions), used by the rules of ``NAME`` and checked in its own language. Every render here runs with the rule file's limits in a render process
(:mod:`duly.delivery.rendering.pool`), as an interactive render: when every render process is busy the
check raises :class:`~duly.delivery.rendering.RenderBusy` and nothing is saved.

The override lookup runs on every render, so it reads a dict. The dict is rebuilt when this
process saves and, for saves by other processes, when ``(count, max id)`` of the table has
changed — checked at most every ``refresh`` seconds (2 by default).

The checks are in :mod:`duly.delivery.templates.checks`, the render context, sample data and
preview inputs in :mod:`duly.delivery.templates.context`, the SQL in :mod:`duly.store.templates`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from duly.core.errors import InvalidInput, NotFound
from duly.core.model import Recipient, RenderLimits, Rule, RuleFile, Subject
from duly.core.rules.yamlnodes import NAME_RE
from duly.core.templatenames import split_variant
from duly.delivery.rendering import Rendered, Renderer, RenderError, RenderLimitExceeded
from duly.delivery.templates.checks import (
    CONTEXT_NAMES,
    TemplateInvalid,
    TemplateOverLimit,
    _refusal,
    _static_check,
    data_warning,
)
from duly.delivery.templates.context import (
    SAMPLE_RECIPIENT,
    SAMPLE_SUBJECT,
    PreviewInput,
    VariableGroup,
    preview_input,
    preview_parties,
    real_parties,
    render_context,
    variables,
)
from duly.store import templates as store
from duly.store.db import Connection, Engine, SQLAlchemyError, write_transaction

__all__ = [
    "CONTEXT_NAMES",
    "EXTS",
    "Part",
    "PreviewInput",
    "Saved",
    "TemplateInvalid",
    "TemplateOverLimit",
    "TemplateStore",
    "TemplateSummary",
    "TemplateView",
    "VariableGroup",
    "VersionInfo",
    "filename",
    "preview_input",
    "preview_parties",
    "render_context",
]

log = logging.getLogger("duly.templates")

EXTS = ("txt", "html")
MAX_BODY = 500_000
REFRESH_SECONDS = 2.0
# A save is rendered with the data of this many of the newest subjects its rules use, each
# with at most this many of its recipients.
REAL_SUBJECTS = 3
RECIPIENTS_PER_SUBJECT = 2


@dataclass(frozen=True, slots=True)
class Part:
    """One channel and extension of a template, as rendered (or as of a version)."""

    channel: str
    ext: str
    source: str  # "database" | "file"
    body: str
    version: int | None = None  # the version that last changed it (database parts)
    author: str | None = None
    saved_at: datetime | None = None
    has_file: bool = False  # a file of the same name exists (overridden when in the database)

    @property
    def key(self) -> tuple[str, str]:
        return (self.channel, self.ext)


@dataclass(frozen=True, slots=True)
class VersionInfo:
    version: int
    author: str | None
    created_at: datetime
    parts: tuple[str, ...]  # "CHANNEL.EXT" of the parts this version changed


@dataclass(frozen=True, slots=True)
class TemplateView:
    name: str
    version: int | None  # the version shown (0: the files); None: no database version
    latest: int | None
    parts: list[Part]
    history: list[VersionInfo]
    shipped: tuple[str, ...] = ()  # "CHANNEL.EXT" of the files: version 0


@dataclass(frozen=True, slots=True)
class TemplateSummary:
    name: str
    latest: int | None
    parts: list[Part]  # bodies left empty: a listing does not carry them


@dataclass(frozen=True, slots=True)
class Saved:
    version: int | None  # None: every part was already current, nothing was stored
    changed: list[str]  # "CHANNEL.EXT"
    warnings: list[str] = field(default_factory=list)


def filename(name: str, channel: str, ext: str) -> str:
    return f"{name}.{channel}.{ext}"


def check_name(value: str, what: str, max_len: int) -> None:
    if not value or len(value) > max_len or not NAME_RE.match(value):
        raise InvalidInput(
            f"{what} must be 1 to {max_len} letters, digits, '_', '.' or '-', starting with a "
            f"letter or digit; got {value!r}",
            field=what,
        )


# --------------------------------------------------------------------------- the store


class TemplateStore:
    """Database templates: versions, the override cache, checks. Thread-safe."""

    def __init__(
        self,
        db: Engine,
        templates_dir: str | Path | None,
        *,
        rules: RuleFile | None = None,
        refresh: float = REFRESH_SECONDS,
    ) -> None:
        self.db = db
        self.rules = rules
        self.templates_dir = Path(templates_dir) if templates_dir is not None else None
        self.refresh_seconds = refresh
        self._cache: dict[str, str] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = float("-inf")
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ override cache

    def override(self, file: str) -> str | None:
        """The newest database body of ``NAME.CHANNEL.EXT``, or None (use the file).
        Called on every render: a dict lookup, plus at most every ``refresh`` seconds a
        check of the table's (count, max id)."""
        if time.monotonic() - self._checked >= self.refresh_seconds:
            # the first read waits for the first load: no render ever misses a saved version
            self.refresh(force=self._checked == float("-inf"))
        return self._cache.get(file)

    def refresh(self, *, force: bool = False) -> None:
        """Re-read the newest parts if the table changed (``force``: always). Renders in
        other threads never wait for it: they keep using the current dict meanwhile."""
        if not self._lock.acquire(blocking=force):
            return
        try:
            self._checked = time.monotonic()
            with self.db.connect() as conn:
                # Rows are only ever added, so the count changes on every save. max(id)
                # alone is not enough on PostgreSQL: ids are taken at insert but become
                # visible at commit, so a lower id can appear after a higher one.
                stamp = store.templates_stamp(conn)
                if not force and stamp == self._stamp:
                    return
                cache = {
                    filename(r.name, r.channel, r.ext): r.body
                    for r in store.newest_template_parts(conn)
                }
            self._cache, self._stamp = cache, stamp
        except SQLAlchemyError:
            # Rendering goes on with what is known; the next check tries again.
            log.warning("could not read database templates; using the last known", exc_info=True)
        finally:
            self._lock.release()

    # ------------------------------------------------------------------ files

    def _files(self) -> set[tuple[str, str, str]]:
        """(name, channel, ext) of every template file."""
        out: set[tuple[str, str, str]] = set()
        if self.templates_dir is None:
            return out
        try:
            entries = list(os.scandir(self.templates_dir))
        except OSError:
            return out
        for e in entries:
            parts = e.name.rsplit(".", 2)
            if len(parts) == 3 and parts[2] in EXTS and e.is_file():
                name, channel, ext = parts
                if NAME_RE.match(name) and NAME_RE.match(channel):
                    out.add((name, channel, ext))
        return out

    def _file_body(self, name: str, channel: str, ext: str) -> str | None:
        if self.templates_dir is None:
            return None
        try:
            return (self.templates_dir / filename(name, channel, ext)).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    # ------------------------------------------------------------------ reading

    def summaries(self) -> list[TemplateSummary]:
        """Every template name, from the files and the database, sorted by name."""
        files = self._files()
        with self.db.connect() as conn:
            rows = store.newest_template_parts(conn, with_body=False)
        by_name: dict[str, dict[tuple[str, str], Part]] = {}
        latest: dict[str, int] = {}
        for name, channel, ext in files:
            by_name.setdefault(name, {})[(channel, ext)] = Part(
                channel, ext, "file", "", has_file=True
            )
        for r in rows:
            by_name.setdefault(r.name, {})[(r.channel, r.ext)] = Part(
                r.channel,
                r.ext,
                "database",
                "",
                version=r.version,
                author=r.author,
                saved_at=r.created_at,
                has_file=(r.name, r.channel, r.ext) in files,
            )
            latest[r.name] = max(latest.get(r.name, 0), r.version)
        return [
            TemplateSummary(name, latest.get(name), [p for _, p in sorted(parts.items())])
            for name, parts in sorted(by_name.items())
        ]

    def get(self, name: str, version: int | None = None) -> TemplateView:
        """The template as rendered now, or as it was at ``version`` (0: the files alone,
        as shipped); with its history. Raises NotFound when neither a file nor a database
        version exists."""
        files = {(c, e) for n, c, e in self._files() if n == name}
        with self.db.connect() as conn:
            history = self._history(conn, name)
            latest = history[-1].version if history else None
            lowest = 0 if files else 1
            if version is not None and not lowest <= version <= (latest or 0):
                raise NotFound(
                    f"template {name!r} has no version {version}"
                    + (f" (versions {lowest} to {latest})" if latest else " (never saved)")
                    + ("" if files else "; no file was shipped for it"),
                    field="version",
                )
            rows = {} if version == 0 else self._as_of(conn, name, version)
        parts: dict[tuple[str, str], Part] = {}
        for c, e in files:
            body = self._file_body(name, c, e)
            if body is not None:
                parts[(c, e)] = Part(c, e, "file", body, has_file=True)
        for (c, e), r in rows.items():
            parts[(c, e)] = Part(
                c,
                e,
                "database",
                r.body,
                version=r.version,
                author=r.author,
                saved_at=r.created_at,
                has_file=(c, e) in files,
            )
        if not parts:
            raise NotFound(f"no template {name!r} (no file and no saved version)", field="name")
        return TemplateView(
            name=name,
            version=version if version is not None else latest,
            latest=latest,
            parts=[p for _, p in sorted(parts.items())],
            history=history,
            shipped=tuple(f"{c}.{e}" for c, e in sorted(files)),
        )

    def sources(self, name: str, version: int | None = None) -> dict[str, str]:
        """``{file name: body}`` of the database parts as of ``version`` (newest: None)."""
        with self.db.connect() as conn:
            return {
                filename(name, c, e): r.body
                for (c, e), r in self._as_of(conn, name, version).items()
            }

    def _history(self, conn: Connection, name: str) -> list[VersionInfo]:
        out: list[VersionInfo] = []
        for r in store.template_history(conn, name):
            if out and out[-1].version == r.version:
                last = out[-1]
                out[-1] = VersionInfo(
                    last.version,
                    last.author,
                    last.created_at,
                    (*last.parts, f"{r.channel}.{r.ext}"),
                )
            else:
                out.append(
                    VersionInfo(r.version, r.author, r.created_at, (f"{r.channel}.{r.ext}",))
                )
        return out

    def _as_of(
        self, conn: Connection, name: str, version: int | None
    ) -> dict[tuple[str, str], store.TemplateRow]:
        """Each database part of ``name`` at its newest row with version <= ``version``."""
        return store.template_parts_as_of(conn, name, version)

    # ------------------------------------------------------------------ checking

    def rules_using(self, name: str) -> list[Rule]:
        """The rules that render template ``name`` (a step's, the rule's, or its name) — for
        a variant ``NAME.LOCALE``, those of ``NAME``."""
        variant = split_variant(name)
        if variant is not None and not self._used_as_is(name):
            name = variant[0]
        out = []
        for r in self.rules.rules if self.rules is not None else ():
            used = {s.template or r.template or r.name for s in r.steps} or {r.template or r.name}
            if name in used:
                out.append(r)
        return out

    def _used_as_is(self, name: str) -> bool:
        for r in self.rules.rules if self.rules is not None else ():
            if name in {s.template for s in r.steps} | {r.template or r.name}:
                return True
        return False

    def variables(self, name: str) -> list[VariableGroup]:
        """What ``name`` can read, grouped, with examples from recent subjects."""
        return variables(self, name)

    def sample_collections(self, name: str) -> dict[str, Any]:
        """Empty collections (``collect``) of the rules using ``name`` — of every rule when
        none uses it yet — by name: what a template may read besides CONTEXT_NAMES."""
        out: dict[str, Any] = {}
        rules = self.rules_using(name) or (self.rules.rules if self.rules is not None else ())
        for r in rules:
            for c in r.collect:
                out[c.name] = (
                    {"total": 0, "by_outcome": {}, "by_reason": {}, "by_rule": {}, "by_channel": {}}
                    if c.stats is not None
                    else []
                )
        return out

    def renderer(
        self, sources: Mapping[str, str] | None = None, hide: Iterable[str] = ()
    ) -> Renderer:
        """A Renderer over the files, this store's versions, and ``sources`` on top; the
        files named in ``hide`` are rendered from the folder even if saved here."""
        extra, hidden = dict(sources or {}), frozenset(hide)

        def lookup(file: str) -> str | None:
            if file in extra:
                return extra[file]
            return None if file in hidden else self.override(file)

        return Renderer(
            self.templates_dir,
            loader_overrides=lookup,
            limits=self.limits,
            interactive=True,
            template_language=self.rules.template_language if self.rules is not None else None,
        )

    @property
    def limits(self) -> RenderLimits:
        """The rule file's ``render:`` limits (the defaults without a rule file)."""
        return self.rules.render if self.rules is not None else RenderLimits()

    def kinds_of(self, name: str) -> list[str]:
        """The subject kinds the rules using ``name`` work on."""
        return sorted({r.subject for r in self.rules_using(name) if r.subject})

    def real_subjects(
        self, name: str, n: int = REAL_SUBJECTS, per_subject: int = RECIPIENTS_PER_SUBJECT
    ) -> list[tuple[Subject, Recipient | None]]:
        """The ``n`` newest subjects (not deleted) of the kinds the rules using ``name`` work
        on, each with up to ``per_subject`` of its recipients (those of the roles the rules
        send to first): the real data a save is checked with. At most ``n * per_subject``
        pairs; a subject without recipients comes once, with None."""
        return real_parties(self, name, n, per_subject)

    def check(self, name: str, sources: Mapping[str, str], now: datetime) -> list[str]:
        """Check new bodies of ``name``'s parts (``{file name: body}``) as explained in the
        module docstring. Raises TemplateInvalid (TemplateOverLimit) or RenderBusy; returns
        warnings about real subjects' data (about sample data when there are none)."""
        renderer = self.renderer(sources)
        samples = self.sample_collections(name)
        names = CONTEXT_NAMES | samples.keys()
        for file, body in sources.items():
            _static_check(renderer, file, body, names)
        warnings: list[str] = []
        seen: set[str] = set()
        channels = sorted({f[len(name) + 1 :].rsplit(".", 1)[0] for f in sources})
        event = {"id": "sample-event", "name": "sample", "data": {}, "at": now}
        parties: list[tuple[Subject, Recipient | None, bool]] = [
            (s, r, True) for s, r in self.real_subjects(name)
        ] or [(SAMPLE_SUBJECT, SAMPLE_RECIPIENT, False)]
        for channel in channels:
            for subject, recipient, real in parties:
                tz = (recipient.timezone if recipient else None) or (
                    self.rules.timezone if self.rules is not None and real else "UTC"
                )
                ctx = render_context(
                    name=name,
                    subject=subject,
                    recipient=recipient,
                    event=event,
                    now=now,
                    timezone=tz,
                    collected=samples,
                )
                ref = subject.ref if real else None
                try:
                    renderer.render(
                        name, channel, ctx, recipient=recipient, timezone=tz, variants=False
                    )
                except RenderLimitExceeded as exc:
                    raise _refusal(exc, set(sources), ref) from None  # type: ignore[misc]
                except RenderError as exc:
                    if exc.kind == "busy":
                        raise
                    refused = _refusal(exc, set(sources), ref)
                    if refused is not None:
                        raise refused from None
                    if str(exc) in seen:  # the same error for another subject: said once
                        continue
                    seen.add(str(exc))
                    kinds = self.kinds_of(name)
                    warnings.append(data_warning(exc, subject, recipient, real, kinds))
        return warnings

    # ------------------------------------------------------------------ saving

    def save(
        self,
        name: str,
        parts: Iterable[tuple[str, str, str]],
        *,
        author: str | None,
        now: datetime,
    ) -> Saved:
        """Save ``(channel, ext, body)`` parts of ``name`` as one new version, after
        :meth:`check`. Parts equal to the current database body are left out; when none is
        left nothing is stored (``Saved.version`` is None). Raises InvalidInput (names),
        TemplateInvalid (the check)."""
        check_name(name, "name", 200)
        wanted: dict[tuple[str, str], str] = {}
        for i, (channel, ext, body) in enumerate(parts):
            check_name(channel, "channel", 100)
            if ext not in EXTS:
                raise InvalidInput(f"ext must be txt or html, got {ext!r}", field="ext")
            if len(body) > MAX_BODY:
                raise InvalidInput(f"a body is at most {MAX_BODY} characters", field="body")
            if (channel, ext) in wanted:
                raise InvalidInput(
                    f"part {channel}.{ext} is given twice", field=f"parts.{i}.channel"
                )
            wanted[(channel, ext)] = body
        if not wanted:
            raise InvalidInput("nothing to save: give at least one part", field="parts")
        try:
            warnings = self.check(
                name, {filename(name, c, e): b for (c, e), b in wanted.items()}, now
            )
        except TemplateInvalid as exc:
            if len(wanted) > 1:
                keys = [filename(name, c, e) for c, e in wanted]
                if exc.file in keys:
                    exc.field = f"parts.{keys.index(exc.file)}.body"
            raise
        with write_transaction(self.db) as conn:
            # one writer per name at a time: version numbers are per name
            store.lock_template_name(conn, name)
            current = self._as_of(conn, name, None)
            changed = {k: b for k, b in wanted.items() if k not in current or current[k].body != b}
            if not changed:
                return Saved(None, [], warnings)
            version = (store.latest_template_version(conn, name) or 0) + 1
            store.add_template_version(conn, name, version, changed, author=author, now=now)
        self.refresh(force=True)
        log.info("template %s version %s saved by %s: %s", name, version, author, sorted(changed))
        return Saved(version, [f"{c}.{e}" for c, e in sorted(changed)], warnings)

    def restore(self, name: str, version: int, *, author: str | None, now: datetime) -> Saved:
        """Save the database parts as they were at ``version`` as a new version; version 0:
        the shipped files' text, for the parts saved here. Parts first saved after it (or
        with no file) stay as they are (restoring never deletes)."""
        view = self.get(name, version)
        if version == 0:
            with self.db.connect() as conn:
                saved = self._as_of(conn, name, None)
            old = [(p.channel, p.ext, p.body) for p in view.parts if p.key in saved]
            if not old:
                return Saved(None, [], [])
        else:
            old = [(p.channel, p.ext, p.body) for p in view.parts if p.source == "database"]
        return self.save(name, old, author=author, now=now)

    # ------------------------------------------------------------------ preview

    def preview(
        self,
        name: str,
        channel: str,
        context: Mapping[str, Any],
        *,
        sources: Mapping[str, str],
        exact: bool = False,
        recipient: Recipient | None,
        timezone: str,
        locale: str,
    ) -> Rendered:
        """Render ``name`` for ``channel`` with ``sources`` (``{file name: body}``) in place
        of its database parts; with ``exact`` the parts not in ``sources`` come from the
        files (a past version), else from the newest versions. Raises RenderError."""
        own = {filename(name, channel, e) for e in EXTS}
        renderer = self.renderer(sources, hide=own - set(sources) if exact else ())
        names = CONTEXT_NAMES | self.sample_collections(name).keys()
        for file, body in sources.items():
            if file in own:
                try:
                    _static_check(renderer, file, body, names)
                except TemplateInvalid as exc:
                    raise RenderError(exc.reason, template=exc.file, line=exc.line) from None
        return renderer.render(
            name,
            channel,
            context,
            recipient=recipient,
            timezone=timezone,
            locale=locale,
            variants=False,
        )
