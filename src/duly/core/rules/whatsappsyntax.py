"""A rule's or step's ``whatsapp:`` key → :class:`duly.core.model.WhatsAppTemplate`
(docs/reference/rules.md, "WhatsApp templates")::

    whatsapp:
      content_sid: HX0123456789abcdef0123456789abcdef   # twilio-whatsapp channels
      template: appointment_reminder                     # whatsapp-cloud channels
      language: en_US                                    # with template
      variables:
        "1": "{{ recipient.name }}"
        "2": "{{ subject.starts_at | datetime }}"
      freeform: window                                   # window, always or never

At least one of ``content_sid``, ``template`` or ``variables``. Variable names are 1 to 16
letters, digits or ``_``; with ``template`` (the Cloud API's numbered body parameters) they
must be 1 to N. Each value is a Jinja text rendered with the message's context (its syntax
is checked when the message is rendered, as a template file's is). At most
:data:`MAX_VARIABLES` variables of at most :data:`MAX_VARIABLE_SOURCE` characters each.
"""

from __future__ import annotations

import re
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode

from duly.core.model import WhatsAppTemplate
from duly.core.rules.yamlnodes import describe, is_null, join

__all__ = ["FREEFORM_MODES", "MAX_VARIABLES", "MAX_VARIABLE_SOURCE", "read_whatsapp"]

KEYS = ("content_sid", "template", "language", "variables", "freeform")
FREEFORM_MODES = ("window", "always", "never")
MAX_VARIABLES = 50
MAX_VARIABLE_SOURCE = 2000

_CONTENT_RE = re.compile(r"HX[0-9a-fA-F]{32}")
_TEMPLATE_RE = re.compile(r"[a-z0-9_]{1,512}")
_LANGUAGE_RE = re.compile(r"[a-z]{2,3}(_[A-Za-z0-9]{2,8})?")
_VARIABLE_RE = re.compile(r"[A-Za-z0-9_]{1,16}")


def read_whatsapp(reader: Any, node: Node, field: str) -> WhatsAppTemplate | None:
    """Read ``whatsapp:`` with ``reader`` (a :class:`duly.core.rules.yamlnodes.NodeReader`),
    recording located errors on it; None when it has any."""
    before = len(reader.errors)
    m = reader.mapping(node, field, KEYS)
    if m is None:
        return None

    def text(key: str, pattern: re.Pattern[str], what: str) -> str | None:
        if key not in m:
            return None
        value = reader.text(m[key], join(field, key), what)
        if value is None:
            return None
        value = str(reader.expand(value, m[key], join(field, key))).strip()
        if not pattern.fullmatch(value):
            reader.error(m[key], join(field, key), f"{value!r} is not {what}")
            return None
        return value

    content_sid = text("content_sid", _CONTENT_RE, "a Content SID (HX and 32 hex digits)")
    template = text("template", _TEMPLATE_RE, "a template name (lower case, digits, _)")
    language = text("language", _LANGUAGE_RE, "a language code such as en_US")
    if "template" in m and "language" not in m:
        reader.error(node, field, "missing key 'language' (the template's, such as en_US)")
    if "language" in m and "template" not in m:
        reader.error(m["language"], join(field, "language"), "language needs template")
    freeform = None
    if "freeform" in m:
        mode = reader.text(m["freeform"], join(field, "freeform"), "window, always or never")
        if mode is not None and mode.strip().lower() not in FREEFORM_MODES:
            reader.error(
                m["freeform"],
                join(field, "freeform"),
                f"expected window, always or never, not {mode!r}",
            )
        elif mode is not None:
            freeform = mode.strip().lower()
    variables = (
        _variables(reader, m["variables"], join(field, "variables")) if "variables" in m else ()
    )
    if variables and "template" in m:
        numbers = sorted(int(k) if k.isdigit() else -1 for k, _ in variables)
        if numbers != list(range(1, len(numbers) + 1)):
            reader.error(
                m["variables"],
                join(field, "variables"),
                "with template (the Cloud API's body parameters) variables must be numbered "
                "1 to N without gaps",
            )
    if not ({"content_sid", "template", "variables"} & set(m)):
        reader.error(node, field, "give content_sid, template or variables")
    if len(reader.errors) > before:
        return None
    return WhatsAppTemplate(
        content_sid=content_sid,
        template=template,
        language=language,
        variables=variables,
        freeform=freeform,
    )


def _variables(reader: Any, node: Node, field: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(node, MappingNode):
        reader.error(node, field, f"expected a mapping of variable to text, got {describe(node)}")
        return ()
    out: list[tuple[str, str]] = []
    for key_node, value_node in node.value:
        key = str(key_node.value).strip() if isinstance(key_node, ScalarNode) else ""
        where = join(field, key or "?")
        if not _VARIABLE_RE.fullmatch(key):
            reader.error(key_node, where, f"{key!r} is not a variable name (1, 2 … or a word)")
            continue
        if any(k == key for k, _ in out):
            reader.error(key_node, where, f"duplicate variable {key!r}")
            continue
        if not isinstance(value_node, ScalarNode) or is_null(value_node) or not value_node.value:
            reader.error(value_node, where, f"expected a text, got {describe(value_node)}")
            continue
        value = str(value_node.value)
        if len(value) > MAX_VARIABLE_SOURCE:
            reader.error(value_node, where, f"longer than {MAX_VARIABLE_SOURCE} characters")
            continue
        out.append((key, value))
    if len(out) > MAX_VARIABLES:
        reader.error(node, field, f"more than {MAX_VARIABLES} variables")
    return tuple(out)
