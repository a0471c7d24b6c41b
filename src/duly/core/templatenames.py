"""Template names and languages: a per-locale variant of a template is the template's name
with a locale added, ``NAME.LOCALE`` (files ``NAME.LOCALE.CHANNEL.EXT``, e.g.
``invoice-overdue.fr.email.html``), chosen by the recipient's locale with a fallback from the
region to the language (fr-CA → fr → the plain ``NAME``).

A name part is a locale when Babel knows its language (``fr``, ``pt-BR``, ``zh_Hant``):
``report.old`` or ``report.v2`` are plain names. Locales in file names are written with
``-`` or ``_``, the language in lower case and the region in upper case (``fr-CA``).

Which language a template's dates and money are written in (:func:`format_locale`): a
variant's (or any name ending in a locale: it declares its language); for a plain name the
rule file's ``template_language`` when set, else the recipient's locale. When the template's
language is the recipient's language, the recipient's regional forms are kept (an ``en``
template writes ``8 Dec 2026`` for en-GB and ``Dec 8, 2026`` for en-US).
"""

from __future__ import annotations

import re
from functools import lru_cache

from babel import Locale, UnknownLocaleError, localedata

__all__ = [
    "canonical_locale",
    "declared_language",
    "format_locale",
    "is_locale",
    "locale_chain",
    "split_file",
    "split_variant",
]

_LOCALE_RE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8}){0,2}$")
EXTS = ("txt", "html")


def _subtags(value: str) -> list[str]:
    parts = re.split(r"[-_]", value.strip())
    out = [parts[0].lower()]
    for p in parts[1:]:
        if len(p) == 4 and p.isalpha():
            out.append(p.title())  # a script: Hant
        else:
            out.append(p.upper())  # a region: CA, 419
    return out


def canonical_locale(value: str) -> str:
    """``fr_ca`` → ``fr-CA``: language lower case, script title case, region upper case."""
    return "-".join(_subtags(value))


@lru_cache(maxsize=1024)
def is_locale(value: str) -> bool:
    """True when ``value`` looks like a locale and Babel knows its language."""
    if not _LOCALE_RE.match(value or ""):
        return False
    language = _subtags(value)[0]
    return bool(localedata.exists(language))


def locale_chain(locale: str | None) -> list[str]:
    """The variant locales to look for, most specific first: ``fr_CA`` → ``fr-CA``,
    ``fr_CA``, ``fr``. Empty for no locale (or one that is not a locale)."""
    if not locale or not _LOCALE_RE.match(locale.strip()):
        return []
    tags = _subtags(locale)
    out: list[str] = []
    for n in range(len(tags), 0, -1):
        for sep in ("-", "_"):
            name = sep.join(tags[:n])
            if name not in out:
                out.append(name)
    return out


def split_variant(name: str) -> tuple[str, str] | None:
    """``(base, locale)`` when ``name`` is ``BASE.LOCALE`` with a known language; else None."""
    base, dot, last = name.rpartition(".")
    if not dot or not base or not is_locale(last):
        return None
    return base, last


def declared_language(name: str) -> str | None:
    """The language a template name declares (its locale part), or None."""
    v = split_variant(name)
    return v[1] if v is not None else None


def split_file(filename: str) -> tuple[str, str, str, str] | None:
    """``(base, locale, channel, ext)`` of a variant file ``BASE.LOCALE.CHANNEL.EXT``."""
    parts = filename.rsplit(".", 3)
    if len(parts) != 4 or parts[3] not in EXTS or not parts[0]:
        return None
    base, loc, channel, ext = parts
    if not is_locale(loc):
        return None
    return base, loc, channel, ext


@lru_cache(maxsize=1024)
def _language_of(value: str) -> str:
    try:
        return str(Locale.parse(value.replace("-", "_")).language)
    except (ValueError, UnknownLocaleError):
        return _subtags(value)[0] if value else ""


def format_locale(language: str | None, recipient_locale: str | None) -> str:
    """The locale a template's helpers write in: ``language`` (the template's own, declared
    by its name or by the rule file), else the recipient's locale, else ``en``; when both are
    the same language, the recipient's (its regional forms)."""
    if not language:
        return recipient_locale or "en"
    if recipient_locale and _language_of(recipient_locale) == _language_of(language):
        return recipient_locale
    return language
