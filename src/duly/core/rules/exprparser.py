"""The expression language's parser: recursive descent over the tokens into closures.

Each grammar rule of :mod:`duly.core.rules.expressions` is one method; each returns a closure
``ctx -> value`` built from :mod:`duly.core.rules.exprvalues`, so a compiled expression runs
without walking a tree.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from duly.core.rules.exprtokens import (
    CONSTANTS,
    KEYWORDS,
    MAX_DEPTH,
    ExpressionError,
    Token,
    error_at,
    tokenize,
)
from duly.core.rules.exprvalues import (
    COMPARISONS,
    EvaluationError,
    Evaluator,
    add_values,
    arith,
    constant_fn,
    getter_fn,
    indexer_fn,
    is_not_same,
    is_number,
    is_same,
    lookup_fn,
    type_name,
)


class Parser:
    """Recursive descent over the tokens, producing closures ``ctx -> value``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0
        self.names: set[str] = set()

    # -- token helpers
    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def advance(self) -> Token:
        t = self.tokens[self.i]
        self.i += 1
        return t

    def at_op(self, *ops: str) -> bool:
        return self.tok.kind == "OP" and self.tok.value in ops

    def at_word(self, *words: str) -> bool:
        return self.tok.kind == "NAME" and self.tok.value in words

    def fail(self, message: str, token: Token | None = None) -> ExpressionError:
        return error_at(self.text, (token or self.tok).pos, message)

    def expect_op(self, op: str) -> None:
        if not self.at_op(op):
            raise self.fail(f"expected {op!r}, found {self._describe(self.tok)}")
        self.advance()

    def _describe(self, t: Token) -> str:
        return "the end of the expression" if t.kind == "END" else repr(t.text)

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"the expression is nested more than {MAX_DEPTH} levels deep")

    # -- grammar
    def parse(self) -> Evaluator:
        fn = self.expr()
        if self.tok.kind != "END":
            raise self.fail(f"unexpected {self._describe(self.tok)}")
        return fn

    def expr(self) -> Evaluator:
        self.nest()
        parts = [self.and_expr()]
        while self.at_word("or"):
            self.advance()
            parts.append(self.and_expr())
        self.depth -= 1
        if len(parts) == 1:
            return parts[0]
        terms = tuple(parts)
        return lambda ctx: any(bool(t(ctx)) for t in terms)

    def and_expr(self) -> Evaluator:
        parts = [self.not_expr()]
        while self.at_word("and"):
            self.advance()
            parts.append(self.not_expr())
        if len(parts) == 1:
            return parts[0]
        terms = tuple(parts)
        return lambda ctx: all(bool(t(ctx)) for t in terms)

    def not_expr(self) -> Evaluator:
        if self.at_word("not"):
            self.advance()
            self.nest()
            inner = self.not_expr()
            self.depth -= 1
            return lambda ctx: not bool(inner(ctx))
        return self.comparison()

    def comparison(self) -> Evaluator:
        first = self.sum()
        ops: list[Callable[[Any, Any, dict[str, Any]], bool]] = []
        rest: list[Evaluator] = []
        while True:
            op = self.comparison_op()
            if op is None:
                break
            if op in ("is", "is not"):
                constant = self.identity_operand(op)
                ops.append(is_same if op == "is" else is_not_same)
                rest.append(constant_fn(constant))
                continue
            ops.append(COMPARISONS[op])
            rest.append(self.sum())
        if not ops:
            return first
        pairs = tuple(zip(ops, rest, strict=True))

        def chain(ctx: dict[str, Any]) -> bool:
            left = first(ctx)
            for compare, right_fn in pairs:
                right = right_fn(ctx)
                if not compare(left, right, ctx):
                    return False
                left = right
            return True

        return chain

    def comparison_op(self) -> str | None:
        t = self.tok
        if t.kind == "OP" and t.value in ("==", "!=", "<", "<=", ">", ">="):
            self.advance()
            return str(t.value)
        if self.at_word("in"):
            self.advance()
            return "in"
        if self.at_word("not") and self.tokens[self.i + 1].kind == "NAME":
            if self.tokens[self.i + 1].value == "in":
                self.i += 2
                return "not in"
        if self.at_word("is"):
            self.advance()
            if self.at_word("not"):
                self.advance()
                return "is not"
            return "is"
        return None

    def identity_operand(self, op: str) -> Any:
        """``x is null`` / ``x is not true``: only against null, true or false, where
        identity and equality agree."""
        t = self.tok
        if t.kind != "NAME" or t.value not in CONSTANTS:
            raise self.fail(f"{op!r} must be followed by null, true or false; use '==' to compare")
        self.advance()
        return CONSTANTS[t.value]

    def sum(self) -> Evaluator:
        first = self.product()
        rest: list[tuple[int, Evaluator]] = []
        while self.at_op("+", "-"):
            sign = 1 if self.advance().value == "+" else -1
            rest.append((sign, self.product()))
        if not rest:
            return first
        terms = tuple(rest)

        def total(ctx: dict[str, Any]) -> Any:
            value = first(ctx)
            for sign, term in terms:
                value = add_values(value, term(ctx), ctx, sign)
            return value

        return total

    def product(self) -> Evaluator:
        first = self.unary()
        rest: list[tuple[str, Evaluator]] = []
        while self.at_op("*", "/", "%"):
            rest.append((str(self.advance().value), self.unary()))
        if not rest:
            return first
        terms = tuple(rest)

        def product(ctx: dict[str, Any]) -> Any:
            value = first(ctx)
            for op, term in terms:
                value = arith(op, value, term(ctx))
            return value

        return product

    def unary(self) -> Evaluator:
        if self.at_op("-", "+"):
            op = self.advance().value
            self.nest()
            inner = self.unary()
            self.depth -= 1
            if op == "+":
                return inner

            def negate(ctx: dict[str, Any]) -> Any:
                value = inner(ctx)
                if is_number(value):
                    return -value
                if isinstance(value, timedelta):
                    try:
                        return -value
                    except OverflowError:
                        raise EvaluationError("the duration is out of range") from None
                raise EvaluationError(f"cannot negate {type_name(value)}")

            return negate
        return self.postfix()

    def postfix(self) -> Evaluator:
        fn, path = self.atom()
        levels = 0  # each `.x` / `[k]` wraps the closure once more: count it as nesting
        while True:
            if self.at_op(".", "["):
                self.nest()
                levels += 1
            if self.at_op("."):
                self.advance()
                t = self.tok
                if t.kind != "NAME":
                    raise self.fail(f"expected a name after '.', found {self._describe(t)}")
                self._check_name(t)
                self.advance()
                path = f"{path}.{t.value}" if path else f"(...).{t.value}"
                fn = getter_fn(fn, t.value, path)
            elif self.at_op("["):
                self.advance()
                key_fn = self.expr()
                self.expect_op("]")
                path = f"{path}[...]" if path else "(...)[...]"
                fn = indexer_fn(fn, key_fn, path)
            elif self.at_op("("):
                raise self.fail("function calls are not allowed")
            else:
                self.depth -= levels
                return fn

    def atom(self) -> tuple[Evaluator, str | None]:
        t = self.tok
        if t.kind in ("NUM", "DUR", "STR"):
            self.advance()
            return constant_fn(t.value), None
        if t.kind == "NAME":
            if t.value in CONSTANTS:
                self.advance()
                return constant_fn(CONSTANTS[t.value]), None
            if t.value in KEYWORDS:
                raise self.fail(f"unexpected {t.value!r}")
            self._check_name(t)
            self.advance()
            self.names.add(t.value)
            return lookup_fn(t.value), t.value
        if self.at_op("("):
            self.advance()
            inner = self.expr()
            self.expect_op(")")
            return inner, None
        if self.at_op("["):
            self.advance()
            self.nest()
            items: list[Evaluator] = []
            while not self.at_op("]"):
                items.append(self.expr())
                if not self.at_op(","):
                    break
                self.advance()
            self.expect_op("]")
            self.depth -= 1
            elements = tuple(items)
            return (lambda ctx: [e(ctx) for e in elements]), None
        raise self.fail(f"expected a value, found {self._describe(t)}")

    def _check_name(self, t: Token) -> None:
        # "_names" and Python keywords are already refused by the tokenizer.
        if t.value in KEYWORDS or t.value in CONSTANTS:
            raise self.fail(f"unexpected {t.value!r}", t)
