"""The database schema (SQLAlchemy Core). Alembic migrations must produce exactly this.

Identity columns never hold NULL: SQL treats NULLs as distinct in unique constraints, so a
"no step" / "no subject" / "no recipient" is stored as the empty string and the uniqueness of
a delivery identity is enforced by the database on every backend.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)


class UTCDateTime(TypeDecorator[datetime]):
    """An instant, stored as naive UTC on every backend, read back as aware UTC."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store: instants must be aware")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


# An integer primary key that autoincrements on SQLite (INTEGER) and PostgreSQL (BIGINT).
Id = BigInteger().with_variant(Integer(), "sqlite")

# The search columns' index: trigrams on PostgreSQL (pg_trgm; serves LIKE '%word%'), a
# b-tree on SQLite (a search scans that narrow index instead of the table)
SEARCH_INDEX_PG: dict[str, Any] = {
    "postgresql_using": "gin",
    "postgresql_ops": {"search": "gin_trgm_ops"},
}

recipients = Table(
    "recipients",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("name", Text),
    Column("email", Text),
    Column("phone", Text),
    Column("timezone", String(64)),
    Column("locale", String(35)),
    Column("addresses", JSON, nullable=False, default=dict),
    Column("consent", JSON, nullable=False, default=dict),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # the header search (duly.store.search): id, name, email and phone normalized
    Column("search", Text),
    # trigram index on PostgreSQL (pg_trgm), a b-tree on SQLite: see duly.store.search
    Index("ix_recipients_search", "search", **SEARCH_INDEX_PG),
)

