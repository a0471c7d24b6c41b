"""The webhook sender: claims due events from the outbox, POSTs them signed, records every
attempt. It only loops; each state change is one short transaction in ``outbox``.

Outcome of an attempt (Standard Webhooks' "delivery success and failure"):

- ``2xx``: sent.
- ``410 Gone``: failed at once (the receiver wants no more).
- A refused target (private address, see ``targets``) or an unusable secret: failed at once.
- Anything else — other ``3xx``/``4xx``/``5xx`` (redirects are not followed), timeouts,
  connection errors, a name that does not resolve: retried after ``RetryPolicy.delay``
  (longer if the answer had ``Retry-After``), until ``RetryPolicy.attempts`` attempts in
  all; then failed.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx

from duly import __version__
from duly.core.clock import Clock
from duly.core.model import RuleFile
from duly.delivery.webhooks import outbox
from duly.delivery.webhooks.outbox import Attempt, Claimed
from duly.delivery.webhooks.signing import SecretError, decode_secret, signed_headers
from duly.delivery.webhooks.targets import Resolver, TargetRefused, pin, system_resolver
from duly.store.db import Engine, write_transaction

__all__ = ["DEFAULT_TIMEOUT", "RetryPolicy", "WebhookSender"]

log = logging.getLogger("duly.webhooks")

# Standard Webhooks recommends 15-30 s for the receiver to answer.
DEFAULT_TIMEOUT = httpx.Timeout(15.0, connect=5.0)
# Kept from an error answer's body for last_error: enough to read, never a whole page.
_BODY_SNIPPET = 300


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to try again: ``first`` × ``factor``^(n-1) after the n-th failed attempt, times
    a random factor in [1 - jitter, 1 + jitter]; failed after ``attempts`` attempts in all.
    The defaults (30 s, 1 min, 2 min … about 32 min) give up about an hour after the first
    try. A ``Retry-After`` answer waits at least that long, up to ``max_retry_after``."""

    first: timedelta = timedelta(seconds=30)
    factor: float = 2.0
    attempts: int = 8
    jitter: float = 0.1
    max_retry_after: timedelta = timedelta(hours=1)

    def delay(
        self, attempt: int, rng: random.Random, retry_after: float | None = None
    ) -> timedelta:
        base = self.first.total_seconds() * self.factor ** (attempt - 1)
        wait = base * rng.uniform(1 - self.jitter, 1 + self.jitter)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after.total_seconds()))
        return timedelta(seconds=wait)


