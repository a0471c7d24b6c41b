"""Templates: ``templates/NAME.CHANNEL.txt`` and ``.html`` rendered in a Jinja2 sandbox.

Normative source: docs/reference/rules.md, "Templates". What this module adds to it:

- A template file's first line may be ``Subject: ...`` (any channel, not only email: push and
  chat channels have titles too). That line is itself a template, rendered as plain text, and
  becomes the title; it is not part of the body. When both the ``.txt`` and the ``.html`` file
  have one, the ``.txt`` one wins. Without one, the title is the first non-empty line of the
  text (or of the HTML's text content). Titles are one line, whitespace collapsed.
- ``.html`` templates are autoescaped and get their CSS inlined (css-inline; ``@media`` rules
  stay in a ``<style>`` tag for responsive layouts, remote stylesheets are never fetched);
  ``.txt`` templates are not escaped.
- A missing *name* (``{{ subjet.key }}``) is an error wherever it is used. A missing
  attribute or key of real data (``subject.attributes.note``) is an error when printed,
  compared or iterated, but is simply false in ``{% if %}``, so optional data can be tested;
  ``is defined``, ``| default(...)`` and ``.get('x')`` work as usual.
- The sandbox is immutable: templates may read the data they are given, never change it.
- Per-locale variants (:mod:`duly.core.templatenames`): ``NAME.LOCALE.CHANNEL.EXT`` is
  rendered instead of ``NAME.CHANNEL.EXT`` for a recipient of that locale, with a fallback
  from the region to the language (fr-CA → fr → the plain file). A variant replaces the
  plain template for its channel as a whole (its ``.txt`` and ``.html``, whichever exist).
- Helpers, as functions or filters, in the template's language and the recipient's
  timezone (:func:`duly.core.templatenames.format_locale`: a variant's own language; for
  the plain file the rule file's ``template_language``, else the recipient's locale):
  ``date``, ``time``, ``datetime``, ``money``, ``number``, ``relative``; and the function
  ``ack_link()``, a signed link acknowledging the message's rule and subject as its recipient
  (``duly.delivery.ack``; a sample link when the Renderer has no ``ack_links``). Dates follow
  docs/reference/rules.md "Time": a value with an offset (or ``Z``) is an instant shown in the
  recipient's timezone; one without is already local; a date alone is 00:00 local.
- Every failure (syntax, undefined name, refused attribute, bad helper input) is a
  :class:`RenderError` naming the template file and line.
- Every render is bounded by the rule file's ``render:`` limits (:class:`duly.core.model.
  RenderLimits`): it runs in a render process (:mod:`duly.delivery.rendering.pool`) killed over
  ``timeout`` or ``max_memory``; the sandbox (:mod:`duly.delivery.rendering.sandbox`) refuses an operation whose
  result would be longer than ``max_output`` before it runs, and the output is counted as it
  is produced. Over a limit: :class:`RenderLimitExceeded`, naming it (``render.timeout``).

Compiled templates are cached per file name and recompiled when the file's mtime changes or
``loader_overrides`` returns a different source.

This module is the renderer; its parts are :mod:`duly.delivery.rendering.loader` (files, database
overrides, the ``Subject:`` line), :mod:`duly.delivery.rendering.helpers` (the formatting helpers) and
:mod:`duly.delivery.rendering.errors` (what a failed render raises).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, TypedDict

import css_inline
from jinja2 import Template, TemplateNotFound

from duly.core.model import Recipient, RenderLimits
from duly.core.templatenames import declared_language, format_locale, locale_chain
from duly.delivery.ack import ACK_LINKS_KEY, AckLinks, ack_link
from duly.delivery.rendering.errors import (
    RenderBusy,
    RenderError,
    RenderLimitExceeded,
    _over_output,
    _render_error,
)
from duly.delivery.rendering.helpers import _FORMATS_KEY, _HELPERS, _Formats, _locale, _zone
from duly.delivery.rendering.loader import Overrides, _Loader, _Template, _Undefined
from duly.delivery.rendering.sandbox import BoundedSandbox

__all__ = [
    "RenderBusy",
    "RenderError",
    "RenderLimitExceeded",
    "RenderRequest",
    "Rendered",
    "Renderer",
]


class _RenderRequired(TypedDict):
    name: str
    channel: str
    context: Mapping[str, Any]


class RenderRequest(_RenderRequired, total=False):
    """The arguments of one :meth:`Renderer.render`, for :meth:`Renderer.render_many`."""

    recipient: Recipient | None
    timezone: str | None
    locale: str | None
    variants: bool


@dataclass(frozen=True, slots=True)
class Rendered:
    title: str | None
    text: str | None
    html: str | None


# --------------------------------------------------------------------------- titles


class _TextOfHtml(HTMLParser):
    """The text content of an HTML document, a line break at each block element."""

    _SKIP = frozenset({"style", "script", "template"})
    _BLOCK = frozenset(
        "address article aside blockquote br dd div dl dt figcaption footer form h1 h2 h3 h4 "
        "h5 h6 header hr li main nav ol p pre section table td th title tr ul".split()
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def _one_line(text: str | None) -> str | None:
    if text is None:
        return None
    return " ".join(text.split()) or None


def _first_line(text: str) -> str | None:
    for line in text.splitlines():
        if line.strip():
            return _one_line(line)
    return None


def _html_text(html: str) -> str:
    parser = _TextOfHtml()
    parser.feed(html)
    parser.close()
    return "".join(parser.parts)


_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\r?\n)+")


# --------------------------------------------------------------------------- renderer


def _reader(recipient: Recipient | None, locale: str | None) -> str | None:
    """The reader's locale: ``locale`` if given, else the recipient's."""
    return locale or (recipient.locale if recipient else None)


class Renderer:
    """Renders ``templates/NAME.CHANNEL.{txt,html}``; safe to share between threads.

    ``loader_overrides(filename)`` may return a template's source kept elsewhere (the
    database); it wins over the file. It is called on every render to check the cached
    template is current, so it must be cheap (e.g. a dict kept up to date on change).

    ``ack_links`` signs the links ``{{ ack_link() }}`` makes (``duly.delivery.ack.AckLinks``).

    ``limits`` (the rule file's ``render:``) bound every render: :meth:`render` runs in a
    render process of :mod:`duly.delivery.rendering.pool` that is killed when it takes longer than
    ``limits.timeout`` or allocates more than ``limits.max_memory``, and the rendered text
    may not be longer than ``limits.max_output``. A render over a limit raises
    :class:`RenderLimitExceeded`. ``interactive`` renderers (previews, save checks) give way
    to deliveries and raise :class:`RenderBusy` when no render process comes free in time.
    ``template_language`` (the rule file's) is the language of templates whose name declares
    none; without it they write in the recipient's locale.
    ``isolated=False`` renders in this process (the sandbox's size checks and the output
    cap, but no time or memory bound): for the render process itself and for tests.

    :meth:`start` starts the render processes ahead of the first render (else the first
    render does); :meth:`close` stops them at once, failing renders in flight.
    """

    def __init__(
        self,
        templates_dir: str | Path | None,
        *,
        loader_overrides: Overrides | None = None,
        ack_links: AckLinks | None = None,
        limits: RenderLimits | None = None,
        interactive: bool = False,
        isolated: bool = True,
        pool: Any = None,
        template_language: str | None = None,
    ) -> None:
        self.template_language = template_language
        self.templates_dir = Path(templates_dir) if templates_dir is not None else None
        self.ack_links = ack_links
        self.limits = limits or RenderLimits()
        self.interactive = interactive
        self.isolated = isolated
        self._pool = pool
        self._loader_overrides = loader_overrides
        self._loader = _Loader(self.templates_dir, loader_overrides)
        # Immutable: a template can call .get() on the data it is given but never change it
        # (the dispatcher hands it the subject it keeps working with).
        self._env = BoundedSandbox(
            loader=self._loader,
            autoescape=lambda name: name is not None and name.endswith(".html"),
            undefined=_Undefined,
            keep_trailing_newline=True,
            auto_reload=True,
            cache_size=2000,
            max_output=self.limits.max_output,
        )
        self._env.globals.update(_HELPERS)
        self._env.filters.update(_HELPERS)
        self._env.globals["ack_link"] = ack_link  # a function only: it reads the context
        # One inliner: building one per render costs more than the inlining. At-rules stay
        # (responsive @media queries can't be inlined); remote stylesheets are never fetched.
        self._inliner = css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)

    # ------------------------------------------------------------------ render processes

    @property
    def pool(self) -> Any:
        """The render processes this renderer uses (by default the process-wide ones)."""
        if self._pool is None:
            from duly.delivery.rendering.pool import shared_pool

            self._pool = shared_pool()
        return self._pool

    def start(self) -> None:
        """Start the render processes now (``limits.workers`` of them)."""
        if self.isolated:
            self.pool.start(self.limits.workers)

    def close(self) -> None:
        """Stop the render processes at once; a render in flight fails with a RenderError.
        A later render starts them again."""
        if self.isolated and self._pool is not None:
            self._pool.close()

    # ------------------------------------------------------------------ rendering

    def has_template(self, name: str, channel: str) -> bool:
        """True when ``NAME.CHANNEL.txt`` or ``NAME.CHANNEL.html`` exists."""
        try:
            return any(self._loader.exists(f"{name}.{channel}.{ext}") for ext in ("txt", "html"))
        except TemplateNotFound:  # a name with ".." in it
            return False

    def resolve(
        self,
        name: str,
        channel: str,
        *,
        recipient: Recipient | None = None,
        locale: str | None = None,
        variants: bool = True,
    ) -> tuple[str, str]:
        """``(template name, locale to format in)`` for a reader of ``locale`` (else the
        recipient's): the variant ``NAME.LOCALE`` that exists for ``channel`` (fr-CA, then
        fr), else ``name``; with ``variants=False`` always ``name``."""
        return self._resolve(name, channel, _reader(recipient, locale), variants)

    def _resolve(
        self, name: str, channel: str, reader: str | None, variants: bool
    ) -> tuple[str, str]:
        """:meth:`resolve` for a reader's locale already worked out (``_reader``)."""
        declared = declared_language(name)
        if declared is None and variants:
            for loc in locale_chain(reader):
                if self.has_template(f"{name}.{loc}", channel):
                    return f"{name}.{loc}", format_locale(loc, reader)
        return name, format_locale(declared or self.template_language, reader)

    def render(
        self,
        name: str,
        channel: str,
        context: Mapping[str, Any],
        *,
        recipient: Recipient | None = None,
        timezone: str | None = None,
        locale: str | None = None,
        variants: bool = True,
    ) -> Rendered:
        """Render template ``name`` for ``channel``, within ``limits``.

        ``locale`` (else the recipient's) is the reader's: it chooses the variant (see
        :meth:`resolve`; ``variants=False`` renders ``name`` itself) and, with the
        template's language, the locale helpers write in. Times are shown in ``timezone``,
        else the recipient's, else UTC. ``recipient`` is also put in the context as
        ``recipient`` unless it has one. Raises :class:`RenderError`
        (:class:`RenderLimitExceeded` over a limit) — within ``limits.timeout`` of the
        render process starting on it.
        """
        name, locale = self.resolve(
            name, channel, recipient=recipient, locale=locale, variants=variants
        )
        if not self.isolated:
            return self.render_here(
                name, channel, context, recipient=recipient, timezone=timezone, locale=locale
            )
        return self.pool.render(
            self,
            name,
            channel,
            dict(context),
            recipient=recipient,
            timezone=timezone,
            locale=locale,
        )

    def render_many(self, items: Sequence[RenderRequest]) -> list[Rendered | RenderError]:
        """Render every item, up to ``limits.workers`` at a time in the render processes;
        each answer (a Rendered or the RenderError it raised) in the order of ``items``.

        Each item has its own ``limits.timeout``, so one runaway fails only its own item;
        the call returns within ``ceil(len(items) / workers) * timeout`` at worst. For a
        batch this is several times faster than calling :meth:`render` in a loop: the
        render processes work side by side, and the caller's own work overlaps theirs."""
        if not self.isolated or len(items) <= 1:
            out: list[Rendered | RenderError] = []
            for it in items:
                try:
                    out.append(self.render(**it))
                except RenderError as exc:
                    out.append(exc)
            return out
        resolved: list[RenderRequest] = []
        # resolve() looks for variant files: once per template and reader in this call
        # (what it answers depends on nothing else)
        seen: dict[tuple[Any, ...], tuple[str, str]] = {}
        for it in items:
            key = (
                it["name"],
                it["channel"],
                _reader(it.get("recipient"), it.get("locale")),
                it.get("variants", True),
            )
            hit = seen.get(key)
            if hit is None:
                hit = seen[key] = self._resolve(*key)
            name, locale = hit
            resolved.append({**it, "name": name, "locale": locale})
        return self.pool.render_many(self, resolved)  # type: ignore[no-any-return]

    def render_here(
        self,
        name: str,
        channel: str,
        context: Mapping[str, Any],
        *,
        recipient: Recipient | None = None,
        timezone: str | None = None,
        locale: str | None = None,
        on_part: Callable[[str], None] | None = None,
    ) -> Rendered:
        """:meth:`render` in this process: no time or memory bound (what a render process
        runs), of ``name`` itself (already resolved: no variant is looked for) with helpers
        in ``locale``. ``on_part(filename)`` is told which part is about to be rendered."""
        base = f"{name}.{channel}"
        values = self._values(context, recipient, timezone, locale, base)

        text_t = self._template(f"{base}.txt")
        html_t = self._template(f"{base}.html")
        if text_t is None and html_t is None:
            where = self.templates_dir if self.templates_dir is not None else "the database"
            raise RenderError(
                f"no template {base}.txt or {base}.html in {where}",
                template=base,
                kind="not_found",
            )

        budget = [self.limits.max_output]  # characters left for every part together
        text = html = None
        if text_t is not None:
            if on_part is not None:
                on_part(f"{base}.txt")
            text = self._run(text_t, values, f"{base}.txt", budget)
        if html_t is not None:
            if on_part is not None:
                on_part(f"{base}.html")
            html = self._run(html_t, values, f"{base}.html", budget)

        subject_of = text_t if text_t is not None and text_t.subject is not None else html_t
        if subject_of is not None and subject_of.subject is not None:
            filename = f"{base}.txt" if subject_of is text_t else f"{base}.html"
            title = _one_line(self._run(subject_of.subject, values, filename, budget))
        elif text:
            title = _first_line(text)
        elif html:
            title = _first_line(_html_text(html))
        else:
            title = None

        if html is not None:
            try:
                html = self._inliner.inline(html)
            except css_inline.InlineError as exc:
                raise RenderError(f"cannot inline CSS: {exc}", template=f"{base}.html") from exc
            if len(html) + len(text or "") > self.limits.max_output:
                raise _over_output(self.limits, f"{base}.html")
        return Rendered(title=title, text=text, html=html)

    def render_strings(
        self,
        sources: Mapping[str, str],
        context: Mapping[str, Any],
        *,
        recipient: Recipient | None = None,
        timezone: str | None = None,
        locale: str | None = None,
        what: str = "strings",
    ) -> dict[str, str]:
        """Render each of ``sources`` (name → a Jinja text, not escaped) with the context
        and helpers of :meth:`render`, within the same limits (``max_output`` for all of
        them together). Raises :class:`RenderError` naming ``what.NAME``."""
        if not self.isolated:
            return self.render_strings_here(
                sources, context, recipient=recipient, timezone=timezone, locale=locale, what=what
            )
        return self.pool.render_strings(  # type: ignore[no-any-return]
            self,
            dict(sources),
            dict(context),
            recipient=recipient,
            timezone=timezone,
            locale=locale,
            what=what,
        )

    def render_strings_here(
        self,
        sources: Mapping[str, str],
        context: Mapping[str, Any],
        *,
        recipient: Recipient | None = None,
        timezone: str | None = None,
        locale: str | None = None,
        what: str = "strings",
    ) -> dict[str, str]:
        """:meth:`render_strings` in this process (what a render process runs)."""
        values = self._values(context, recipient, timezone, locale, what)
        budget = [self.limits.max_output]
        out: dict[str, str] = {}
        for key, source in sources.items():
            filename = f"{what}.{key}"
            try:
                code = self._env.compile(source, filename, filename)
                template = self._env.template_class.from_code(
                    self._env, code, self._env.make_globals(None), None
                )
            except Exception as exc:
                raise _render_error(exc, filename) from exc
            out[key] = self._run(template, values, filename, budget)
        return out

    def _values(
        self,
        context: Mapping[str, Any],
        recipient: Recipient | None,
        timezone: str | None,
        locale: str | None,
        base: str,
    ) -> dict[str, Any]:
        """The values a template sees: the context, the recipient, the helpers' formats."""
        zone_name = timezone or (recipient.timezone if recipient else None) or "UTC"
        locale_name = locale or (recipient.locale if recipient else None) or "en"
        try:
            formats = _Formats(locale=_locale(locale_name), zone=_zone(zone_name))
        except RenderError as exc:
            raise RenderError(exc.reason, template=base) from None
        values = dict(context)
        if recipient is not None:
            values.setdefault("recipient", recipient)
        values[_FORMATS_KEY] = formats
        if self.ack_links is not None:
            values[ACK_LINKS_KEY] = self.ack_links
        return values

    def _template(self, filename: str) -> _Template | None:
        """The compiled template, or None when there is no such file (nor override)."""
        try:
            template = self._env.get_template(filename)
        except TemplateNotFound as exc:
            if exc.name == filename:
                return None
            raise _render_error(exc, filename) from exc  # an include inside it is missing
        except Exception as exc:
            raise _render_error(exc, filename) from exc
        assert isinstance(template, _Template)
        return template

    def _run(
        self, template: Template, values: dict[str, Any], filename: str, budget: list[int]
    ) -> str:
        """Render ``template``, streamed, so that output over the budget stops it early."""
        chunks: list[str] = []
        try:
            for chunk in template.generate(values):
                budget[0] -= len(chunk)
                if budget[0] < 0:
                    raise _over_output(self.limits, filename)
                chunks.append(chunk)
        except RenderError:
            raise
        except Exception as exc:
            raise _render_error(exc, filename) from exc
        out = "".join(chunks)
        if isinstance(template, _Template) and template.subject is not None:
            # The blank line that usually follows "Subject: ..." is not part of the body.
            out = _LEADING_BLANK_LINES.sub("", out)
        return out
