"""Rendering a webhook action's body: every string of it that holds ``{{``/``{%`` is a
sandboxed Jinja template. Kept apart from the webhook outbox (and so from the store and
SQLAlchemy) so a render process loads only this to render a body: the import then costs
almost nothing against the body's render time limit."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jinja2 import ChainableUndefined, TemplateError

from duly.delivery.rendering.sandbox import BoundedSandbox

__all__ = ["MAX_RENDERED", "BodyTemplateError", "render_body"]

# A rendered body string longer than this is an error (a template gone wrong, not data).
MAX_RENDERED = 64 * 1024


class BodyTemplateError(ValueError):
    """A value of a webhook action's body could not be rendered."""


# Jinja's sandbox (no private attributes, no mutation of data), refusing operations that
# would build a string longer than a body string may be (``'x' * 10**9``, ``10 ** 10**9``).
_ENV = BoundedSandbox(undefined=ChainableUndefined, autoescape=False, max_output=MAX_RENDERED)


@lru_cache(maxsize=256)
def _compile(source: str) -> Any:
    return _ENV.from_string(source)


def render_body(body: Any, context: Mapping[str, Any], path: str = "body") -> Any:
    """``body`` with every string that holds ``{{``/``{%`` rendered (a string stays a
    string); keys and other values as they are. A missing value renders as empty. Raises
    :class:`BodyTemplateError` naming the field."""
    if isinstance(body, str):
        if "{{" not in body and "{%" not in body:
            return body
        try:
            out = _compile(body).render(context)
        except (TemplateError, ArithmeticError, TypeError, ValueError, LookupError) as exc:
            raise BodyTemplateError(f"{path}: cannot render {body!r}: {exc}") from None
        if len(out) > MAX_RENDERED:
            raise BodyTemplateError(f"{path}: renders to over {MAX_RENDERED} characters")
        return out
    if isinstance(body, Mapping):
        return {k: render_body(v, context, f"{path}.{k}") for k, v in body.items()}
    if isinstance(body, list | tuple):
        return [render_body(v, context, f"{path}[{i}]") for i, v in enumerate(body)]
    return body
