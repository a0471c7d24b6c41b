"""Checking a database template before it is saved (:mod:`duly.delivery.templates`): the names a
template may read, and the errors that refuse a save.

:func:`_static_check` finds without data what would fail every render — syntax, an unknown
filter, a name the dispatcher never provides, a dunder attribute — also in branches sample
data never takes. :func:`_refusal` tells a render failure that refuses the save (over a
``render:`` limit; syntax, the sandbox or a missing include in a part being saved) from one
about data, which is only a warning.
"""

from __future__ import annotations

from jinja2 import TemplateSyntaxError, meta, nodes

from duly.core.errors import InvalidInput
from duly.core.model import Recipient, Subject
from duly.delivery.rendering import Renderer, RenderError, RenderLimitExceeded
from duly.delivery.rendering.loader import _split_subject

__all__ = ["CONTEXT_NAMES", "TemplateInvalid", "TemplateOverLimit"]

# The names the dispatcher puts in every template's context (Dispatcher._context; a test
# pins the two together), besides the collections of schedule rules (``collect``), each under
# its own name. Anything else a template reads is a typo.
CONTEXT_NAMES = frozenset(
    {
        "subject",
        "attributes",
        "recipient",
        "event",
        "rule",
        "step",
        "now",
        "timezone",
        "delivery",
        "collected",
    }
)


class TemplateInvalid(InvalidInput):
    """The template cannot be saved: it does not compile or breaks the sandbox."""

    code = "template_invalid"

    def __init__(
        self,
        reason: str,
        *,
        file: str,
        line: int | None,
        field: str | None = "body",
        subject: str | None = None,
    ) -> None:
        self.file, self.line, self.reason, self.subject = file, line, reason, subject
        where = f"{file}, line {line}" if line else file
        data = f" (with the data of subject {subject})" if subject else ""
        super().__init__(f"{where}{data}: {reason}", field=field)


class TemplateOverLimit(TemplateInvalid):
    """The template goes over a ``render:`` limit of the rule file (``limit`` names it)."""

    code = "render_limit"

    def __init__(
        self, reason: str, *, file: str, line: int | None, limit: str, subject: str | None
    ) -> None:
        self.limit = limit
        super().__init__(reason, file=file, line=line, subject=subject)


def _static_check(
    renderer: Renderer, file: str, source: str, names: frozenset[str] = CONTEXT_NAMES
) -> None:
    """Syntax, names the context never has, dunder attributes: the errors that would fail
    every render, found without data (so also in branches sample data never takes)."""
    # The Renderer's own environment (its globals, filters and syntax), and its split of a
    # first "Subject:" line, compiled on its own (the body keeps a blank line in its place).
    env = renderer._env
    body, subject = _split_subject(source)
    try:
        trees = [env.parse(body, file, file)]
        if subject is not None:
            trees.append(env.parse(subject, file, file))
        for ast in trees:
            _check_tree(ast, file, names)
    except TemplateSyntaxError as exc:  # also an unknown filter or test (an assertion)
        raise TemplateInvalid(exc.message or "syntax error", file=file, line=exc.lineno) from None
    except RecursionError:
        raise TemplateInvalid("expressions are nested too deeply", file=file, line=None) from None


def _check_tree(ast: nodes.Template, file: str, names: frozenset[str]) -> None:
    unknown = meta.find_undeclared_variables(ast) - names
    for node in ast.find_all(nodes.Name):
        if node.ctx == "load" and node.name in unknown:
            known = ", ".join(sorted(names))
            raise TemplateInvalid(
                f"{node.name!r} is undefined: a template can read {known} and the helpers",
                file=file,
                line=node.lineno,
            )
    for expr in ast.find_all((nodes.Getattr, nodes.Filter)):
        attr = None
        if isinstance(expr, nodes.Getattr):
            attr = expr.attr
        elif (
            isinstance(expr, nodes.Filter)
            and expr.name == "attr"
            and expr.args
            and isinstance(expr.args[0], nodes.Const)
        ):
            attr = expr.args[0].value
        if isinstance(attr, str) and attr.startswith("__"):
            raise TemplateInvalid(
                f"not allowed in a template: attribute {attr!r}", file=file, line=expr.lineno
            )


def _refusal(exc: RenderError, own: set[str], subject: str | None) -> TemplateInvalid | None:
    """A render failure that refuses the save: over a limit, or in a file being saved and
    not about data (syntax, the sandbox, a missing include)."""
    if isinstance(exc, RenderLimitExceeded):
        return TemplateOverLimit(
            exc.reason,
            file=exc.template or "",
            line=exc.line,
            limit=exc.limit,
            subject=subject,
        )
    if exc.template in own and exc.kind in ("syntax", "security", "not_found"):
        return TemplateInvalid(exc.reason, file=exc.template or "", line=exc.line, subject=subject)
    return None


def data_warning(
    exc: RenderError,
    subject: Subject,
    recipient: Recipient | None,
    real: bool,
    kinds: list[str],
) -> str:
    """The warning a save gives for a render that failed on data: naming the real subject
    and recipient, or saying plainly that sample data (which has no attributes) was used."""
    if real:
        to = f" and recipient {recipient.id}" if recipient is not None else ""
        return f"with subject {subject.ref}{to}: {exc}"
    why = f"there are no {' or '.join(kinds)} subjects yet" if kinds else "no rule uses it"
    return (
        f"{why}, so it was checked with sample data only, which has no attributes "
        f"(real subjects may well have them): {exc}"
    )
