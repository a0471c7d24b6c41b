"""Every method of both clients, defined once, and how its answer is read. No I/O here.

Each endpoint is one function below (``@endpoint``): its name, parameters, defaults and
docstring are the public method's, and its body builds a :class:`~duly.client._request.Call`
(one request and the reader of its answer) or a :class:`~duly.client._request.Pages` (a
listing walked by cursor). :func:`install` turns
the table into methods of :class:`~duly.client.Client` (``duly.client._sync``, on
``httpx.Client``) and :class:`~duly.client.AsyncClient` (``duly.client._async``, on
``httpx.AsyncClient``), whose only own code is the transport: send a Call, walk Pages.

Why methods made at import, not a code generator with checked-in output: the generated code
would be the very mirror this replaces (two files to keep equal, and a test to keep them so),
while a made method is an ordinary function that carries the endpoint's own docstring,
``__signature__`` (with ``self``) and annotations, so ``help()``, ``inspect.signature``,
IPython and Jedi show the real parameters and result type, and ``typing.get_type_hints``
reads them. Static type checkers do not run the import: to them the clients' endpoint
methods are unknown attributes (duly ships no ``py.typed``; a stub generated from this table
would be the way to add them). Adding an endpoint is one function here; both clients have
it at once.
"""

from __future__ import annotations

import inspect
import os
import re
import types
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from duly.client import models as M
from duly.client._request import (
    ENDPOINTS,
    UNSET,
    USER_AGENT,
    Call,
    Category,
    Pages,
    State,
    Unset,
    _later,
    _model,
    _nothing,
    _params,
    encode,
    endpoint,
    headers,
    iso,
    seg,
    strs,
)

if TYPE_CHECKING:
    from duly.api.stats import StatsOut
    from duly.api.templates import PreviewOut, SaveOut, TemplateList, TemplateOut

__all__ = [
    "ENDPOINTS",
    "UNSET",
    "USER_AGENT",
    "Call",
    "Pages",
    "Unset",
    "encode",
    "headers",
    "install",
    "iso",
    "seg",
    "strs",
]

# --------------------------------------------------------------------------- endpoints
#
# Each public method of both clients, defined once: its name, parameters, defaults and
# docstring are this function's, and what it returns is the Call it builds (or, for
# iter_deliveries, the Pages it walks). duly.client._sync and _async install them.


# recipients


@endpoint
def put_recipient(
    id: str,
    *,
    name: str | None = None,
    email: str | None = None,
    phone: str | None = None,
    timezone: str | None = None,
    locale: str | None = None,
    addresses: Mapping[str, str] | None = None,
    consent: M.Consent | Mapping[str, Any] | None = None,
) -> Call[M.RecipientOut]:
    """Create or replace a recipient: whatever is left out is cleared (a PUT is the
    whole state). ``timezone`` is an IANA name (``Europe/London``); ``addresses`` maps
    other channels to addresses (``{"slack": "U123"}``); ``consent`` as in
    docs/reference/simulate.md (``{"promotional": True, "channels": {"sms": False}}``)."""
    body: dict[str, Any] = {
        "name": name,
        "email": email,
        "phone": phone,
        "timezone": timezone,
        "locale": locale,
        "addresses": dict(addresses or {}),
    }
    if consent is not None:
        body["consent"] = consent
    return Call("PUT", f"/v1/recipients/{seg(id)}", _model(M.RecipientOut), body)


@endpoint
def upsert_recipients(
    recipients: Iterable[M.RecipientBatchItem | Mapping[str, Any]],
) -> Call[M.RecipientBatchOut]:
    """Create or replace up to 1,000 recipients in one request
    (``POST /v1/recipients:batch``); each item is the whole state of one recipient, with its
    ``id``. Bad items are refused one by one: the answer has a result per item, in order
    (``ok``, ``created`` or ``error``), and counts of ``ok`` and ``failed``."""
    items = [
        i.model_dump(mode="json", exclude_unset=True) if isinstance(i, BaseModel) else dict(i)
        for i in recipients
    ]
    return Call("POST", "/v1/recipients:batch", _model(M.RecipientBatchOut), {"recipients": items})


