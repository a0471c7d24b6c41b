"""What each endpoint sends and how its answer is read. No I/O here: the sync and the async
client both turn a :class:`Call` into one HTTP request and hand the response back to it."""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from duly import __version__
from duly.client import models as M
from duly.client.errors import DulyAPIError, error_for

if TYPE_CHECKING:
    from duly.api.stats import StatsOut
    from duly.api.templates import PreviewOut, SaveOut, TemplateList, TemplateOut

T = TypeVar("T")
Model = TypeVar("Model", bound=BaseModel)

USER_AGENT = f"duly-client/{__version__}"


class Unset(enum.Enum):
    """The type of :data:`UNSET`: "leave this field as it is" in a partial update."""

    UNSET = enum.auto()

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset.UNSET


def headers(api_key: str) -> dict[str, str]:
    """Headers sent with every request."""
    if not isinstance(api_key, str) or not api_key.strip():
        raise ValueError("api_key is required (make one with `duly keys create --name NAME`)")
    return {
        "Authorization": f"Bearer {api_key.strip()}",
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
    }


# --------------------------------------------------------------------------- encoding


def iso(t: datetime) -> str:
    """ISO 8601, UTC written as ``Z``. A naive datetime is sent as it is: the API reads it
    as local to the recipient in subject attributes, and refuses it (422) where it needs an
    instant (``send_at``, ``hold_until``, ``from``, ``to``, ``until``)."""
    s = t.isoformat()
    if t.utcoffset() == timedelta(0) and s.endswith("+00:00"):
        s = s[: -len("+00:00")] + "Z"
    return s


def _default(o: Any) -> Any:
    if isinstance(o, datetime):
        return iso(o)
    if isinstance(o, date):
        return o.isoformat()
    if isinstance(o, BaseModel):
        return o.model_dump(mode="json", exclude_unset=True)
    if isinstance(o, Decimal):  # as pydantic writes it: exact, as a string
        return str(o)
    if isinstance(o, set | frozenset):
        return sorted(o)
    raise TypeError(f"cannot send a {type(o).__name__} as JSON: {o!r}")


def encode(body: Any) -> bytes:
    """The JSON body: datetimes as ISO 8601, dates as YYYY-MM-DD, Decimals as strings."""
    return json.dumps(body, default=_default, ensure_ascii=False, separators=(",", ":")).encode()


def strs(value: str | Iterable[str]) -> list[str]:
    """A list of ids or names; one string is a list of one (not of its characters)."""
    return [value] if isinstance(value, str) else list(value)


def seg(value: str | int) -> str:
    """One path segment, percent-encoded (a ``/`` in an id cannot pass through a path)."""
    return quote(str(value), safe="")


