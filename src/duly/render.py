"""Templates: ``templates/NAME.CHANNEL.txt`` and ``.html`` rendered in a Jinja2 sandbox.

Normative source: spec/rules.md, "Templates". What this module adds to it:

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
- Helpers, as functions or filters, in the recipient's locale and timezone:
  ``date``, ``time``, ``datetime``, ``money``, ``number``, ``relative``; and the function
  ``ack_link()``, a signed link acknowledging the message's rule and subject as its recipient
  (``duly.ack``; a sample link when the Renderer has no ``ack_links``). Dates follow
  spec/rules.md "Time": a value with an offset (or ``Z``) is an instant shown in the
  recipient's timezone; one without is already local; a date alone is 00:00 local.
- Every failure (syntax, undefined name, refused attribute, bad helper input) is a
  :class:`RenderError` naming the template file and line.
- Every render is bounded by the rule file's ``render:`` limits (:class:`duly.model.
  RenderLimits`): it runs in a render process (:mod:`duly.renderpool`) killed over
  ``timeout`` or ``max_memory``; the sandbox (:mod:`duly.sandbox`) refuses an operation whose
  result would be longer than ``max_output`` before it runs, and the output is counted as it
  is produced. Over a limit: :class:`RenderLimitExceeded`, naming it (``render.timeout``).

Compiled templates are cached per file name and recompiled when the file's mtime changes or
``loader_overrides`` returns a different source.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from datetime import date as Date
from datetime import datetime as DateTime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from html.parser import HTMLParser
from pathlib import Path
from types import TracebackType
from typing import Any, TypedDict
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import css_inline
from babel import Locale, UnknownLocaleError
from babel import dates as babel_dates
from babel import numbers as babel_numbers
from jinja2 import (
    BaseLoader,
    Environment,
    StrictUndefined,
    Template,
    TemplateNotFound,
    TemplateSyntaxError,
    Undefined,
    UndefinedError,
    pass_context,
)
from jinja2.exceptions import SecurityError
from jinja2.loaders import split_template_path
from jinja2.runtime import Context
from jinja2.utils import missing

from duly.ack import ACK_LINKS_KEY, AckLinks, ack_link
from duly.model import Recipient, RenderLimits
from duly.sandbox import BoundedSandbox, LimitError

__all__ = [
    "RenderBusy",
    "RenderError",
    "RenderLimitExceeded",
    "RenderRequest",
    "Rendered",
    "Renderer",
]

Overrides = Callable[[str], str | None]


class RenderError(Exception):
    """A template could not be rendered.

    ``kind`` says why, so that callers can tell a broken template from data that does not
    fit it: ``syntax``, ``security`` (refused by the sandbox), ``not_found`` (an included
    template), ``limit`` (:class:`RenderLimitExceeded`), ``busy`` (:class:`RenderBusy`),
    ``data`` (anything else: a missing value, a helper given bad input)."""

    def __init__(
        self,
        message: str,
        *,
        template: str | None = None,
        line: int | None = None,
        kind: str = "data",
    ):
        self.template = template
        self.line = line
        self.reason = message
        self.kind = kind
        where = template or "template"
        if line:
            where += f", line {line}"
        super().__init__(f"{where}: {message}")


class RenderLimitExceeded(RenderError):
    """A render went over one of the rule file's ``render:`` limits; ``limit`` names it
    (``render.timeout``, ``render.max_output`` or ``render.max_memory``)."""

    def __init__(
        self, message: str, *, limit: str, template: str | None = None, line: int | None = None
    ):
        self.limit = limit
        super().__init__(f"{message} ({limit})", template=template, line=line, kind="limit")


class RenderBusy(RenderError):
    """Every render process is taken and none came free in time; try again in
    ``retry_after`` seconds. Only previews and save checks get it: deliveries wait."""

    def __init__(self, message: str, *, retry_after: int, template: str | None = None):
        self.retry_after = retry_after
        super().__init__(message, template=template, kind="busy")


class _RenderRequired(TypedDict):
    name: str
    channel: str
    context: Mapping[str, Any]


class RenderRequest(_RenderRequired, total=False):
    """The arguments of one :meth:`Renderer.render`, for :meth:`Renderer.render_many`."""

    recipient: Recipient | None
    timezone: str | None
    locale: str | None


@dataclass(frozen=True, slots=True)
class Rendered:
    title: str | None
    text: str | None
    html: str | None


# --------------------------------------------------------------------------- loading


class _Template(Template):
    """A compiled template file, plus its compiled ``Subject:`` line if it had one."""

    subject: Template | None = None


_SUBJECT_RE = re.compile(r"\ufeff?subject:(.*)", re.IGNORECASE)


def _split_subject(source: str) -> tuple[str, str | None]:
    """``(body, subject)``. The Subject line is blanked, not removed, so that line numbers in
    errors still match the file."""
    first, newline, rest = source.partition("\n")
    match = _SUBJECT_RE.fullmatch(first.rstrip("\r"))
    if match is None:
        return source, None
    return newline + rest, match.group(1).strip()


class _Loader(BaseLoader):
    """Template files from one folder; ``overrides(filename)`` (templates kept in the database)
    wins over the file of the same name."""

    def __init__(self, directory: Path | None, overrides: Overrides | None) -> None:
        self.directory = str(directory) if directory is not None else None
        self.overrides = overrides

    def _override(self, name: str) -> str | None:
        return self.overrides(name) if self.overrides is not None else None

    def _path(self, name: str) -> str | None:
        if self.directory is None:
            return None
        # split_template_path refuses "..": an include can never leave the folder.
        return os.path.join(self.directory, *split_template_path(name))

    def exists(self, name: str) -> bool:
        if self._override(name) is not None:
            return True
        path = self._path(name)
        return path is not None and os.path.isfile(path)

    def get_source(
        self, environment: Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        name = template
        override = self._override(name)
        if override is not None:
            # Checked on every render: the cached template stays valid only while the
            # override still returns the very same source.
            return override, name, lambda: self._override(name) == override
        path = self._path(name)
        if path is None:
            raise TemplateNotFound(name)
        try:
            mtime = os.stat(path).st_mtime_ns
            with open(path, encoding="utf-8") as file:
                source = file.read()
        except (FileNotFoundError, IsADirectoryError):
            raise TemplateNotFound(name) from None

        def uptodate() -> bool:
            if self._override(name) is not None:
                return False
            try:
                return os.stat(path).st_mtime_ns == mtime
            except OSError:
                return False

        return source, path, uptodate

    def load(
        self,
        environment: Environment,
        name: str,
        globals: MutableMapping[str, Any] | None = None,
    ) -> Template:
        # Overridden (Jinja advises against it only for loaders nested in ChoiceLoader and
        # the like, which we don't use) so that a file's body and its Subject line are
        # compiled and cached together: a render never pairs a new subject with an old body.
        source, filename, uptodate = self.get_source(environment, name)
        body, subject = _split_subject(source)
        namespace = environment.make_globals(globals)
        code = environment.compile(body, name, filename)
        template = _Template.from_code(environment, code, namespace, uptodate)
        assert isinstance(template, _Template)
        if subject is not None:
            # Compiled under a name that does not end in .html: a title is plain text, so it
            # is never HTML-escaped even when it comes from the .html file.
            subject_code = environment.compile(subject, name + "#subject", filename)
            template.subject = Template.from_code(environment, subject_code, namespace, None)
        return template


# --------------------------------------------------------------------------- undefined


class _Undefined(StrictUndefined):
    """StrictUndefined, except that a missing attribute or key of real data is false in a
    test, so ``{% if subject.attributes.note %}`` works; a missing *name* (a typo) still
    fails there too."""

    __slots__ = ()

    def __bool__(self) -> bool:  # type: ignore[override]
        if self._undefined_obj is missing:
            self._fail_with_undefined_error()
        return False


# --------------------------------------------------------------------------- helpers


class _HelperError(ValueError):
    """A helper was given a value it cannot format."""


@dataclass(frozen=True, slots=True)
class _Formats:
    """The recipient's locale and timezone, put in each render's context for the helpers."""

    locale: Locale
    zone: ZoneInfo


_FORMATS_KEY = "__duly_formats__"
_ISO_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _formats(context: Context) -> _Formats:
    formats = context.get(_FORMATS_KEY)
    assert isinstance(formats, _Formats)
    return formats


def _check_defined(value: Any) -> None:
    if isinstance(value, Undefined):
        # Reports "'x' is undefined" rather than "expected a date, got StrictUndefined".
        value._fail_with_undefined_error()


def _to_date_or_local(value: Any, helper: str, zone: ZoneInfo) -> Date | DateTime:
    """A date stays a date; a date-time becomes an aware date-time in ``zone``."""
    _check_defined(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            value = (
                Date.fromisoformat(text)
                if _ISO_DATE_RE.fullmatch(text)
                else DateTime.fromisoformat(text)
            )
        except ValueError:
            raise _HelperError(
                f"{helper}(): {value!r} is not an ISO 8601 date or date-time "
                "(expected e.g. 2026-03-15 or 2026-03-15T09:00:00Z)"
            ) from None
    if isinstance(value, DateTime):
        if value.tzinfo is None:
            # spec/rules.md "Time": no offset means local to the recipient. The round trip
            # through UTC moves a time in a spring-forward gap forward, like the planner.
            value = value.replace(tzinfo=zone).astimezone(UTC)
        local: DateTime = value.astimezone(zone)
        return local
    if isinstance(value, Date):
        return value
    raise _HelperError(
        f"{helper}(): expected a date, a date-time or an ISO 8601 string, "
        f"got {type(value).__name__} {value!r}"
    )


def _to_instant(value: Any, helper: str, zone: ZoneInfo) -> DateTime:
    local = _to_date_or_local(value, helper, zone)
    if not isinstance(local, DateTime):
        # A date alone is that date at 00:00 in the recipient's timezone.
        local = DateTime(local.year, local.month, local.day, tzinfo=zone)
    return local


def _to_decimal(value: Any, helper: str) -> Decimal:
    _check_defined(value)
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise _HelperError(f"{helper}(): expected a number, got {type(value).__name__} {value!r}")
    try:
        # str() first so that 0.1 formats as 0.1, not as its binary approximation.
        number = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise _HelperError(f"{helper}(): {value!r} is not a number") from None
    if not number.is_finite():
        raise _HelperError(f"{helper}(): {value!r} is not a finite number")
    return number


def _babel(helper: str, format: str | None, call: Callable[[], str]) -> str:
    """Run a Babel formatter; a bad format pattern surfaces as an obscure exception."""
    try:
        return call()
    except _HelperError:
        raise
    except Exception as exc:
        raise _HelperError(f"{helper}(): cannot format with {format!r}: {exc}") from exc


@lru_cache(maxsize=512)
def _is_currency(code: str) -> bool:
    try:
        babel_numbers.validate_currency(code)
    except babel_numbers.UnknownCurrencyError:
        return False
    return True


@pass_context
def _date(context: Context, value: Any, format: str = "medium") -> str:
    f = _formats(context)
    local = _to_date_or_local(value, "date", f.zone)
    day = local.date() if isinstance(local, DateTime) else local
    return _babel("date", format, lambda: babel_dates.format_date(day, format, locale=f.locale))


@pass_context
def _time(context: Context, value: Any, format: str = "short") -> str:
    f = _formats(context)
    instant = _to_instant(value, "time", f.zone)
    return _babel(
        "time",
        format,
        lambda: babel_dates.format_time(instant, format, tzinfo=f.zone, locale=f.locale),
    )


@pass_context
def _datetime(context: Context, value: Any, format: str = "medium") -> str:
    f = _formats(context)
    instant = _to_instant(value, "datetime", f.zone)
    return _babel(
        "datetime",
        format,
        lambda: babel_dates.format_datetime(instant, format, tzinfo=f.zone, locale=f.locale),
    )


@pass_context
def _money(context: Context, amount: Any, currency: Any) -> str:
    f = _formats(context)
    number = _to_decimal(amount, "money")
    _check_defined(currency)
    code = str(currency).strip().upper()
    if not _is_currency(code):
        raise _HelperError(f"money(): {currency!r} is not an ISO 4217 currency code (e.g. EUR)")
    return _babel(
        "money", None, lambda: babel_numbers.format_currency(number, code, locale=f.locale)
    )


@pass_context
def _number(context: Context, value: Any, format: str | None = None) -> str:
    f = _formats(context)
    number = _to_decimal(value, "number")
    return _babel(
        "number", format, lambda: babel_numbers.format_decimal(number, format, locale=f.locale)
    )


@pass_context
def _relative(context: Context, value: Any) -> str:
    """``in 3 days`` / ``2 hours ago``, relative to ``now`` in the context."""
    f = _formats(context)
    now = context.get("now")
    if now is None or isinstance(now, Undefined):
        raise _HelperError("relative(): needs `now` in the template context")
    delta = _to_instant(value, "relative", f.zone) - _to_instant(now, "relative", f.zone)
    return _babel(
        "relative",
        None,
        lambda: babel_dates.format_timedelta(delta, add_direction=True, locale=f.locale),
    )


_HELPERS: dict[str, Callable[..., str]] = {
    "date": _date,
    "time": _time,
    "datetime": _datetime,
    "money": _money,
    "number": _number,
    "relative": _relative,
}


@lru_cache(maxsize=256)
def _locale(name: str) -> Locale:
    code = name.strip().replace("-", "_")
    try:
        return Locale.parse(code)
    except (ValueError, UnknownLocaleError):
        pass
    # "en_XX": a region Babel doesn't know still has a usable language.
    try:
        return Locale.parse(code.split("_", 1)[0])
    except (ValueError, UnknownLocaleError):
        raise RenderError(f"unknown locale {name!r} (expected e.g. en, en_US or de-DE)") from None


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise RenderError(
            f"unknown timezone {name!r} (expected an IANA name, e.g. Europe/Berlin)"
        ) from None


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


# --------------------------------------------------------------------------- errors


def _template_frame(tb: TracebackType | None) -> tuple[str, int] | None:
    """(file, line) of the innermost template frame. Jinja rewrites tracebacks so that
    frames in template code carry the template's filename and line and a
    ``__jinja_exception__`` global."""
    found = None
    while tb is not None:
        if "__jinja_exception__" in tb.tb_frame.f_globals:
            found = (tb.tb_frame.f_code.co_filename, tb.tb_lineno)
        tb = tb.tb_next
    return found


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SecurityError):
        return f"not allowed in a template: {exc}"
    if isinstance(exc, TemplateNotFound):
        return f"included template {exc.name!r} not found"
    if isinstance(exc, UndefinedError | _HelperError | TemplateSyntaxError):
        return str(exc.message if isinstance(exc, TemplateSyntaxError) else exc)
    return f"{type(exc).__name__}: {exc}"


def _kind(exc: BaseException) -> str:
    if isinstance(exc, TemplateSyntaxError):
        return "syntax"
    if isinstance(exc, SecurityError):
        return "security"
    if isinstance(exc, TemplateNotFound):
        return "not_found"
    return "data"


def _render_error(exc: BaseException, template: str) -> RenderError:
    line: int | None = None
    if isinstance(exc, TemplateSyntaxError):
        template = os.path.basename(exc.filename or exc.name or template)
        line = exc.lineno
    else:
        frame = _template_frame(exc.__traceback__)
        if frame is not None:
            template, line = os.path.basename(frame[0]), frame[1]
    if isinstance(exc, LimitError):
        return RenderLimitExceeded(str(exc), limit=exc.limit, template=template, line=line)
    return RenderError(_describe(exc), template=template, line=line, kind=_kind(exc))


def _over_output(limits: RenderLimits, template: str | None) -> RenderLimitExceeded:
    return RenderLimitExceeded(
        f"the rendered text is longer than {limits.max_output:,} characters",
        limit="render.max_output",
        template=template,
    )


# --------------------------------------------------------------------------- renderer


class Renderer:
    """Renders ``templates/NAME.CHANNEL.{txt,html}``; safe to share between threads.

    ``loader_overrides(filename)`` may return a template's source kept elsewhere (the
    database); it wins over the file. It is called on every render to check the cached
    template is current, so it must be cheap (e.g. a dict kept up to date on change).

    ``ack_links`` signs the links ``{{ ack_link() }}`` makes (``duly.ack.AckLinks``).

    ``limits`` (the rule file's ``render:``) bound every render: :meth:`render` runs in a
    render process of :mod:`duly.renderpool` that is killed when it takes longer than
    ``limits.timeout`` or allocates more than ``limits.max_memory``, and the rendered text
    may not be longer than ``limits.max_output``. A render over a limit raises
    :class:`RenderLimitExceeded`. ``interactive`` renderers (previews, save checks) give way
    to deliveries and raise :class:`RenderBusy` when no render process comes free in time.
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
    ) -> None:
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
            from duly.renderpool import shared_pool

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

    def render(
        self,
        name: str,
        channel: str,
        context: Mapping[str, Any],
        *,
        recipient: Recipient | None = None,
        timezone: str | None = None,
        locale: str | None = None,
    ) -> Rendered:
        """Render template ``name`` for ``channel``, within ``limits``.

        Helpers format in ``locale`` and ``timezone``, else the recipient's, else English and
        UTC. ``recipient`` is also put in the context as ``recipient`` unless it has one.
        Raises :class:`RenderError` (:class:`RenderLimitExceeded` over a limit) — within
        ``limits.timeout`` of the render process starting on it.
        """
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
        return self.pool.render_many(self, items)  # type: ignore[no-any-return]

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
        runs). ``on_part(filename)`` is told which part is about to be rendered."""
        base = f"{name}.{channel}"
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