@endpoint
def get_recipient(id: str) -> Call[M.RecipientOut]:
    """A recipient. Raises NotFound when there is none with that id."""
    return Call("GET", f"/v1/recipients/{seg(id)}", _model(M.RecipientOut))


@endpoint
def delete_recipient(id: str) -> Call[None]:
    """Delete a recipient; its pending deliveries are cancelled (``recipient_removed``).
    Raises NotFound when there is none with that id."""
    return Call("DELETE", f"/v1/recipients/{seg(id)}", _nothing)


# subjects


@endpoint
def put_subject(
    kind: str,
    key: str,
    *,
    attributes: Mapping[str, Any] | None = None,
    recipients: Mapping[str, str | Sequence[str]] | None = None,
    hold_until: datetime | Literal["indefinite"] | None = None,
) -> Call[M.SubjectOut]:
    """Create or replace a subject's whole state and return it with its **plan**: the
    deliveries now pending, each with its ``planned_at`` and ``due_at``. ``recipients``
    maps roles to a recipient id or a list of ids (``{"customer": "c1"}``). Datetimes
    in ``attributes`` are sent as ISO 8601 (aware ones are instants; naive ones are
    local to the recipient, as the rules spec says). ``problems`` lists data the rules
    could not use (e.g. a date attribute that is not a date). ``hold_until`` puts it on
    hold until then, or until the hold is cleared with ``"indefinite"`` (read back as
    ``"indefinite"``; a delivery waiting for it has ``due_at`` None and
    ``held_until_cleared``)."""
    body = {
        "attributes": dict(attributes or {}),
        "recipients": {
            k: v if isinstance(v, str) else list(v) for k, v in (recipients or {}).items()
        },
        "hold_until": hold_until,
    }
    return Call("PUT", f"/v1/subjects/{seg(kind)}/{seg(key)}", _model(M.SubjectOut), body)


@endpoint
def get_subject(kind: str, key: str) -> Call[M.SubjectDetail]:
    """A subject with its plan, its history (deliveries no longer pending) and the data
    problems recorded for it. Raises NotFound."""
    return Call("GET", f"/v1/subjects/{seg(kind)}/{seg(key)}", _model(M.SubjectDetail))


@endpoint
def delete_subject(kind: str, key: str) -> Call[None]:
    """Delete a subject; its pending deliveries are cancelled (``subject_deleted``)."""
    return Call("DELETE", f"/v1/subjects/{seg(kind)}/{seg(key)}", _nothing)


@endpoint
def upsert_subjects(subjects: Iterable[M.SubjectBatchItem | Mapping[str, Any]]) -> Call[M.BatchOut]:
    """Upsert up to 1,000 subjects in one request (``POST /v1/subjects:batch``). Each
    item is a mapping (or a :class:`SubjectBatchItem`) with ``kind``, ``key``,
    ``attributes``, ``recipients`` and optionally ``hold_until``. Bad items are refused
    one by one: the answer has a result per item, in order (``ok``, ``revision``,
    ``planned`` or ``error``), and counts of ``ok`` and ``failed``."""
    items = [
        i.model_dump(mode="json", exclude_unset=True) if isinstance(i, BaseModel) else dict(i)
        for i in subjects
    ]
    return Call("POST", "/v1/subjects:batch", _model(M.BatchOut), {"subjects": items})


# events


@endpoint
def post_event(
    id: str, name: str, subject: str, data: Mapping[str, Any] | None = None
) -> Call[M.EventOut]:
    """Post an event about a known subject (``subject`` is ``"KIND/KEY"``); rules with
    ``on: NAME`` fire. ``id`` is the idempotency key: posting the same id again changes
    nothing and answers ``accepted=False``, so a retry after a TransportError is safe.
    An unknown subject raises ValidationError (code ``unknown_subject``)."""
    body = {"id": id, "name": name, "subject": subject, "data": dict(data or {})}
    return Call("POST", "/v1/events", _model(M.EventOut), body)


# deliveries