class WebhookSender:
    """Sends the outbox. ``run_forever`` in a thread of ``duly serve`` / ``duly worker``;
    ``run_once`` in tests and simulations.

    ``client`` is an ``httpx.Client`` to send with (tests pass one with a mock transport);
    by default one is made that ignores proxy variables (the address check must see the
    real destination) and never follows redirects. ``workers`` bounds the requests in
    flight; ``resolver`` looks hosts up for the private-address check.
    """

    def __init__(
        self,
        db: Engine,
        rules: RuleFile,
        clock: Clock,
        *,
        client: httpx.Client | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, shared safely
        workers: int = 4,
        lease: timedelta = timedelta(minutes=5),
        owner: str | None = None,
        resolver: Resolver = system_resolver,
        environ: Mapping[str, str] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.db = db
        self.rules = rules
        self.clock = clock
        self.timeout = timeout
        self.retry = retry
        self.workers = max(1, workers)
        self.batch = self.workers * 4
        self.lease = lease
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.resolver = resolver
        self.environ = environ if environ is not None else os.environ
        self.rng = rng or random.Random()
        self._own_client = client is None
        self.client = client or httpx.Client(
            timeout=timeout, follow_redirects=False, trust_env=False
        )
        self._pool = ThreadPoolExecutor(self.workers) if self.workers > 1 else None
        self._wake = threading.Event()
        self._rng_lock = threading.Lock()

    # ------------------------------------------------------------------ loop

    def wake(self) -> None:
        """Look for due events now (new ones were committed)."""
        self._wake.set()

    def next_due(self) -> datetime | None:
        with self.db.connect() as conn:
            return outbox.next_due(conn)

    def run_forever(self, stop_event: threading.Event, *, poll: float = 1.0) -> None:
        """Send due events until ``stop_event`` is set (then finish the requests in flight;
        claimed events not yet sent go back when their lease runs out). Between rounds it
        sleeps until the next due event, at most ``poll`` seconds (new events from other
        processes), or until :meth:`wake`."""
        log.info("webhook sender %s started", self.owner)
        while not stop_event.is_set():
            try:
                self.run_once(stop_event)
                nxt = self.next_due()
            except Exception:  # the loop must survive a database hiccup
                log.exception("webhook sender cycle failed; retrying in 1 s")
                stop_event.wait(1.0)
                continue
            wait = poll
            if nxt is not None:
                wait = min(poll, max(0.0, (nxt - self.clock.now()).total_seconds()))
            if wait > 0:
                self._wake.wait(wait)
            self._wake.clear()
        log.info("webhook sender %s stopped", self.owner)

    def run_once(self, stop_event: threading.Event | None = None) -> int:
        """Attempt every event due now, once each. Returns the number of attempts."""
        total = 0
        while stop_event is None or not stop_event.is_set():
            now = self.clock.now()
            with write_transaction(self.db) as conn:
                claimed = outbox.claim_due(conn, now, self.owner, self.lease, self.batch)
            if not claimed:
                break
            if self._pool is not None and len(claimed) > 1:
                list(self._pool.map(self._attempt_and_record, claimed))
            else:
                for ev in claimed:
                    self._attempt_and_record(ev)
            total += len(claimed)
            if len(claimed) < self.batch:
                break
        return total

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._own_client:
            self.client.close()

    # ------------------------------------------------------------------ one event

    def _attempt_and_record(self, ev: Claimed) -> None:
        try:
            result = self.attempt(ev)
        except Exception as exc:  # a bug here must not kill the loop: the event is retried
            log.exception("webhook event %s: attempt raised", ev.id)
            result = self._outcome(ev, None, f"internal error: {exc!r}", 0, permanent=False)
        now = self.clock.now()
        with write_transaction(self.db) as conn:
            kept = outbox.record(conn, ev, result, self.owner, now)
        if not kept:
            log.warning("webhook event %s: lease ran out; another sender has it", ev.id)
        elif result.state == "sent":
            log.info("webhook event %s (%s) sent, attempt %s", ev.id, ev.type, ev.attempt)
        else:
            log.warning(
                "webhook event %s (%s) attempt %s failed (%s): %s",
                ev.id,
                ev.type,
                ev.attempt,
                "will retry" if result.state == "pending" else "gave up",
                result.error,
            )

    def attempt(self, ev: Claimed) -> Attempt:
        """One signed POST of ``ev``; never raises for the receiver's or the network's
        faults (they are the result)."""
        t0 = time.perf_counter()

        def ms() -> int:
            return int((time.perf_counter() - t0) * 1000)

        var = ev.secret_env
        secret = self.environ.get(var) if var else None
        if not secret:
            why = f"environment variable {var} is not set" if var else "no secret configured"
            return self._outcome(ev, None, f"cannot sign: {why}", ms(), permanent=True)
        try:
            key = decode_secret(secret)
        except SecretError as exc:
            return self._outcome(ev, None, f"cannot sign: {var}: {exc}", ms(), permanent=True)
        try:
            target = pin(
                ev.url, allow_private=self.rules.allow_private_targets, resolve=self.resolver
            )
        except TargetRefused as exc:
            return self._outcome(ev, None, str(exc), ms(), permanent=True)
        except OSError as exc:
            host = httpx.URL(ev.url).host
            return self._outcome(ev, None, f"cannot resolve {host}: {exc}", ms())
        body = json.dumps(ev.payload, separators=(",", ":"), ensure_ascii=False).encode()
        timestamp = int(self.clock.now().timestamp())
        headers = {
            "content-type": "application/json",
            "user-agent": f"duly/{__version__}",
            **signed_headers(key, ev.msg_id, timestamp, body),
        }
        if target.host_header is not None:
            headers["host"] = target.host_header
        extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else None
        request = self.client.build_request(
            "POST",
            target.url,
            content=body,
            headers=headers,
            timeout=self.timeout,
            extensions=extensions,
        )
        try:
            response = self.client.send(request, stream=True, follow_redirects=False)
            try:
                snippet = _read_some(response)
            finally:
                response.close()
        except httpx.TimeoutException as exc:
            return self._outcome(ev, None, f"timed out ({type(exc).__name__})", ms())
        except httpx.HTTPError as exc:
            return self._outcome(ev, None, f"{type(exc).__name__}: {exc}", ms())
        code = response.status_code
        if 200 <= code < 300:
            return Attempt("sent", code, None, ms())
        error = f"HTTP {code}" + (f": {snippet}" if snippet else "")
        if 300 <= code < 400:
            error = f"HTTP {code}: redirects are not followed; point the webhook at the new URL"
        if code == 410:
            return self._outcome(ev, code, f"{error} (the receiver wants no more)", ms(), True)
        retry_after = _retry_after(response.headers.get("retry-after"))
        return self._outcome(ev, code, error, ms(), retry_after=retry_after)

    def _outcome(
        self,
        ev: Claimed,
        code: int | None,
        error: str,
        duration_ms: int,
        permanent: bool = False,
        *,
        retry_after: float | None = None,
    ) -> Attempt:
        if permanent:
            return Attempt("failed", code, error, duration_ms)
        if ev.attempt >= self.retry.attempts:
            return Attempt(
                "failed", code, f"{error} (gave up after {ev.attempt} attempts)", duration_ms
            )
        with self._rng_lock:
            wait = self.retry.delay(ev.attempt, self.rng, retry_after)
        return Attempt("pending", code, error, duration_ms, next_at=self.clock.now() + wait)


def _read_some(response: httpx.Response) -> str:
    """The start of the answer's body, for last_error (never the whole of a large one)."""
    data = b""
    for chunk in response.iter_bytes():
        data += chunk
        if len(data) >= _BODY_SNIPPET:
            break
    text = data[:_BODY_SNIPPET].decode("utf-8", "replace")
    return " ".join(text.split())


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (the delta form; an HTTP date is ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
