"""Rendering a delivery's message: the template's context, one round of renders for the
deliveries of a batch (through the render processes when there are several), and the
message with its headers (Message-ID, X-Duly-*, List-Unsubscribe on reminder and
promotional email). A render that fails or goes over a limit fails only its own delivery
(``render_error``); a one-off reminder carries its own text.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from duly.core import planner
from duly.core.model import EMAIL_API_TYPES, Reason
from duly.delivery.channels.base import Message
from duly.engine.dispatch.work import _Work

WHATSAPP_TYPES = ("twilio-whatsapp", "whatsapp-cloud")
# how long a delivery waits when no render process could be started
RENDER_RETRY_SECONDS = 10

log = logging.getLogger("duly.dispatcher")


class RenderingMixin:
    """``Dispatcher``'s rendering (mixed into it: uses its renderer, channels, preferences
    and Message-IDs)."""

    def _render_all(self, works: list[_Work], now: datetime) -> list[_Work]:
        """Render the messages of ``works`` (their address and zone decided) in one batch
        through the render processes; returns those ready to send. A render that fails or
        goes over a limit fails only its own delivery."""
        reqs: list[Any] = []
        need: list[_Work] = []
        ready: list[_Work] = []
        for w in works:
            req = self._render_request(w, now, w.tzname or "UTC", None)
            if req is None:
                if self._rendered(w, now, w.address or "", None) == "send":
                    ready.append(w)
            else:
                reqs.append(req)
                need.append(w)
        if not need:
            return ready
        many = getattr(self.renderer, "render_many", None)
        outs: list[Any]
        if many is not None and len(reqs) > 1:
            try:
                outs = list(many(reqs))
            except Exception as exc:  # the whole batch failed to render: each row says so
                log.exception("rendering a batch of %d messages failed", len(reqs))
                outs = [exc] * len(reqs)
        else:
            outs = []
            for req in reqs:
                try:
                    outs.append(self.renderer.render(**req))  # type: ignore[union-attr]
                except Exception as exc:
                    outs.append(exc)
        for w, req, out in zip(need, reqs, outs, strict=True):
            if self._rendered(w, now, w.address or "", out, req) == "send":
                ready.append(w)
        return ready

    def _render(
        self,
        w: _Work,
        now: datetime,
        address: str,
        tzname: str,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """Render one message (a batched group's): "send", or "" when it failed."""
        req = self._render_request(w, now, tzname, extra)
        if req is None:
            return self._rendered(w, now, address, None)
        try:
            out: Any = self.renderer.render(**req)  # type: ignore[union-attr]
        except Exception as exc:  # RenderError, or anything a template can raise
            out = exc
        return self._rendered(w, now, address, out, req)

    def _render_request(
        self, w: _Work, now: datetime, tzname: str, extra: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """The renderer's arguments for this delivery; None when nothing is rendered (a
        one-off reminder carries its own text, or there is no renderer)."""
        rule, step, ident = w.rule, w.step, w.row.identity
        assert rule is not None and w.recipient is not None
        if w.reminder is not None or self.renderer is None:
            return None
        ctx = self._context(w, now, tzname)
        if extra:
            ctx.update(extra)
        return {
            "name": planner.effective(step, rule, "template") or rule.name,
            "channel": ident.channel or "email",
            "context": ctx,
            "recipient": w.recipient,
            "timezone": tzname,
            "locale": w.recipient.locale or "en",
        }

    def _rendered(
        self, w: _Work, now: datetime, address: str, out: Any, req: dict[str, Any] | None = None
    ) -> str:
        """Build the message from a render's result (None: nothing rendered), or record the
        render's failure. Returns "send" or ""."""
        rule, ident = w.rule, w.row.identity
        assert rule is not None and w.recipient is not None
        mid = w.row.message_id or self.message_ids(ident)
        whatsapp = None
        if req is not None and out is not None and not isinstance(out, BaseException):
            try:
                whatsapp = self._whatsapp(w, req)
            except Exception as exc:  # the variables failed to render, as a template can
                out = exc
        title = text = html = None
        if w.reminder is not None:
            title, text = w.reminder["title"], w.reminder["message"]
        elif isinstance(out, BaseException) and getattr(out, "kind", None) == "unavailable":
            # no render process could be started (a loaded machine, a process limit): the
            # template and data are not at fault, so the delivery waits and tries again;
            # no attempt is spent, and grace still skips it if it waits too long
            log.warning("delivery %s: %s; retrying in %d s", w.row.id, out, RENDER_RETRY_SECONDS)
            self._defer(w, now, now + timedelta(seconds=RENDER_RETRY_SECONDS), last_error=str(out))
            return ""
        elif isinstance(out, BaseException):
            self._final(
                w,
                now,
                "failed",
                Reason.render_error,
                attempts=w.row.attempts + 1,
                last_error=str(out),
                message_id=mid,
            )
            w.logs.insert(0, self._attempt_log(w, now, str(out)))
            return ""
        elif out is not None:
            title, text, html = out.title, out.text, out.html
        w.message = Message(
            to=address,
            title=title,
            text=text,
            html=html,
            message_id=mid,
            recipient_id=w.recipient.id,
            recipient_name=w.recipient.name,
            headers={
                "X-Duly-Delivery": str(w.row.id),
                "X-Duly-Rule": rule.name,
                "X-Duly-Step": ident.step or "",
                "X-Duly-Subject": ident.subject or "",
                "X-Duly-Occurrence": str(ident.occurrence),
                **self._unsubscribe_headers(w, rule.name, ident.channel or ""),
            },
            category=w.row.category,
            whatsapp=whatsapp,
        )
        return "send"

    def _whatsapp(self, w: _Work, req: dict[str, Any]) -> dict[str, Any] | None:
        """The rule's or step's ``whatsapp:`` template for a WhatsApp channel, its variables
        rendered with the message's context; None for other channels or without one."""
        assert w.rule is not None
        block = planner.effective(w.step, w.rule, "whatsapp")
        chan = self.channels.get(w.row.identity.channel or "")
        if block is None or getattr(chan, "type", None) not in WHATSAPP_TYPES:
            return None
        variables: dict[str, str] = {}
        if block.variables:
            variables = self.renderer.render_strings(  # type: ignore[union-attr]
                dict(block.variables),
                req["context"],
                recipient=req["recipient"],
                timezone=req["timezone"],
                locale=req["locale"],
                what=f"{w.rule.name}.whatsapp.variables",
            )
        return {
            "content_sid": block.content_sid,
            "template": block.template,
            "language": block.language,
            "freeform": block.freeform,
            "variables": variables,
        }

    def _unsubscribe_headers(self, w: _Work, rule: str, channel: str) -> dict[str, str]:
        """List-Unsubscribe and List-Unsubscribe-Post (RFC 8058) on reminder and promotional
        email; none on transactional mail or other channels."""
        chan = self.channels.get(channel)
        is_email = channel == "email" or getattr(chan, "type", None) in (
            "smtp",
            "outbox",
            *EMAIL_API_TYPES,
        )
        if self.preferences is None or not is_email or w.recipient is None:
            return {}
        return dict(
            self.preferences.headers(w.recipient.id, category=str(w.row.category), rule=rule)
        )

    def _context(self, w: _Work, now: datetime, tzname: str) -> dict[str, Any]:
        s = w.subject
        return {
            "subject": planner.subject_dict(s) if s else None,
            "attributes": s.attributes if s else {},
            "recipient": planner.recipient_dict(w.recipient),
            "event": w.event,
            "rule": {"name": w.rule.name if w.rule else None, "category": w.row.category},
            "step": {"name": w.row.identity.step, "occurrence": w.row.identity.occurrence},
            "now": now,
            "timezone": tzname,
            "delivery": {"id": w.row.id, "planned_at": w.row.planned_at, "due_at": w.row.due_at},
            **(w.collected or {}),
            "collected": w.collected or {},
        }
