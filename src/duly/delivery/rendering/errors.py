"""What a failed render raises (:mod:`duly.delivery.rendering`), and how a Jinja or helper failure
becomes one: a :class:`RenderError` naming the template file and line, with a ``kind`` that
tells a broken template (``syntax``, ``security``, ``not_found``) from data that does not
fit it (``data``), a limit (:class:`RenderLimitExceeded`) or a full pool (:class:`RenderBusy`).
"""

from __future__ import annotations

import os
from types import TracebackType

from jinja2 import TemplateNotFound, TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError

from duly.core.model import RenderLimits
from duly.delivery.rendering.sandbox import LimitError

__all__ = ["RenderBusy", "RenderError", "RenderLimitExceeded"]


class RenderError(Exception):
    """A template could not be rendered.

    ``kind`` says why, so that callers can tell a broken template from data that does not
    fit it: ``syntax``, ``security`` (refused by the sandbox), ``not_found`` (an included
    template), ``limit`` (:class:`RenderLimitExceeded`), ``busy`` (:class:`RenderBusy`),
    ``unavailable`` (no render process could be started: nothing is wrong with the template
    or the data, and a later try may work), ``data`` (anything else: a missing value, a
    helper given bad input)."""

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


class _HelperError(ValueError):
    """A helper was given a value it cannot format."""


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
