"""The Jinja sandbox templates run in, with size checks before the operations that could
build a huge value in a single step.

Jinja's :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment` already refuses private
attributes, changes to the data and ranges of more than 100,000 items. What it lets
through is a single C-level operation that runs for minutes or takes gigabytes before
Python regains control: ``'x' * 10**9``, ``10 ** 10**9``, ``'%999999999s' % x``,
``'{:999999999}'.format(x)``, ``s.center(10**9)``, ``s.replace('', s)``,
``s|indent(10**9)``, ``lipsum(10**6)``. :class:`BoundedSandbox` checks the size of each
result first and refuses it with :class:`LimitError` (a ``SecurityError``) naming
``render.max_output``.

These checks give a clear error early; they are not the bound. Sizes that cannot be known
beforehand (``|join`` of a generator, a loop that doubles a string) are stopped by the
render process's memory and time limits (:mod:`duly.delivery.rendering.pool`).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from typing import Any

from jinja2 import defaults, filters
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum

__all__ = ["MAX_INT_BITS", "BoundedSandbox", "LimitError"]

# ``**`` on integers: a result of more bits than this is refused (about 30,000 digits;
# Python refuses to print more than 4,300 anyway).
MAX_INT_BITS = 100_000
# lipsum(): at most this many paragraphs
MAX_LIPSUM = 100

# %-format specs: "%(name)-*.*s" — the width and precision groups
_PERCENT_RE = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(\*|\d+)?(?:\.(\*|\d+))?[a-zA-Z%]")
_DIGITS_RE = re.compile(r"\d+")
# str methods whose result grows with an argument: name -> size of the result
_GROWING: dict[str, Callable[..., int]] = {}


class LimitError(SecurityError):
    """A template operation would build a value larger than ``render.max_output``."""

    limit = "render.max_output"


def _width(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _replace_size(s: str, old: Any, new: Any, count: Any = -1) -> int:
    if not isinstance(old, str) or not isinstance(new, str):
        return len(s)
    hits = len(s) + 1 if old == "" else s.count(old)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(s) + hits * max(0, len(new) - len(old))


_GROWING.update(
    {
        "center": lambda s, width=0, *a: max(len(s), _width(width)),
        "ljust": lambda s, width=0, *a: max(len(s), _width(width)),
        "rjust": lambda s, width=0, *a: max(len(s), _width(width)),
        "zfill": lambda s, width=0, *a: max(len(s), _width(width)),
        "expandtabs": lambda s, tabsize=8, *a: len(s) + s.count("\t") * _width(tabsize),
        "replace": _replace_size,
    }
)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, refusing an operation whose result would be longer than
    ``max_output`` characters (or an integer of more than MAX_INT_BITS bits)."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, *args: Any, max_output: int = 10_000_000, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_output = max_output
        self.filters.update(
            format=self._format_filter,
            center=self._center_filter,
            indent=self._indent_filter,
            replace=self._replace_filter,
        )
        self.globals["lipsum"] = self._lipsum

    # ------------------------------------------------------------------ checks

    def _refuse_over(self, size: int, what: str) -> None:
        if size > self.max_output:
            raise LimitError(
                f"{what} would be too long: {size:,} characters, over the {self.max_output:,} allowed"
            )

    def _check_percent(self, fmt: str, args: Any) -> None:
        values = args if isinstance(args, tuple) else (args,)
        stars = [v for v in values if isinstance(v, int)]
        for m in _PERCENT_RE.finditer(fmt):
            for group in m.groups():
                if group == "*":
                    self._refuse_over(max(map(abs, stars), default=0), "a formatted value")
                elif group:
                    self._refuse_over(int(group), "a formatted value")

    def _check_format_spec(self, fmt: str) -> None:
        try:
            fields = list(string.Formatter().parse(fmt))
        except ValueError:
            return  # str.format raises the same error itself
        for _, _, spec, _ in fields:
            if not spec:
                continue
            if "{" in spec:
                raise SecurityError("a format width taken from an argument is not allowed")
            for digits in _DIGITS_RE.findall(spec):
                self._refuse_over(int(digits), "a formatted value")

    # ------------------------------------------------------------------ sandbox hooks

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int):
                    self._refuse_over(len(seq) * n, "a repeated string or list")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0:
                if abs(left) > 1 and right * abs(left).bit_length() > MAX_INT_BITS:
                    raise LimitError(f"the number would have more than {MAX_INT_BITS:,} bits")
        elif operator == "%" and isinstance(left, str):
            self._check_percent(left, right)
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """``'...'.format`` and ``.format_map`` (Jinja wraps them at attribute lookup):
        the format string's widths are checked before it runs."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__

        def checked(*args: Any, **kwargs: Any) -> str:
            self._check_format_spec(fmt)
            return wrapped(*args, **kwargs)

        return checked

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            size = _GROWING.get(getattr(__obj, "__name__", ""))
            if size is not None:
                try:
                    n = size(owner, *args, **kwargs)
                except TypeError:
                    n = 0  # wrong arguments: the call itself says so
                __self._refuse_over(n, f"the result of .{__obj.__name__}()")
        return super().call(__context, __obj, *args, **kwargs)

    # ------------------------------------------------------------------ filters

    def _format_filter(self, value: Any, *args: Any, **kwargs: Any) -> str:
        if isinstance(value, str):
            self._check_percent(value, args or tuple(kwargs.values()))
        return filters.do_format(value, *args, **kwargs)

    def _center_filter(self, value: Any, width: int = 80) -> str:
        self._refuse_over(max(len(str(value)), _width(width)), "a centered value")
        return filters.do_center(value, width)

    def _indent_filter(
        self, s: Any, width: Any = 4, first: bool = False, blank: bool = False
    ) -> Any:
        per_line = len(width) if isinstance(width, str) else _width(width)
        lines = str(s).count("\n") + 1
        self._refuse_over(len(str(s)) + lines * per_line, "an indented value")
        return filters.do_indent(s, width, first, blank)

    @filters.pass_eval_context  # type: ignore[misc]
    def _replace_filter(
        self, eval_ctx: Any, s: Any, old: Any, new: Any, count: int | None = None
    ) -> Any:
        self._refuse_over(
            _replace_size(str(s), str(old), str(new), -1 if count is None else count),
            "a replaced value",
        )
        return filters.do_replace(eval_ctx, s, old, new, count)

    def _lipsum(self, n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
        if _width(n) > MAX_LIPSUM or _width(max) > 1000:
            raise LimitError(f"lipsum() makes at most {MAX_LIPSUM} paragraphs of 1,000 words")
        return str(generate_lorem_ipsum(n, html, min, max))


assert "lipsum" in defaults.DEFAULT_NAMESPACE  # replaced above with a bounded one