@endpoint
def list_deliveries(
    *,
    state: State | None = None,
    rule: str | None = None,
    subject: str | None = None,
    recipient: str | None = None,
    channel: str | None = None,
    from_: datetime | None = None,
    to: datetime | None = None,
    cursor: str | None = None,
    limit: int | None = None,
) -> Call[M.DeliveryList]:
    """One page of deliveries, newest first, filtered by state, rule, subject
    (``"KIND/KEY"``), recipient, channel and due time (``from_`` included, ``to``
    excluded; aware datetimes). ``limit`` is 1 to 500 (50 by default). Pass
    ``next_cursor`` back as ``cursor`` for the next page; :meth:`iter_deliveries` does
    it for you. Deliveries made while paging do not shift the pages."""
    params = _params(
        state=state,
        rule=rule,
        subject=subject,
        recipient=recipient,
        channel=channel,
        from_=from_,
        to=to,
        cursor=cursor,
        limit=limit,
    )
    return Call("GET", "/v1/deliveries", _model(M.DeliveryList), params=params)


@endpoint
def iter_deliveries(
    *,
    state: State | None = None,
    rule: str | None = None,
    subject: str | None = None,
    recipient: str | None = None,
    channel: str | None = None,
    from_: datetime | None = None,
    to: datetime | None = None,
    page_size: int = 100,
) -> Pages[M.DeliveryOut]:
    """Every delivery matching the filters (as :meth:`list_deliveries`), newest first,
    fetching pages of ``page_size`` as it goes by following ``next_cursor``."""
    filters = {"state": state, "rule": rule, "subject": subject, "recipient": recipient}
    filters |= {"channel": channel, "from_": from_, "to": to, "limit": page_size}
    return Pages(lambda cursor: list_deliveries(**filters, cursor=cursor))


@endpoint
def get_delivery(id: int) -> Call[M.DeliveryDetail]:
    """One delivery in full: its plan, every attempt with its error, its history of
    outcomes, the rendered content and the channel's receipt. Raises NotFound."""
    return Call("GET", f"/v1/deliveries/{seg(id)}", _model(M.DeliveryDetail))


def _action(did: int, action: str) -> Call[M.DeliveryOut]:
    return Call("POST", f"/v1/deliveries/{seg(did)}/{action}", _model(M.DeliveryOut))


@endpoint
def send_now(id: int) -> Call[M.DeliveryOut]:
    """Make a pending delivery due now (its planned time is kept; policies still
    apply). Raises Conflict unless it is pending."""
    return _action(id, "send-now")


@endpoint
def cancel(id: int) -> Call[M.DeliveryOut]:
    """Cancel a pending delivery (reason ``manual``). Raises Conflict unless it is
    pending."""
    return _action(id, "cancel")


@endpoint
def retry(id: int) -> Call[M.DeliveryOut]:
    """Try a failed, skipped or cancelled delivery again, now. Raises Conflict for any
    other state: a sent delivery is never sent twice."""
    return _action(id, "retry")


# reminders


@endpoint
def create_reminder(
    *,
    title: str,
    recipients: Sequence[str],
    send_at: datetime,
    message: str | None = None,
    channels: Sequence[str] | None = None,
    subject: str | None = None,
    category: Category | None = None,
) -> Call[M.ReminderOut]:
    """A one-off reminder: one delivery per recipient id and channel, at ``send_at``
    (aware, not in the past). ``channels`` defaults to ``["email"]`` on the server;
    ``subject`` (``"KIND/KEY"``) must be known. Refusals raise ValidationError."""
    body: dict[str, Any] = {"title": title, "recipients": strs(recipients), "send_at": send_at}
    if message is not None:
        body["message"] = message
    if channels is not None:
        body["channels"] = strs(channels)
    if subject is not None:
        body["subject"] = subject
    if category is not None:
        body["category"] = category
    return Call("POST", "/v1/reminders", _model(M.ReminderOut), body)


@endpoint
def get_reminder(id: int) -> Call[M.ReminderOut]:
    """A reminder with its deliveries and counts (pending, sent, overdue, failed)."""
    return Call("GET", f"/v1/reminders/{seg(id)}", _model(M.ReminderOut))


