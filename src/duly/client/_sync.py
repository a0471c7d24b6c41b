"""The blocking client."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import httpx

from duly.client import _calls as C
from duly.client import models as M
from duly.client._calls import UNSET, Unset
from duly.client.errors import TransportError

if TYPE_CHECKING:
    from duly.api.stats import StatsOut
    from duly.api.templates import PreviewOut, SaveOut, TemplateList, TemplateOut

T = TypeVar("T")

Category = Literal["transactional", "reminder", "promotional"]
State = Literal["pending", "sending", "sent", "failed", "skipped", "cancelled", "set"]


class Client:
    """A client for the duly HTTP API (``duly serve``), one method per endpoint.

    ::

        with Client("http://localhost:8000", api_key) as duly:
            invoice = duly.put_subject("invoice", "INV-1", attributes={...}, recipients={...})
            print(invoice.plan)

    ``timeout`` (seconds, or an ``httpx.Timeout``) bounds each request; ``transport``
    replaces the network (``httpx.MockTransport`` in tests, ``httpx.WSGITransport``…).
    Errors the API answers raise :class:`~duly.client.DulyAPIError` subclasses; network
    failures raise :class:`~duly.client.TransportError`. Methods may be called from several
    threads at once (httpx's connection pool is thread-safe).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url,
            headers=C.headers(api_key),
            timeout=timeout,
            transport=transport,
        )

    @property
    def base_url(self) -> str:
        """The API's address, as given."""
        return str(self._http.base_url).rstrip("/")

    def close(self) -> None:
        """Close the connections (also done on leaving a ``with`` block)."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    def _send(self, call: C.Call[T]) -> T:
        try:
            response = self._http.request(**call.request())
        except httpx.RequestError as exc:
            what = str(exc) or type(exc).__name__
            raise TransportError(f"{call.method} {call.path}: {what}") from exc
        return call.result(response)

    # ------------------------------------------------------------------ recipients

    def put_recipient(
        self,
        id: str,
        *,
        name: str | None = None,
        email: str | None = None,
        phone: str | None = None,
        timezone: str | None = None,
        locale: str | None = None,
        addresses: Mapping[str, str] | None = None,
        consent: M.Consent | Mapping[str, Any] | None = None,
    ) -> M.RecipientOut:
        """Create or replace a recipient: whatever is left out is cleared (a PUT is the
        whole state). ``timezone`` is an IANA name (``Europe/London``); ``addresses`` maps
        other channels to addresses (``{"slack": "U123"}``); ``consent`` as in
        spec/simulate.md (``{"promotional": True, "channels": {"sms": False}}``)."""
        return self._send(
            C.put_recipient(id, name, email, phone, timezone, locale, addresses, consent)
        )

    def get_recipient(self, id: str) -> M.RecipientOut:
        """A recipient. Raises NotFound when there is none with that id."""
        return self._send(C.get_recipient(id))

    def delete_recipient(self, id: str) -> None:
        """Delete a recipient; its pending deliveries are cancelled (``recipient_removed``).
        Raises NotFound when there is none with that id."""
        self._send(C.delete_recipient(id))

    # ------------------------------------------------------------------ subjects

    def put_subject(
        self,
        kind: str,
        key: str,
        *,
        attributes: Mapping[str, Any] | None = None,
        recipients: Mapping[str, str | Sequence[str]] | None = None,
        hold_until: datetime | None = None,
    ) -> M.SubjectOut:
        """Create or replace a subject's whole state and return it with its **plan**: the
        deliveries now pending, each with its ``planned_at`` and ``due_at``. ``recipients``
        maps roles to a recipient id or a list of ids (``{"customer": "c1"}``). Datetimes
        in ``attributes`` are sent as ISO 8601 (aware ones are instants; naive ones are
        local to the recipient, as the rules spec says). ``problems`` lists data the rules
        could not use (e.g. a date attribute that is not a date)."""
        return self._send(C.put_subject(kind, key, attributes, recipients, hold_until))

    def get_subject(self, kind: str, key: str) -> M.SubjectDetail:
        """A subject with its plan, its history (deliveries no longer pending) and the data
        problems recorded for it. Raises NotFound."""
        return self._send(C.get_subject(kind, key))

    def delete_subject(self, kind: str, key: str) -> None:
        """Delete a subject; its pending deliveries are cancelled (``subject_deleted``)."""
        self._send(C.delete_subject(kind, key))

    def upsert_subjects(
        self, subjects: Iterable[M.SubjectBatchItem | Mapping[str, Any]]
    ) -> M.BatchOut:
        """Upsert up to 1,000 subjects in one request (``POST /v1/subjects:batch``). Each
        item is a mapping (or a :class:`SubjectBatchItem`) with ``kind``, ``key``,
        ``attributes``, ``recipients`` and optionally ``hold_until``. Bad items are refused
        one by one: the answer has a result per item, in order (``ok``, ``revision``,
        ``planned`` or ``error``), and counts of ``ok`` and ``failed``."""
        return self._send(C.upsert_subjects(subjects))

    # ------------------------------------------------------------------ events

    def post_event(
        self, id: str, name: str, subject: str, data: Mapping[str, Any] | None = None
    ) -> M.EventOut:
        """Post an event about a known subject (``subject`` is ``"KIND/KEY"``); rules with
        ``on: NAME`` fire. ``id`` is the idempotency key: posting the same id again changes
        nothing and answers ``accepted=False``, so a retry after a TransportError is safe.
        An unknown subject raises ValidationError (code ``unknown_subject``)."""
        return self._send(C.post_event(id, name, subject, data))

    # ------------------------------------------------------------------ deliveries

    def list_deliveries(
        self,
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
    ) -> M.DeliveryList:
        """One page of deliveries, newest first, filtered by state, rule, subject
        (``"KIND/KEY"``), recipient, channel and due time (``from_`` included, ``to``
        excluded; aware datetimes). ``limit`` is 1 to 500 (50 by default). Pass
        ``next_cursor`` back as ``cursor`` for the next page; :meth:`iter_deliveries` does
        it for you. Deliveries made while paging do not shift the pages."""
        return self._send(
            C.list_deliveries(state, rule, subject, recipient, channel, from_, to, cursor, limit)
        )

    def iter_deliveries(
        self,
        *,
        state: State | None = None,
        rule: str | None = None,
        subject: str | None = None,
        recipient: str | None = None,
        channel: str | None = None,
        from_: datetime | None = None,
        to: datetime | None = None,
        page_size: int = 100,
    ) -> Iterator[M.DeliveryOut]:
        """Every delivery matching the filters (as :meth:`list_deliveries`), newest first,
        fetching pages of ``page_size`` as it goes by following ``next_cursor``."""
        cursor: str | None = None
        while True:
            page = self.list_deliveries(
                state=state,
                rule=rule,
                subject=subject,
                recipient=recipient,
                channel=channel,
                from_=from_,
                to=to,
                cursor=cursor,
                limit=page_size,
            )
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def get_delivery(self, id: int) -> M.DeliveryDetail:
        """One delivery in full: its plan, every attempt with its error, its history of
        outcomes, the rendered content and the channel's receipt. Raises NotFound."""
        return self._send(C.get_delivery(id))

    def send_now(self, id: int) -> M.DeliveryOut:
        """Make a pending delivery due now (its planned time is kept; policies still
        apply). Raises Conflict unless it is pending."""
        return self._send(C.delivery_action(id, "send-now"))

    def cancel(self, id: int) -> M.DeliveryOut:
        """Cancel a pending delivery (reason ``manual``). Raises Conflict unless it is
        pending."""
        return self._send(C.delivery_action(id, "cancel"))

    def retry(self, id: int) -> M.DeliveryOut:
        """Try a failed, skipped or cancelled delivery again, now. Raises Conflict for any
        other state: a sent delivery is never sent twice."""
        return self._send(C.delivery_action(id, "retry"))

    # ------------------------------------------------------------------ reminders

    def create_reminder(
        self,
        *,
        title: str,
        recipients: Sequence[str],
        send_at: datetime,
        message: str | None = None,
        channels: Sequence[str] | None = None,
        subject: str | None = None,
        category: Category | None = None,
    ) -> M.ReminderOut:
        """A one-off reminder: one delivery per recipient id and channel, at ``send_at``
        (aware, not in the past). ``channels`` defaults to ``["email"]`` on the server;
        ``subject`` (``"KIND/KEY"``) must be known. Refusals raise ValidationError."""
        return self._send(
            C.create_reminder(title, recipients, send_at, message, channels, subject, category)
        )

    def get_reminder(self, id: int) -> M.ReminderOut:
        """A reminder with its deliveries and counts (pending, sent, overdue, failed)."""
        return self._send(C.get_reminder(id))

    def update_reminder(
        self,
        id: int,
        *,
        title: str | Unset = UNSET,
        message: str | Unset = UNSET,
        recipients: Sequence[str] | Unset = UNSET,
        send_at: datetime | Unset = UNSET,
        channels: Sequence[str] | Unset = UNSET,
        subject: str | None | Unset = UNSET,
        category: Category | Unset = UNSET,
    ) -> M.ReminderOut:
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
        return self._send(C.update_reminder(id, changes))

    def delete_reminder(self, id: int) -> None:
        """Delete a reminder that has not been sent (its deliveries are cancelled,
        ``manual``). Raises Conflict once it was sent."""
        self._send(C.delete_reminder(id))

    # ------------------------------------------------------------------ rules, simulation

    def rules(self) -> M.RulesOut:
        """The rules the server runs: its rule file's path and timezone, and per rule its
        kind, subject, category, channels, steps, trigger and line."""
        return self._send(C.rules())

    def check_rules(self, rules: str | os.PathLike[str]) -> M.RulesCheckOut:
        """Validate a rule file without loading it: ``rules`` is its YAML text, or a path
        object to read. The answer has ``ok`` and, when not ok, every error with its line
        and field (templates are not checked)."""
        return self._send(C.check_rules(rules))

    def simulate(
        self,
        rules: str | os.PathLike[str],
        timeline: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
        *,
        until: datetime | None = None,
        templates: Mapping[str, str] | None = None,
    ) -> M.SimulateOut:
        """Run a simulation (spec/simulate.md) on the server: ``rules`` as YAML text or a
        path object; ``timeline`` as JSON-lines text, a path object, or an iterable of
        dicts (one per line; datetimes are encoded). With ``templates`` (file name →
        source, e.g. ``{"invoice-due-soon.email.txt": "..."}``) messages are rendered.
        Returns the outcome rows and the warnings (timeline lines that were skipped)."""
        return self._send(C.simulate(rules, timeline, until, templates))

    # ------------------------------------------------------------------ templates, stats

    def list_templates(self) -> TemplateList:
        """Every template name, from the rule file's ``templates/`` folder and the
        database: its parts (channel and extension), where each comes from, the newest
        version."""
        return self._send(C.list_templates())

    def get_template(self, name: str, *, version: int | None = None) -> TemplateOut:
        """A template's parts (body, source, version) as used now, or as they were after
        save ``version``, with its history (which key saved which parts, when)."""
        return self._send(C.get_template(name, version))

    def put_template(self, name: str, parts: Iterable[Mapping[str, str]]) -> SaveOut:
        """Save parts of a template as a new version, each ``{"channel": "email", "ext":
        "txt" or "html", "body": "Subject: ...\\n..."}``; they override the file of the same
        name from then on. A part that does not compile is refused (ValidationError; its
        ``extra["template_error"]`` has the file and line) and nothing is saved. Parts equal
        to the current ones are not saved again (``saved`` False)."""
        return self._send(C.put_template(name, parts))

    def restore_template(self, name: str, version: int) -> SaveOut:
        """Save the parts as they were at ``version`` as a new version."""
        return self._send(C.restore_template(name, version))

    def preview_template(
        self,
        name: str,
        *,
        channel: str,
        ext: Literal["txt", "html"] | None = None,
        subject: str | None = None,
        recipient: str | None = None,
        version: int | None = None,
        body: str | None = None,
        event: Mapping[str, Any] | None = None,
    ) -> PreviewOut:
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
        return self._send(C.preview_template(name, fields))

    def stats(self, *, from_: datetime | None = None, to: datetime | None = None) -> StatsOut:
        """What happened in a period (default: the 7 days before ``to``, default now; at
        most 400 days): outcome counts by outcome, reason, rule, channel and UTC day, and
        the deliveries pending, sending, overdue and failed now."""
        return self._send(C.stats(from_, to))

    # ------------------------------------------------------------------ health

    def healthz(self) -> M.Health:
        """Liveness: the server answers (no API key needed)."""
        return self._send(C.healthz())

    def readyz(self) -> M.Health:
        """Readiness: the database answers and the dispatcher runs. A server that is not
        ready is an answer too (``ok`` False, ``checks`` says why), not an exception."""
        return self._send(C.readyz())