subjects = Table(
    "subjects",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("kind", String(100), nullable=False),
    Column("key", String(200), nullable=False),
    Column("attributes", JSON, nullable=False, default=dict),
    Column("recipients", JSON, nullable=False, default=dict),
    # Counts upserts since creation; change-trigger occurrences are revision numbers, so a
    # deleted subject keeps its row (deleted_at set) and its count continues if it returns.
    Column("revision", Integer, nullable=False, default=0),
    Column("hold_until", UTCDateTime),
    Column("acknowledged", JSON, nullable=False, default=list),
    Column("deleted_at", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # the header search (duly.store.search): kind, key, attribute values and recipients,
    # normalized; NULL for a deleted subject
    Column("search", Text),
    UniqueConstraint("kind", "key"),
    Index("ix_subjects_search", "search", **SEARCH_INDEX_PG),
    # serves the search by key alone (the unique index starts with kind)
    Index("ix_subjects_key", "key"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    # identity (docs/reference/rules.md "Planning"); "" stands for null
    Column("rule", String(200), nullable=False),
    Column("step", String(200), nullable=False, default=""),
    Column("occurrence", String(200), nullable=False),  # JSON text: 0, "evt-1", "2026-…Z"
    Column("subject", String(301), nullable=False, default=""),  # "KIND/KEY"
    Column("recipient", String(200), nullable=False, default=""),
    Column("channel", String(100), nullable=False, default=""),
    # plan
    Column(
        "state", String(16), nullable=False
    ),  # pending|sending|sent|failed|skipped|cancelled|set
    Column("reason", String(32)),
    Column("category", String(16), nullable=False),
    Column("priority", Integer, nullable=False, default=0),
    Column("planned_at", UTCDateTime, nullable=False),  # before windows, holds and retries
    Column("due_at", UTCDateTime, nullable=False),  # when the dispatcher should act
    Column("deadline_at", UTCDateTime),  # never send after this (anchor of a "before" step)
    # dispatch
    Column("attempts", Integer, nullable=False, default=0),
    Column("lease_owner", String(100)),
    Column("lease_until", UTCDateTime),
    Column("last_error", Text),
    Column("error_count", Integer, nullable=False, default=0),
    # content and receipt
    Column("title", Text),
    Column("body_text", Text),
    Column("body_html", Text),
    Column("to_address", Text),
    Column("message_id", String(200)),
    Column("receipt", Text),
    Column("sent_at", UTCDateTime),
    Column("changes", JSON),  # for `set` rows
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("rule", "step", "occurrence", "subject", "recipient", "channel"),
    # serves next_due(): the earliest pending row
    Index("ix_deliveries_state_due", "state", "due_at"),
    # serves claim_due(): due rows of one priority level, oldest first
    Index("ix_deliveries_state_priority_due", "state", "priority", "due_at"),
    # serves re-planning (all rows of one subject) and the subject page
    Index("ix_deliveries_subject", "subject"),
    # serves min_gap and per-recipient history
    Index("ix_deliveries_recipient", "recipient", "rule", "sent_at"),
    # serves the look-up of a delivery by its provider's message id (delivery receipts);
    # a hash index on PostgreSQL: equality is all it serves, and a b-tree would refuse a
    # receipt longer than ~2.7 kB (an SMTP server's reply is the receipt, any length)
    Index("ix_deliveries_receipt", "receipt", postgresql_using="hash"),
    # serves the header search by Message-ID
    Index("ix_deliveries_message_id", "message_id"),
    # ids appear in the API, the outbox and links: never reuse one on SQLite
    sqlite_autoincrement=True,
)

# Every attempt and every outcome of a delivery, append-only: what simulate prints and what
# the API shows as history.
delivery_log = Table(
    "delivery_log",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column(
        "delivery_id",
        Id,
        ForeignKey("deliveries.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("at", UTCDateTime, nullable=False),
    Column("kind", String(16), nullable=False),  # attempt | outcome
    Column("outcome", String(16)),
    Column("reason", String(32)),
    Column("attempt", Integer),
    Column("error", Text),
    Column("receipt", Text),
    Column("title", Text),
    Column("message_id", String(200)),
    Column("planned_at", UTCDateTime),  # the delivery's planned time when this was recorded
    # serves history of one delivery
    Index("ix_delivery_log_delivery_id", "delivery_id"),
    # serves the outcome feed (simulate, stats) ordered by time
    Index("ix_delivery_log_at", "at"),
    sqlite_autoincrement=True,
)

events = Table(
    "events",
    metadata,
    Column("id", String(200), primary_key=True),  # the app's idempotency key
    Column("name", String(200), nullable=False),
    Column("subject", String(301), nullable=False),
    Column("data", JSON, nullable=False, default=dict),
    Column("received_at", UTCDateTime, nullable=False),
)

# Problems with one subject's data (malformed date, unknown timezone, failing expression):
# recorded, logged, shown in the API; they never stop other subjects.
subject_errors = Table(
    "subject_errors",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("subject", String(301), nullable=False),
    Column("rule", String(200)),
    Column("field", String(200)),
    Column("message", Text, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Index("ix_subject_errors_subject", "subject"),
)

# Liveness of dispatchers (readyz, several workers)
workers = Table(
    "workers",
    metadata,
    Column("id", String(100), primary_key=True),
    Column("host", String(200)),
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
)


# API keys: only a SHA-256 of the key is kept (keys are 256-bit random tokens, so a slow
# password hash adds nothing); the prefix identifies a key in lists and logs.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_used_at", UTCDateTime),
    Column("revoked_at", UTCDateTime),
    sqlite_autoincrement=True,
)

# Templates kept in the database: every save is a new version; the newest
# version of (name, channel, ext) overrides the file of the same name.
templates = Table(
    "templates",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("channel", String(100), nullable=False),
    Column("ext", String(8), nullable=False),  # txt | html
    Column("version", Integer, nullable=False),
    Column("body", Text, nullable=False),
    Column("author", String(200)),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("name", "channel", "ext", "version"),
    sqlite_autoincrement=True,
)

# One-off reminders: each becomes deliveries of the reserved rule
# "@reminder" with occurrence = the reminder's id.
reminders = Table(
    "reminders",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("title", Text, nullable=False),
    Column("message", Text, nullable=False),
    Column("send_at", UTCDateTime, nullable=False),
    Column("channels", JSON, nullable=False),
    Column("recipients", JSON, nullable=False),
    Column("subject", String(301)),
    Column("category", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("deleted_at", UTCDateTime),
    # serves the subject page's list of its reminders
    Index("ix_reminders_subject", "subject"),
    sqlite_autoincrement=True,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


# Outgoing webhooks (docs/reference/webhooks.md): an outbox. An event is written in the
# transaction of the change it reports and stays pending until the target answers 2xx; it fails for good on 410,
# on a refused (private) target, or when its retries are spent. duly.delivery.webhooks owns both.
webhook_events = Table(
    "webhook_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    # the webhook-id header: the same on every retry, so the receiver can drop duplicates
    Column("msg_id", String(64), nullable=False),
    Column("type", String(200), nullable=False),  # subject.updated, delivery.sent, action …
    Column("payload", JSON, nullable=False),  # the body, sent as compact JSON
    Column("url", Text, nullable=False),
    Column("secret_env", String(200)),  # the variable holding the signing secret, never it
    Column("state", String(16), nullable=False),  # pending | sent | failed
    Column("attempts", Integer, nullable=False, default=0),
    # when to try next; while a sender holds the event, when its lease runs out
    Column("next_at", UTCDateTime, nullable=False),
    Column("lease_owner", String(100)),
    Column("last_status", Integer),
    Column("last_error", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime),
    # serves the sender's claim and next_due(): pending events by next_at
    Index("ix_webhook_events_state_next_at", "state", "next_at"),
    sqlite_autoincrement=True,
)

# Every HTTP attempt of a webhook event, append-only: its status code or error.
webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column(
        "event_id",
        Id,
        ForeignKey("webhook_events.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("attempt", Integer, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("status_code", Integer),  # None: no answer (refused, timeout, connection error)
    Column("error", Text),
    Column("duration_ms", Integer, nullable=False),
    # serves the attempts of one event (API, tests)
    Index("ix_webhook_attempts_event_id", "event_id"),
    sqlite_autoincrement=True,
)


# Addresses that failed permanently (SMTP 5xx on RCPT, an invalid number): later deliveries
# to them are skipped `suppressed` until the suppression is cleared through the API.
suppressions = Table(
    "suppressions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("address", String(320), nullable=False),  # lower-cased
    Column("channel", String(100), nullable=False),  # the channel that failed
    Column("reason", Text, nullable=False),
    Column("delivery_id", Id),
    Column("created_at", UTCDateTime, nullable=False),
    Column("cleared_at", UTCDateTime),
    # serves the dispatcher's look-up of active suppressions by address
    Index("ix_suppressions_address", "address"),
    sqlite_autoincrement=True,
)


# Values duly makes once and every process shares, by key. ``ack_secret``: the secret that
# signs acknowledge links when DULY_SECRET_KEY is not set (duly.delivery.ack).
settings = Table(
    "settings",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("value", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)


# The inbox (in-app notifications): a delivery on an ``inbox`` channel is an item of its
# recipient's inbox; a row here says when the recipient read it (no row: unread).
# duly.engine.inbox owns it.
inbox_reads = Table(
    "inbox_reads",
    metadata,
    Column(
        "delivery_id",
        Id,
        ForeignKey("deliveries.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    ),
    Column("read_at", UTCDateTime, nullable=False),
)


# People who sign in to the web UI (`duly users create`). Only an argon2 hash of the
# password is kept. ``role``: admin (may act) or viewer (reads only).
users = Table(
    "users",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("username", String(100), nullable=False, unique=True),
    Column("password_hash", Text, nullable=False),
    Column("role", String(16), nullable=False),
    Column("timezone", String(64)),  # the zone pages show times in (None: the browser's)
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("last_login_at", UTCDateTime),
    sqlite_autoincrement=True,
)


# Signed-in sessions of the web UI (duly.web.users owns it). The cookie holds a random token;
# only its SHA-256 is kept here, so a copy of the database does not sign anyone in. Every
# request looks its session up by ``id``: signing out, a password or role change and
# deleting the user delete the rows, and the copied cookie stops working at once.
ui_sessions = Table(
    "ui_sessions",
    metadata,
    Column("id", String(64), primary_key=True),  # hex SHA-256 of the cookie's token
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_seen_at", UTCDateTime, nullable=False),  # idle sessions end (sliding)
    # serves "end every session of this user" (password or role change)
    Index("ix_ui_sessions_user_id", "user_id"),
)

# Sign-in attempts that count against the web UI's limits (duly.web.users.SignInLimits):
# one row per limited key ("account:NAME", "address:IP", "device:ID") and attempt, written
# before the password is checked and deleted when it was right, so what remains are the
# failures and the attempts in flight.
sign_in_attempts = Table(
    "sign_in_attempts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("key", String(200), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    # serves "attempts for this key since the window's start", counted before each check
    Index("ix_sign_in_attempts_key_at", "key", "at"),
    # serves the housekeeping "delete attempts older than the window"
    Index("ix_sign_in_attempts_at", "at"),
    sqlite_autoincrement=True,
)


# What providers said about a delivery after accepting it (status callbacks, event webhooks:
# duly.engine.receipts): one row per (provider, message id, status, time), so a callback
# sent twice is recorded once. ``delivery_id`` is None when no delivery has that provider
# message id (kept, counted as unmatched). ``status``: accepted | delivered | read |
# undelivered | bounced | complained; ``hard``: a permanent bounce.
delivery_receipts = Table(
    "delivery_receipts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("delivery_id", Id, ForeignKey("deliveries.id", ondelete="CASCADE")),
    Column("provider", String(32), nullable=False),
    Column("provider_message_id", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("hard", Boolean, nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("detail", Text),
    UniqueConstraint("provider", "provider_message_id", "status", "occurred_at"),
    # serves a delivery's receipts (API, delivery page)
    Index("ix_delivery_receipts_delivery_id", "delivery_id"),
    # serves counts since a time (stats)
    Index("ix_delivery_receipts_received_at", "received_at"),
    sqlite_autoincrement=True,
)

# When an address last wrote in on a channel (inbound SMS / WhatsApp): WhatsApp allows
# free-form text only within 24 hours of that.
inbound_addresses = Table(
    "inbound_addresses",
    metadata,
    Column("address", String(320), primary_key=True),
    Column("channel", String(100), primary_key=True),
    Column("last_at", UTCDateTime, nullable=False),
)

# The audit trail (duly.store.audit): one row per action a person or an API key took —
# who (``actor``: a username, "api key NAME" or "cli"), what (``action``, ``summary``), on
# which object (``object_kind``/``object_id``; ``subject`` is the KIND/KEY the object
# belongs to, so a subject's page lists the actions on its deliveries too), the state
# before and after where it matters (bounded JSON), and the request it came with.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(220), nullable=False),
    Column("action", String(40), nullable=False),
    Column("object_kind", String(20), nullable=False),
    Column("object_id", String(400), nullable=False),
    Column("subject", String(301)),
    Column("summary", String(500), nullable=False),
    Column("before", Text),
    Column("after", Text),
    Column("request_id", String(64)),
    # serves an object's history (delivery, recipient, template, user pages)
    Index("ix_audit_log_object_kind_object_id", "object_kind", "object_id"),
    # serves a subject's history
    Index("ix_audit_log_subject", "subject"),
    # serve the audit page's filters
    Index("ix_audit_log_actor", "actor"),
    Index("ix_audit_log_at", "at"),
    sqlite_autoincrement=True,
)
