"""A subject as lists show it: its title and the columns the rule file names for its kind
(``subjects:``, read by :mod:`duly.core.rules.subjectviews`), formatted for people —
dates in the viewer's timezone, amounts with their currency, a role's recipients by name
with links. Used by the subject list, a recipient's page and the search results."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from babel.numbers import format_currency, format_decimal
from markupsafe import Markup, escape

from duly.core.model import SubjectView
from duly.core.rules.subjectviews import column_values, subject_context, title_of
from duly.web.core import fmt_time, recipient_path

__all__ = ["describe", "role_ids"]

LOCALE = "en"  # the UI's language
_NONE = Markup('<span class="muted">—</span>')


def role_ids(views: Mapping[str, SubjectView], rows: Iterable[Mapping[str, Any]]) -> set[str]:
    """The recipient ids the role columns of ``rows`` show (to look their names up once)."""
    out: set[str] = set()
    for r in rows:
        view = views.get(r["kind"])
        for c in view.columns if view else ():
            if c.format == "role":
                ids = (r.get("recipients") or {}).get(c.role) or ()
                out.update([ids] if isinstance(ids, str) else ids)
    return out


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | Decimal):
        try:
            d = Decimal(str(value))
        except InvalidOperation:
            return None
        return d if d.is_finite() else None
    if isinstance(value, str) and len(value) <= 40:
        try:
            d = Decimal(value.strip())
        except InvalidOperation:
            return None
        return d if d.is_finite() else None
    return None


def _cell(c: Mapping[str, Any], tz: ZoneInfo, people: Mapping[str, Any]) -> Markup:
    value, fmt = c["value"], c["format"]
    if fmt == "role":
        if not value:
            return _NONE
        links = []
        for rid in value[:10]:
            person = people.get(rid)
            name = (getattr(person, "name", None) or rid) if person else rid
            links.append(Markup('<a href="{}">{}</a>').format(recipient_path(str(rid)), name))
        return Markup(", ").join(links)
    if value is None or value == "":
        return _NONE
    if fmt in ("money", "number") or (fmt == "auto" and isinstance(value, float)):
        n = _number(value)
        if n is None:
            return escape(str(value))
        if fmt == "money" and c.get("currency"):
            return escape(format_currency(n, c["currency"], locale=LOCALE))
        if fmt == "money":
            return escape(format_decimal(n, format="#,##0.00", locale=LOCALE))
        return escape(format_decimal(n, locale=LOCALE))
    if isinstance(value, datetime):
        if fmt == "date":
            return escape(value.astimezone(tz).strftime("%a %d %b %Y"))
        if fmt in ("auto", "datetime"):
            return escape(fmt_time(value, tz))
    if isinstance(value, date) and not isinstance(value, datetime):
        return escape(value.strftime("%a %d %b %Y"))
    if isinstance(value, bool):
        return escape("yes" if value else "no")
    if isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False, default=str)
        return escape(text if len(text) <= 80 else text[:79] + "…")
    if isinstance(value, float) and not math.isfinite(value):
        return _NONE
    return escape(str(value))


def describe(
    views: Mapping[str, SubjectView],
    row: Mapping[str, Any],
    *,
    now: datetime,
    tz: ZoneInfo,
    people: Mapping[str, Any],
) -> dict[str, Any]:
    """``title`` (None: the kind has none) and ``cells`` (label, html) of one subject row
    (``kind``, ``key``, ``attributes``, ``recipients``)."""
    view = views.get(row["kind"])
    if view is None:
        return {"title": None, "cells": []}
    attrs = dict(row.get("attributes") or {})
    ctx = subject_context(row["kind"], row["key"], attrs, now=now, tz=tz)
    cols = column_values(view, ctx, dict(row.get("recipients") or {}))
    return {
        "title": title_of(view, ctx),
        "cells": [{"label": c["label"], "html": _cell(c, tz, people)} for c in cols],
    }
