"""Where templates come from (:mod:`duly.delivery.rendering`): files in one folder, or a source kept in
the database that wins over the file of the same name; a file's first ``Subject:`` line
compiled and cached with its body; and the undefined values that let optional data be
tested in ``{% if %}`` while a typo still fails.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

from jinja2 import BaseLoader, Environment, StrictUndefined, Template, TemplateNotFound
from jinja2.loaders import split_template_path
from jinja2.utils import missing

__all__ = ["Overrides"]

Overrides = Callable[[str], str | None]


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
        # Flattened: Jinja's ChainMap over the environment's globals is copied key by key
        # into every render's context (a third of a one-line template's render). The
        # environment's globals are all set when the Renderer is made, before any load.
        namespace = dict(environment.make_globals(globals))
        code = environment.compile(body, name, filename)
        template = _Template.from_code(environment, code, namespace, uptodate)
        assert isinstance(template, _Template)
        if subject is not None:
            # Compiled under a name that does not end in .html: a title is plain text, so it
            # is never HTML-escaped even when it comes from the .html file.
            subject_code = environment.compile(subject, name + "#subject", filename)
            template.subject = Template.from_code(environment, subject_code, namespace, None)
        return template


class _Undefined(StrictUndefined):
    """StrictUndefined, except that a missing attribute or key of real data is false in a
    test, so ``{% if subject.attributes.note %}`` works; a missing *name* (a typo) still
    fails there too."""

    __slots__ = ()

    def __bool__(self) -> bool:  # type: ignore[override]
        if self._undefined_obj is missing:
            self._fail_with_undefined_error()
        return False