# --------------------------------------------------------------------------- calls


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request and the reader of its successful answer."""

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    body: Any = None
    params: Mapping[str, str] | None = None
    accept: frozenset[int] = frozenset()  # error statuses that are answers (readyz: 503)

    def request(self) -> dict[str, Any]:
        """Keyword arguments for ``httpx.Client.request`` / ``AsyncClient.request``."""
        kw: dict[str, Any] = {"method": self.method, "url": self.path}
        if self.params:
            kw["params"] = dict(self.params)
        if self.body is not None:
            kw["content"] = encode(self.body)
            kw["headers"] = {"Content-Type": "application/json"}
        return kw

    def result(self, response: httpx.Response) -> T:
        """The typed result, or the typed exception for an error answer."""
        if response.is_error and response.status_code not in self.accept:
            raise error_for(response)
        return self.read(response)


def _model(cls: type[Model]) -> Callable[[httpx.Response], Model]:
    def read(response: httpx.Response) -> Model:
        try:
            return cls.model_validate_json(response.content)
        except PydanticValidationError as exc:
            raise DulyAPIError(
                response.status_code,
                "bad_response",
                f"the answer is not a {cls.__name__}: {exc.errors()[0].get('msg')}",
                response=response,
            ) from exc

    return read


def _later(module: str, name: str) -> Callable[[httpx.Response], Any]:
    """A reader for a response model defined beside its route (templates, stats), in a
    module that imports FastAPI: imported on first use, not when the client is."""

    def read(response: httpx.Response) -> Any:
        cls = getattr(import_module(module), name)
        return _model(cls)(response)

    return read


def _nothing(response: httpx.Response) -> None:
    return None


def _params(**values: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, v in values.items():
        if v is None:
            continue
        out[name.rstrip("_")] = iso(v) if isinstance(v, datetime) else str(v)
    return out


# recipients


def put_recipient(
    rid: str,
    name: str | None,
    email: str | None,
    phone: str | None,
    timezone: str | None,
    locale: str | None,
    addresses: Mapping[str, str] | None,
    consent: M.Consent | Mapping[str, Any] | None,
) -> Call[M.RecipientOut]:
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
    return Call("PUT", f"/v1/recipients/{seg(rid)}", _model(M.RecipientOut), body)


def get_recipient(rid: str) -> Call[M.RecipientOut]:
    return Call("GET", f"/v1/recipients/{seg(rid)}", _model(M.RecipientOut))


def delete_recipient(rid: str) -> Call[None]:
    return Call("DELETE", f"/v1/recipients/{seg(rid)}", _nothing)


# subjects


def put_subject(
    kind: str,
    key: str,
    attributes: Mapping[str, Any] | None,
    recipients: Mapping[str, str | Sequence[str]] | None,
    hold_until: datetime | None,
) -> Call[M.SubjectOut]:
    body = {
        "attributes": dict(attributes or {}),
        "recipients": {
            k: v if isinstance(v, str) else list(v) for k, v in (recipients or {}).items()
        },
        "hold_until": hold_until,
    }
    return Call("PUT", f"/v1/subjects/{seg(kind)}/{seg(key)}", _model(M.SubjectOut), body)


def get_subject(kind: str, key: str) -> Call[M.SubjectDetail]:
    return Call("GET", f"/v1/subjects/{seg(kind)}/{seg(key)}", _model(M.SubjectDetail))


def delete_subject(kind: str, key: str) -> Call[None]:
    return Call("DELETE", f"/v1/subjects/{seg(kind)}/{seg(key)}", _nothing)


def upsert_subjects(items: Iterable[M.SubjectBatchItem | Mapping[str, Any]]) -> Call[M.BatchOut]:
    subjects = [
        i.model_dump(mode="json", exclude_unset=True) if isinstance(i, BaseModel) else dict(i)
        for i in items
    ]
    return Call("POST", "/v1/subjects:batch", _model(M.BatchOut), {"subjects": subjects})


# events


def post_event(
    eid: str, name: str, subject: str, data: Mapping[str, Any] | None
) -> Call[M.EventOut]:
    body = {"id": eid, "name": name, "subject": subject, "data": dict(data or {})}
    return Call("POST", "/v1/events", _model(M.EventOut), body)


# deliveries


def list_deliveries(
    state: str | None,
    rule: str | None,
    subject: str | None,
    recipient: str | None,
    channel: str | None,
    from_: datetime | None,
    to: datetime | None,
    cursor: str | None,
    limit: int | None,
) -> Call[M.DeliveryList]:
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


def get_delivery(did: int) -> Call[M.DeliveryDetail]:
    return Call("GET", f"/v1/deliveries/{seg(did)}", _model(M.DeliveryDetail))


def delivery_action(did: int, action: str) -> Call[M.DeliveryOut]:
    return Call("POST", f"/v1/deliveries/{seg(did)}/{action}", _model(M.DeliveryOut))


# reminders


def create_reminder(
    title: str,
    recipients: Sequence[str],
    send_at: datetime,
    message: str | None,
    channels: Sequence[str] | None,
    subject: str | None,
    category: str | None,
) -> Call[M.ReminderOut]:
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


def get_reminder(rid: int) -> Call[M.ReminderOut]:
    return Call("GET", f"/v1/reminders/{seg(rid)}", _model(M.ReminderOut))


def update_reminder(rid: int, changes: Mapping[str, Any]) -> Call[M.ReminderOut]:
    body = {
        k: strs(v) if k in ("recipients", "channels") else v
        for k, v in changes.items()
        if v is not UNSET
    }
    return Call("PATCH", f"/v1/reminders/{seg(rid)}", _model(M.ReminderOut), body)


def delete_reminder(rid: int) -> Call[None]:
    return Call("DELETE", f"/v1/reminders/{seg(rid)}", _nothing)


# rules and simulation


def _text(value: str | os.PathLike[str]) -> str:
    """A rule file's text: a path object is read; a string is the text itself."""
    if isinstance(value, os.PathLike):
        return Path(value).read_text(encoding="utf-8")
    return value


def rules() -> Call[M.RulesOut]:
    return Call("GET", "/v1/rules", _model(M.RulesOut))


def check_rules(text: str | os.PathLike[str]) -> Call[M.RulesCheckOut]:
    return Call("POST", "/v1/rules:check", _model(M.RulesCheckOut), {"rules": _text(text)})


def simulate(
    rules_: str | os.PathLike[str],
    timeline: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
    until: datetime | None,
    templates: Mapping[str, str] | None,
) -> Call[M.SimulateOut]:
    if isinstance(timeline, str | os.PathLike):
        lines = _text(timeline)
    else:
        lines = "".join(encode(dict(line)).decode() + "\n" for line in timeline)
    body: dict[str, Any] = {"rules": _text(rules_), "timeline": lines}
    if until is not None:
        body["until"] = until
    if templates is not None:
        body["templates"] = dict(templates)
    return Call("POST", "/v1/simulate", _model(M.SimulateOut), body)


# templates and stats


def list_templates() -> Call[TemplateList]:
    return Call("GET", "/v1/templates", _later("duly.api.templates", "TemplateList"))


def get_template(name: str, version: int | None) -> Call[TemplateOut]:
    return Call(
        "GET",
        f"/v1/templates/{seg(name)}",
        _later("duly.api.templates", "TemplateOut"),
        params=_params(version=version),
    )


def put_template(name: str, parts: Iterable[Mapping[str, str]]) -> Call[SaveOut]:
    body = {"parts": [dict(p) for p in parts]}
    return Call("PUT", f"/v1/templates/{seg(name)}", _later("duly.api.templates", "SaveOut"), body)


def restore_template(name: str, version: int) -> Call[SaveOut]:
    return Call(
        "POST",
        f"/v1/templates/{seg(name)}/restore",
        _later("duly.api.templates", "SaveOut"),
        {"version": version},
    )


def preview_template(name: str, fields: Mapping[str, Any]) -> Call[PreviewOut]:
    body = {k: v for k, v in fields.items() if v is not None}
    return Call(
        "POST",
        f"/v1/templates/{seg(name)}/preview",
        _later("duly.api.templates", "PreviewOut"),
        body,
    )


def stats(from_: datetime | None, to: datetime | None) -> Call[StatsOut]:
    return Call(
        "GET", "/v1/stats", _later("duly.api.stats", "StatsOut"), params=_params(from_=from_, to=to)
    )


# health


def healthz() -> Call[M.Health]:
    return Call("GET", "/healthz", _model(M.Health))


def readyz() -> Call[M.Health]:
    return Call("GET", "/readyz", _model(M.Health), accept=frozenset({503}))
