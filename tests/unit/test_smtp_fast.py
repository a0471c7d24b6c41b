"""The SMTP channel's fast writer writes exactly what the email package writes.

For every generated message the fast writer accepts, its bytes must equal the email
package's (same Date); a message the package refuses must not be accepted by the fast
writer; and the usual message (ASCII headers, short text lines) takes the fast path.
"""

from __future__ import annotations

import email
import email.policy

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from duly.delivery.channels.base import Message
from duly.delivery.channels.smtp import SmtpChannel

DATE = "Sat, 05 Dec 2026 05:19:43 +0000"
LIST_UNSUB = "<https://duly.test/u/abc?x=1>, <mailto:unsubscribe@duly.test?subject=u>"


def channel(from_: str = "Duly <reminders@duly.test>") -> SmtpChannel:
    return SmtpChannel("email", url="smtp://127.0.0.1:1", from_=from_)


def usual(**kw: object) -> Message:
    base: dict[str, object] = {
        "to": "r1@bench.test",
        "title": "Reminder: invoice INV-0001 is due on 2026-01-06 (first)",
        "text": "Hello Recipient 1,\n\nInvoice INV-0001 is due tomorrow.\n-- \nduly\n",
        "html": None,
        "message_id": "0123456789abcdef0123456789abcdef",
        "recipient_id": "r1",
        "recipient_name": "Recipient 1",
        "headers": {
            "X-Duly-Delivery": "12",
            "X-Duly-Rule": "invoice-due",
            "X-Duly-Step": "",
            "X-Duly-Subject": "invoice/INV-0001",
            "X-Duly-Occurrence": "2026-01-06T08:00:00+00:00",
            "List-Unsubscribe": LIST_UNSUB,
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    }
    base.update(kw)
    return Message(**base)  # type: ignore[arg-type]


def outcome(ch: SmtpChannel, m: Message) -> tuple[bytes | None, bytes | str]:
    """(the fast writer's bytes or None, the package's bytes or its error's type)."""
    try:
        slow: bytes | str = ch.flatten(m, DATE)
    except (ValueError, TypeError, email.errors.MessageError) as exc:
        slow = type(exc).__name__
    try:
        fast = ch.flatten_fast(m, DATE)
    except ValueError as exc:
        assert isinstance(slow, str), f"the fast writer refused what the package wrote: {exc}"
        return None, slow
    return fast, slow


@pytest.mark.parametrize(
    "m",
    [
        usual(),
        usual(html="<p>Hello Recipient 1,</p>\n<p>Invoice INV-0001 is due.</p>", text=None),
        usual(text="Bonjour Récipient, votre facture arrive à échéance.\n"),
        usual(title=None, recipient_name=None, headers={}),
        usual(text="", title="x"),
        usual(text="a\r\nb\rc\n\nd"),
    ],
)
def test_usual_messages_take_the_fast_path_and_match(m: Message) -> None:
    ch = channel()
    fast, slow = outcome(ch, m)
    assert fast is not None
    assert fast == slow
    parsed = email.message_from_bytes(fast, policy=email.policy.default)
    assert parsed["Message-ID"] == "<0123456789abcdef0123456789abcdef@duly.test>"


@pytest.mark.parametrize(
    "m",
    [
        usual(title="Réunion demain"),  # encoded word
        usual(recipient_name="O'Brien, Pat"),  # quoted display name
        usual(title="x" * 90),  # folded
        usual(text="y" * 100),  # quoted-printable
        usual(html="<p>x</p>"),  # multipart/alternative
        usual(title="=?utf-8?q?abc?="),  # would be decoded and re-encoded
        usual(to="a..b@bench.test"),
    ],
)
def test_other_messages_are_left_to_the_email_package(m: Message) -> None:
    fast, _ = outcome(channel(), m)
    assert fast is None


ALPHABET = st.sampled_from(
    list("aZ09 .,;:<>@()[]\"'\\=?-_/!#%&*+~`|{}^$\t")
    + ["é", "ü", "\u2028", "\x00", "\x7f", "\r", "\n", "  ", "=?", "?="]
)
words = st.lists(ALPHABET, max_size=30).map("".join)
short_ascii = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
texts = st.one_of(
    st.none(),
    st.lists(st.one_of(words, short_ascii, st.just("x" * 78), st.just("é" * 39)), max_size=4).map(
        "\n".join
    ),
)
addresses = st.one_of(
    st.just("r1@bench.test"),
    st.builds(lambda a, b: f"{a}@{b}", short_ascii.filter(bool), short_ascii.filter(bool)),
    st.builds(lambda a: f"{a}@x.test", words.filter(bool)),
)
header_names = st.sampled_from(["X-Duly-Rule", "X-A", "List-Unsubscribe", "X_Bad", "X Bad"])


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    to=addresses,
    name=st.one_of(st.none(), words, short_ascii),
    title=st.one_of(st.none(), words, short_ascii),
    text=texts,
    html=texts,
    headers=st.dictionaries(header_names, st.one_of(words, short_ascii), max_size=3),
    mid=st.sampled_from(["0123456789abcdef", "a.b-c_d@example.org", "x@[192.0.2.1]", "a/b"]),
)
def test_the_fast_writer_writes_what_the_email_package_writes(
    to: str,
    name: str | None,
    title: str | None,
    text: str | None,
    html: str | None,
    headers: dict[str, str],
    mid: str,
) -> None:
    m = Message(
        to=to,
        title=title,
        text=text,
        html=html,
        message_id=mid,
        recipient_id="r",
        recipient_name=name,
        headers=headers,
    )
    fast, slow = outcome(channel(), m)
    event("fast writer" if fast is not None else "email package")
    if fast is not None:
        assert fast == slow


printable = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
spaced = st.lists(printable, min_size=1, max_size=8).map(" ".join)
body_lines = st.lists(
    st.one_of(
        spaced,
        st.text(st.characters(min_codepoint=32, max_codepoint=0x24F), max_size=50),
        st.just(""),
    ),
    max_size=6,
).map("\n".join)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    local=st.from_regex(
        r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,10}(\.[A-Za-z0-9_-]{1,5})?", fullmatch=True
    ),
    name=st.one_of(
        st.none(), st.from_regex(r"[A-Za-z0-9]{1,8}( [A-Za-z0-9]{1,8}){0,2}", fullmatch=True)
    ),
    title=st.one_of(st.none(), spaced),
    body=body_lines,
    html=st.booleans(),
    value=spaced,
)
def test_near_usual_messages_match_too(
    local: str, name: str | None, title: str | None, body: str, html: bool, value: str
) -> None:
    m = usual(
        to=f"{local}@bench.test",
        recipient_name=name,
        title=title,
        text=None if html else body,
        html=body if html else None,
        headers={
            "X-Duly-Rule": value,
            "X-Duly-Subject": value[:20],
            "List-Unsubscribe": LIST_UNSUB,
        },
    )
    fast, slow = outcome(channel(), m)
    event("fast writer" if fast is not None else "email package")
    if fast is not None:
        assert fast == slow