@endpoint
def update_reminder(
    id: int,
    *,
    title: str | Unset = UNSET,
    message: str | Unset = UNSET,
    recipients: Sequence[str] | Unset = UNSET,
    send_at: datetime | Unset = UNSET,
    channels: Sequence[str] | Unset = UNSET,
    subject: str | None | Unset = UNSET,
    category: Category | Unset = UNSET,
) -> Call[M.ReminderOut]:
    """Change the given fields of a reminder that has not been sent (the others are
    kept; ``subject=None`` detaches it from its subject). Its deliveries are
    re-planned. Raises Conflict once it was sent, NotFound after it was deleted."""
    changes = {
        "title": title,
        "message": message,
        "recipients": recipients,
        "send_at": send_at,
        "channels": channels,
        "subject": subject,
        "category": category,
    }
    body = {
        k: strs(v) if k in ("recipients", "channels") else v  # type: ignore[arg-type]
        for k, v in changes.items()
        if v is not UNSET
    }
    return Call("PATCH", f"/v1/reminders/{seg(id)}", _model(M.ReminderOut), body)


@endpoint
def delete_reminder(id: int) -> Call[None]:
    """Delete a reminder that has not been sent (its deliveries are cancelled,
    ``manual``). Raises Conflict once it was sent."""
    return Call("DELETE", f"/v1/reminders/{seg(id)}", _nothing)


# rules and simulation


def _text(value: str | os.PathLike[str]) -> str:
    """A rule file's text: a path object is read; a string is the text itself."""
    if isinstance(value, os.PathLike):
        return Path(value).read_text(encoding="utf-8")
    return value


@endpoint
def rules() -> Call[M.RulesOut]:
    """The rules the server runs: its rule file's path and timezone, and per rule its
    kind, subject, category, channels, steps, trigger and line."""
    return Call("GET", "/v1/rules", _model(M.RulesOut))


@endpoint
def check_rules(rules: str | os.PathLike[str]) -> Call[M.RulesCheckOut]:
    """Validate a rule file without loading it: ``rules`` is its YAML text, or a path
    object to read. The answer has ``ok`` and, when not ok, every error with its line
    and field (templates are not checked)."""
    return Call("POST", "/v1/rules:check", _model(M.RulesCheckOut), {"rules": _text(rules)})


@endpoint
def simulate(
    rules: str | os.PathLike[str],
    timeline: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
    *,
    until: datetime | None = None,
    templates: Mapping[str, str] | None = None,
) -> Call[M.SimulateOut]:
    """Run a simulation (docs/reference/simulate.md) on the server: ``rules`` as YAML text or a
    path object; ``timeline`` as JSON-lines text, a path object, or an iterable of
    dicts (one per line; datetimes are encoded). With ``templates`` (file name →
    source, e.g. ``{"invoice-due-soon.email.txt": "..."}``) messages are rendered.
    Returns the outcome rows and the warnings (timeline lines that were skipped)."""
    if isinstance(timeline, str | os.PathLike):
        lines = _text(timeline)
    else:
        lines = "".join(encode(dict(line)).decode() + "\n" for line in timeline)
    body: dict[str, Any] = {"rules": _text(rules), "timeline": lines}
    if until is not None:
        body["until"] = until
    if templates is not None:
        body["templates"] = dict(templates)
    return Call("POST", "/v1/simulate", _model(M.SimulateOut), body)


# templates and stats


@endpoint
def list_templates() -> Call[TemplateList]:
    """Every template name, from the rule file's ``templates/`` folder and the
    database: its parts (channel and extension), where each comes from, the newest
    version."""
    return Call("GET", "/v1/templates", _later("duly.api.templates", "TemplateList"))


@endpoint
def get_template(name: str, *, version: int | None = None) -> Call[TemplateOut]:
    """A template's parts (body, source, version) as used now, or as they were after
    save ``version``, with its history (which key saved which parts, when)."""
    return Call(
        "GET",
        f"/v1/templates/{seg(name)}",
        _later("duly.api.templates", "TemplateOut"),
        params=_params(version=version),
    )


@endpoint
def put_template(name: str, parts: Iterable[Mapping[str, str]]) -> Call[SaveOut]:
    """Save parts of a template as a new version, each ``{"channel": "email", "ext":
    "txt" or "html", "body": "Subject: ...\\n..."}``; they override the file of the same
    name from then on. A part that does not compile is refused (ValidationError; its
    ``extra["template_error"]`` has the file and line) and nothing is saved. Parts equal
    to the current ones are not saved again (``saved`` False)."""
    body = {"parts": [dict(p) for p in parts]}
    return Call("PUT", f"/v1/templates/{seg(name)}", _later("duly.api.templates", "SaveOut"), body)


