"""What the WhatsApp channels (``twilio-whatsapp``, ``whatsapp-cloud``) share: approved
templates, their variables, and the 24-hour customer-service window.

WhatsApp takes free-form text only within 24 hours of the recipient's last message to the
business (the customer-service window); outside it, only a pre-approved template. A channel
configured with a template (``content_sid`` on Twilio, ``template`` on the Cloud API)
decides per message with its ``freeform`` option:

- ``window`` (the default when a template is configured): free-form text when the
  recipient wrote in the last 24 hours, the template otherwise;
- ``always``: free-form text (the only mode without a template);
- ``never``: the template, always.

"Wrote in the last 24 hours" is asked of the channel's :attr:`last_inbound` callable,
``last_inbound(address) -> datetime | None`` (the address as the channel sends to it: an
E.164 number such as ``+15550100001``, without ``whatsapp:``). The default knows of no
inbound message, so the template is used. Inbound messages (Twilio's incoming-message
webhook, Meta's ``messages`` webhook) are to feed it once duly receives them; until then
whoever builds the channel may set the attribute.

Template variables come from the rendered message (rendering happens in the dispatcher,
before the channel sees the message):

- When the channel has a template and the rendered text (after surrounding whitespace) is a
  JSON object, its members are the variables (``{"1": "Ada", "2": "3 March"}``; values are
  strings or numbers) and its optional ``"text"`` member is the free-form text used inside
  the window. Without ``"text"`` the template is always used. Write such a template file
  with Jinja's ``tojson`` filter so names with quotes stay valid JSON:
  ``{"1": {{ recipient.name | tojson }}, "text": {{ ("Hi " ~ recipient.name) | tojson }}}``.
- Otherwise the rendered text is the free-form text, and the channel's variables option
  maps a variable to a field of the message: ``title``, ``text``, ``recipient_name``,
  ``recipient_id``, or a header such as ``X-Duly-Subject`` (members of a JSON text win).

A rule or step may name its own template (``whatsapp:`` in the rule file, carried on the
message as ``Message.whatsapp``): :func:`choose` decides per message which template, which
variable mapping and which ``freeform`` mode apply. Its ``content_sid`` is for
``twilio-whatsapp``, its ``template`` and ``language`` for ``whatsapp-cloud``: naming one
replaces the channel's template (and the channel's variable mapping, which was for that
template), its mode defaulting to ``window``; a block naming only the other kind's template
leaves the channel as configured; a block with only ``variables`` adds them to the
channel's own template. The block's rendered variables win over those of a JSON text.

Each variable is put on one line (WhatsApp refuses line breaks, tabs and runs of spaces in
a parameter: whitespace becomes single spaces). A variable that is empty, or a JSON text
that does not parse, fails the message permanently (a template problem, not the moment's).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from duly.delivery.channels.base import DeliveryError, Message

__all__ = [
    "FREEFORM_MODES",
    "WINDOW",
    "Choice",
    "Content",
    "choose",
    "LastInbound",
    "field_map_option",
    "freeform_option",
    "inside_window",
    "no_inbound",
    "read_content",
    "utc_now",
]

WINDOW = timedelta(hours=24)
FREEFORM_MODES = ("window", "always", "never")
MESSAGE_FIELDS = ("title", "text", "recipient_name", "recipient_id")

LastInbound = Callable[[str], "datetime | None"]

_VARIABLE_RE = re.compile(r"[A-Za-z0-9_]{1,16}")  # Twilio: no spaces, at most 16 characters
_HEADER_RE = re.compile(r"X-Duly-[A-Za-z-]+")


def no_inbound(address: str) -> datetime | None:
    """The default ``last_inbound``: no inbound message is known (so: the template)."""
    return None


def utc_now() -> datetime:
    return datetime.now(UTC)


def freeform_option(value: Any, *, template: str | None, template_option: str) -> str:
    """The ``freeform`` mode: ``window`` by default with a template, ``always`` without;
    ``window`` and ``never`` need a template."""
    if value in (None, ""):
        return "window" if template else "always"
    mode = str(value).strip().lower()
    if mode not in FREEFORM_MODES:
        raise ValueError(f"freeform: expected window, always or never, not {value!r}")
    if mode != "always" and not template:
        raise ValueError(f"freeform: {mode!r} needs option {template_option!r} (a template)")
    return mode


def field_map_option(option: str, value: Any, *, numbered: bool) -> dict[str, str]:
    """A mapping of template variable → message field, given as a mapping or as a JSON
    object in a string (from ``${VAR}``). ``numbered``: variables must be 1, 2, 3…"""
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    if not isinstance(value, Mapping):
        raise ValueError(f"{option}: expected a mapping of variable to message field")
    out: dict[str, str] = {}
    for key, name in value.items():
        key = str(key).strip()
        if not _VARIABLE_RE.fullmatch(key) or (numbered and not key.isdigit()):
            kind = "a number (1, 2 …)" if numbered else "a variable name (1, 2 … or a word)"
            raise ValueError(f"{option}: {key!r} is not {kind}")
        name = str(name).strip()
        if name not in MESSAGE_FIELDS and not _HEADER_RE.fullmatch(name):
            fields = ", ".join(MESSAGE_FIELDS)
            raise ValueError(
                f"{option}: {key}: {name!r} is not a message field ({fields}, X-Duly-…)"
            )
        out[key] = name
    if numbered:
        _check_numbered(out, option)
    return out


def _check_numbered(variables: Mapping[str, Any], where: str) -> None:
    numbers = sorted(int(k) for k in variables)
    if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError(f"{where}: variables must be numbered 1 to N without gaps")


@dataclass(frozen=True, slots=True)
class Content:
    """A message read for a WhatsApp channel with a template."""

    text: str | None  # the free-form text; None: the template only
    variables: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Choice:
    """What a message is sent with: the template (None: free-form text only), its language
    (the Cloud API's), the variable → message field mapping, the step's rendered
    variables and the ``freeform`` mode."""

    template: str | None
    language: str | None
    fields: Mapping[str, str]
    variables: Mapping[str, str]
    freeform: str


def choose(
    message: Message,
    *,
    key: str,
    template: str | None,
    language: str | None,
    fields: Mapping[str, str],
    freeform: str,
) -> Choice:
    """The template, mapping and mode of ``message`` on a channel configured with
    ``template`` (its ``content_sid`` when ``key`` is ``"content_sid"``, its Cloud API
    template when ``"template"``), ``language``, ``fields`` and ``freeform``; a rule's or
    step's ``whatsapp:`` block (``message.whatsapp``) overrides them (module doc)."""
    own = Choice(template, language, fields, {}, freeform)
    block = message.whatsapp
    if not block:
        return own
    other = "template" if key == "content_sid" else "content_sid"
    variables = {str(k): str(v) for k, v in (block.get("variables") or {}).items()}
    mode = block.get("freeform")
    if block.get(key):
        return Choice(block[key], block.get("language"), {}, variables, mode or "window")
    if block.get(other) or template is None:
        return own  # a template for the other kind of channel, or nothing to fill in
    return Choice(template, language, fields, variables, mode or freeform)


def read_content(
    message: Message,
    fields: Mapping[str, str],
    *,
    where: str,
    numbered: bool,
    extra: Mapping[str, str] | None = None,
) -> Content:
    """The free-form text and the template variables of ``message`` (see the module doc),
    ``extra`` (a step's rendered variables) winning over the others. Raises a permanent
    DeliveryError when the text is a broken JSON object or a variable is empty or not
    allowed."""
    raw = (message.text or "").strip()
    text: str | None = raw or (message.title or "").strip() or None
    from_json: dict[str, str] = {}
    if raw.startswith("{"):
        try:
            document = json.loads(raw)
        except ValueError as exc:
            raise DeliveryError(
                f"{where}: the rendered text looks like a JSON object of template variables "
                f"but is not valid JSON ({exc}); use the tojson filter in the template",
                permanent=True,
            ) from None
        if not isinstance(document, dict):
            raise DeliveryError(f"{where}: the rendered text is not a JSON object", permanent=True)
        free = document.pop("text", None)
        text = (free.strip() or None) if isinstance(free, str) else None
        for key, value in document.items():
            if not _VARIABLE_RE.fullmatch(key) or (numbered and not key.isdigit()):
                raise DeliveryError(
                    f"{where}: template variable {key!r} in the rendered text is not "
                    + ("a number (1, 2 …)" if numbered else "a name (letters, digits, _)"),
                    permanent=True,
                )
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise DeliveryError(
                    f"{where}: template variable {key!r} must be a string or a number",
                    permanent=True,
                )
            from_json[key] = str(value)
    variables = {key: _field(message, name, text) for key, name in fields.items()}
    variables.update(from_json)
    variables.update(extra or {})
    # WhatsApp refuses parameters with line breaks, tabs or runs of spaces: one line each.
    variables = {key: " ".join(value.split()) for key, value in variables.items()}
    for key, value in variables.items():
        if not value.strip():
            raise DeliveryError(f"{where}: template variable {key!r} is empty", permanent=True)
    if numbered:
        try:
            _check_numbered(variables, f"{where}: template variables")
        except ValueError as exc:
            raise DeliveryError(str(exc), permanent=True) from None
    return Content(text=text, variables=variables)


def _field(message: Message, name: str, text: str | None) -> str:
    if name == "text":
        return text or ""
    if name in MESSAGE_FIELDS:
        return str(getattr(message, name) or "").strip()
    return message.headers.get(name, "")


def inside_window(mode: str, last_inbound: LastInbound, address: str, now: datetime) -> bool:
    """Whether free-form text may be sent now, by the ``freeform`` mode."""
    if mode == "always":
        return True
    if mode == "never":
        return False
    last = last_inbound(address)
    if last is None:
        return False
    if last.tzinfo is None:
        last = last.replace(tzinfo=UTC)
    return now - last < WINDOW
