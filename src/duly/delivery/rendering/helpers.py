"""The helpers templates call, as functions or filters (:mod:`duly.delivery.rendering`): ``date``,
``time``, ``datetime``, ``money``, ``number``, ``relative``, in the recipient's locale and
timezone (docs/reference/rules.md "Time": a value with an offset is an instant shown in the
recipient's timezone; one without is already local; a date alone is 00:00 local).

A helper given a value it cannot format raises ``_HelperError``, reported as a
:class:`~duly.delivery.rendering.RenderError` naming the template line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from datetime import date as Date
from datetime import datetime as DateTime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from babel import dates as babel_dates
from babel import numbers as babel_numbers
from jinja2 import Undefined, pass_context
from jinja2.runtime import Context

from duly.delivery.rendering.errors import RenderError, _HelperError

__all__: list[str] = []


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
            # docs/reference/rules.md "Time": no offset means local to the recipient. The round trip
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