@endpoint
def restore_template(name: str, version: int) -> Call[SaveOut]:
    """Save the parts as they were at ``version`` as a new version."""
    return Call(
        "POST",
        f"/v1/templates/{seg(name)}/restore",
        _later("duly.api.templates", "SaveOut"),
        {"version": version},
    )


@endpoint
def preview_template(
    name: str,
    *,
    channel: str,
    ext: Literal["txt", "html"] | None = None,
    subject: str | None = None,
    recipient: str | None = None,
    version: int | None = None,
    body: str | None = None,
    event: Mapping[str, Any] | None = None,
) -> Call[PreviewOut]:
    """Render a template for ``channel`` with a subject's (``"KIND/KEY"``) and a
    recipient's real data, or sample data when none is named; a past ``version``, or
    unsaved source ``body`` for the part ``ext``. Returns title, text and html; a
    template that fails raises ValidationError (``extra["template_error"]``)."""
    fields = {
        "channel": channel,
        "ext": ext,
        "subject": subject,
        "recipient": recipient,
        "version": version,
        "body": body,
        "event": event,
    }
    return Call(
        "POST",
        f"/v1/templates/{seg(name)}/preview",
        _later("duly.api.templates", "PreviewOut"),
        {k: v for k, v in fields.items() if v is not None},
    )


@endpoint
def stats(*, from_: datetime | None = None, to: datetime | None = None) -> Call[StatsOut]:
    """What happened in a period (default: the 7 days before ``to``, default now; at
    most 400 days): outcome counts by outcome, reason, rule, channel and UTC day, and
    the deliveries pending, sending, overdue and failed now."""
    return Call(
        "GET", "/v1/stats", _later("duly.api.stats", "StatsOut"), params=_params(from_=from_, to=to)
    )


# health


@endpoint
def healthz() -> Call[M.Health]:
    """Liveness: the server answers (no API key needed)."""
    return Call("GET", "/healthz", _model(M.Health))


@endpoint
def readyz() -> Call[M.Health]:
    """Readiness: the database answers and the dispatcher runs. A server that is not
    ready is an answer too (``ok`` False, ``checks`` says why), not an exception."""
    return Call("GET", "/readyz", _model(M.Health), accept=frozenset({503}))


# --------------------------------------------------------------------------- installing

_SELF = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
_RESULT = re.compile(r"(Call|Pages)\[(.+)\]")


def install(
    cls: type,
    one: Callable[[Callable[..., Call[Any]]], Callable[..., Any]],
    paged: Callable[[Callable[..., Pages[Any]]], Callable[..., Any]],
    iterator: type[Iterator[Any]] | type[AsyncIterator[Any]],
) -> None:
    """Give ``cls`` one method per endpoint. ``one(spec)`` makes the method that sends the
    Call ``spec`` builds, ``paged(spec)`` the one that walks its Pages; each method takes
    the endpoint's name, docstring and signature (with ``self``, and returning what the
    Call reads, or ``iterator[...]`` of a Pages' items), so ``help()``, IDEs and
    ``inspect.signature`` see the real parameters."""
    for name, spec in ENDPOINTS.items():
        sig = inspect.signature(spec)
        match = _RESULT.fullmatch(str(spec.__annotations__["return"]))
        if match is None:
            raise TypeError(f"{name} must return Call[...] or Pages[...]")
        kind, result = match.groups()
        made = one(spec) if kind == "Call" else paged(spec)
        # the endpoint's module as globals, so typing.get_type_hints reads its annotations
        method = types.FunctionType(
            made.__code__, globals(), name, made.__defaults__, made.__closure__
        )
        returns = result if kind == "Call" else f"{iterator.__name__}[{result}]"
        method.__name__ = name
        method.__qualname__ = f"{cls.__name__}.{name}"
        method.__module__ = cls.__module__
        method.__doc__ = spec.__doc__
        method.__annotations__ = {**spec.__annotations__, "return": returns}
        method.__signature__ = sig.replace(  # type: ignore[attr-defined]
            parameters=[_SELF, *sig.parameters.values()], return_annotation=returns
        )
        setattr(cls, name, method)
