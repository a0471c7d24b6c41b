"""The apprise channel, through the real Apprise package, to its generic ``json://`` and
``form://`` services aimed at a real HTTP server on 127.0.0.1 that records what arrives
(tests/fakes/http_recorder.py)."""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from duly.core.model import ChannelConfig
from duly.delivery.channels import ChannelConfigError, build_channel
from duly.delivery.channels.apprise import AppriseChannel
from duly.delivery.channels.base import DeliveryError, Message
from fakes.http_recorder import HttpRecorder  # tests/ is on sys.path (conftest.py)


def message(**kw: Any) -> Message:
    fields: dict[str, Any] = {
        "to": "ops",
        "title": "Job 17 is overdue",
        "text": "Job 17 was due yesterday.",
        "html": None,
        "message_id": "d-1@duly.test",
        "recipient_id": "r1",
    }
    fields.update(kw)
    return Message(**fields)


@pytest.fixture
def server() -> Iterator[HttpRecorder]:
    with HttpRecorder() as recorder:
        yield recorder


def channel(url: str, **options: Any) -> AppriseChannel:
    config = {"url": url, "allow_private": True, **options}
    built = build_channel(
        ChannelConfig("chat", "apprise", {k: v for k, v in config.items() if v is not None})
    )
    assert isinstance(built, AppriseChannel)
    return built


def send_error(ch: AppriseChannel, msg: Message | None = None) -> DeliveryError:
    with pytest.raises(DeliveryError) as info:
        ch.send(msg or message())
    return info.value


def json_url(server: HttpRecorder, path: str = "/notify") -> str:
    return server.url.replace("http://", "json://") + path


# --------------------------------------------------------------------------- sending


def test_json_target_gets_title_and_text(server: HttpRecorder) -> None:
    ch = channel(json_url(server))
    receipt = ch.send(message())
    ch.close()
    [req] = server.requests
    assert (req.method, req.path) == ("POST", "/notify")
    body = req.json()
    assert body["title"] == "Job 17 is overdue"
    assert body["message"] == "Job 17 was due yesterday."
    assert receipt.detail == "JSON"


def test_form_target_gets_form_fields(server: HttpRecorder) -> None:
    ch = channel(server.url.replace("http://", "form://") + "/form")
    ch.send(message())
    ch.close()
    [req] = server.requests
    assert req.headers["content-type"] == "application/x-www-form-urlencoded"
    form = parse_qs(req.body.decode())
    assert form["title"] == ["Job 17 is overdue"]
    assert form["message"] == ["Job 17 was due yesterday."]


def test_html_only_is_sent_and_the_title_alone_is_the_body(server: HttpRecorder) -> None:
    ch = channel(json_url(server))
    ch.send(message(text=None, html="<p>Job <b>17</b> is overdue</p>"))
    ch.send(message(text=None, html=None, title="Just a title"))
    ch.close()
    first, second = (r.json() for r in server.requests)
    assert "17" in first["message"]
    assert second["message"] == "Just a title" and not second["title"]


def test_nothing_to_send_fails_without_a_request(server: HttpRecorder) -> None:
    ch = channel(json_url(server))
    err = send_error(ch, message(text=" ", html=None, title=None))
    ch.close()
    assert err.permanent and server.requests == []


# --------------------------------------------------------------------------- per recipient


def test_a_template_url_takes_the_recipients_address(server: HttpRecorder) -> None:
    ch = channel(json_url(server, "/chat/{to}/from/{recipient}"))
    ch.send(message(to="-100123", recipient_id="r7"))
    ch.close()
    assert server.requests[0].path == "/chat/-100123/from/r7"


@pytest.mark.parametrize("address", ["a/b", "x?method=GET", "x&to=y", "two words", ""])
def test_an_address_cannot_change_the_urls_shape(server: HttpRecorder, address: str) -> None:
    ch = channel(json_url(server, "/chat/{to}"))
    err = send_error(ch, message(to=address))
    ch.close()
    assert err.permanent and err.code == "bad_address"
    assert "cannot stand for {to}" in str(err)
    assert server.requests == []


def test_a_whole_url_per_recipient(server: HttpRecorder) -> None:
    ch = channel("{to}")
    assert repr(ch) == "AppriseChannel(name='chat', url='{to}')"
    ch.send(message(to=json_url(server, "/ada")))
    err = send_error(ch, message(to="nosuchservice://token"))
    bad = send_error(ch, message(to="json://"))  # an allowed scheme, but no valid URL
    empty = send_error(ch, message(to="  "))
    ch.close()
    assert empty.permanent and empty.code == "bad_address" and "(none)" not in str(empty)
    assert [r.path for r in server.requests] == ["/ada"]
    assert err.permanent and err.code == "scheme_not_allowed"
    assert "token" not in str(err)
    assert bad.permanent and bad.code == "bad_address"


# --------------------------------------------------------------------------- schemes

# Audit events seen while a test watches (sys.addaudithook cannot be removed: one hook for
# the process, recording only while a test has put a list here).
_watching: list[list[tuple[str, tuple[Any, ...]]]] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _watching and (event == "open" or event.startswith("syslog.")):
        _watching[-1].append((event, args))


sys.addaudithook(_audit)


@pytest.fixture
def audit() -> Iterator[list[tuple[str, tuple[Any, ...]]]]:
    seen: list[tuple[str, tuple[Any, ...]]] = []
    _watching.append(seen)
    try:
        yield seen
    finally:
        _watching.remove(seen)


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    """A real UDP socket on 127.0.0.1, standing in for a syslog daemon."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.5)
        yield s


def received(sock: socket.socket) -> list[bytes]:
    got = []
    try:
        while True:
            got.append(sock.recv(65536))
    except TimeoutError:
        return got


def test_an_address_cannot_pick_rsyslog_to_a_local_port(udp: socket.socket) -> None:
    port = udp.getsockname()[1]
    ch = channel("{to}")
    err = send_error(ch, message(to=f"rsyslog://127.0.0.1:{port}/user"))
    ch.close()
    assert err.permanent and err.code == "scheme_not_allowed"
    assert "rsyslog://" in str(err) and "schemes" in str(err)
    assert received(udp) == []
    # the same address goes out once the channel lists the scheme: the socket does hear it
    listed = channel("{to}", schemes=["rsyslog"])
    listed.send(message(to=f"rsyslog://127.0.0.1:{port}/user"))
    listed.close()
    assert len(received(udp)) == 1


def test_an_address_cannot_pick_the_local_syslog(
    audit: list[tuple[str, tuple[Any, ...]]],
) -> None:
    ch = channel("{to}")
    for address in ("syslog://", "syslog://local5", "SYSLOG://user"):
        err = send_error(ch, message(to=address))
        assert err.permanent and err.code == "scheme_not_allowed", address
        assert "syslog://" in str(err)
    ch.close()
    assert [e for e, _ in audit if e.startswith("syslog.")] == []


@pytest.mark.parametrize(
    "option",
    [
        "template={path}",
        "template=file://{path}",
        "template=secret.json",  # relative to the working directory: a file too
        "TEMPLATE={path}",
        "template=%2F{path_quoted}",
        "attach=file://{path}",
        "keyfile={path}",
        "pgppub={path}",
    ],
)
def test_an_address_cannot_make_apprise_read_a_local_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    audit: list[tuple[str, tuple[Any, ...]]],
    option: str,
) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"content": "the server\'s secret"}')
    monkeypatch.chdir(tmp_path)
    path = str(secret)
    query = option.format(path=path, path_quoted=path.lstrip("/").replace("/", "%2F"))
    ch = channel("{to}")  # discord is one of the default schemes
    err = send_error(ch, message(to=f"discord://1234567/t0ken/?{query}"))
    ch.close()
    assert err.permanent and err.code == "option_not_allowed"
    assert repr(query.split("=")[0].lower()) in str(err)
    assert "t0ken" not in str(err)
    reads = [a for e, a in audit if e == "open" and "secret" in str(a[0]) and a[1] != "w"]
    assert reads == []


def test_an_allowed_scheme_with_a_file_url_value_is_refused(server: HttpRecorder) -> None:
    ch = channel("{to}")
    err = send_error(ch, message(to=json_url(server, "/x") + "?logo=file:///etc/passwd"))
    ch.close()
    assert err.permanent and err.code == "option_not_allowed" and "'logo'" in str(err)
    assert server.requests == []


def test_the_default_schemes_take_a_remote_service(server: HttpRecorder) -> None:
    ch = channel("{to}")
    ch.send(message(to=json_url(server, "/ntfy-like")))
    ch.send(message(to=json_url(server, "/p") + "?:kind=profile:admin"))  # not a file: URL
    ch.close()
    assert [r.path for r in server.requests] == ["/ntfy-like", "/p"]


def test_listed_schemes_replace_the_default(server: HttpRecorder) -> None:
    ch = channel("{to}", schemes="ntfy, ntfys")  # a ${VAR} gives a string
    err = send_error(ch, message(to=json_url(server, "/x")))
    ch.close()
    assert err.code == "scheme_not_allowed" and "json://" in str(err)
    assert "ntfy, ntfys" in str(err)
    assert server.requests == []


def test_a_native_url_is_judged_by_the_service_it_names() -> None:
    ch = channel("{to}", schemes=["ntfys"])
    err = send_error(ch, message(to="https://discord.com/api/webhooks/1234567/t0ken"))
    ch.close()
    assert err.permanent and err.code == "scheme_not_allowed"
    assert "discord://" in str(err) and "t0ken" not in str(err)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"url": "{to}", "schemes": ["nosuch"]}, "schemes: 'nosuch' is not an Apprise scheme"),
        ({"url": "{to}", "schemes": []}, "schemes: list at least one"),
        ({"url": "{to}", "schemes": 7}, "schemes: expected a list"),
        ({"url": "json://h.test/{to}", "schemes": ["json"]}, 'schemes: only for url "{to}"'),
    ],
)
def test_schemes_are_checked_at_load(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(ChannelConfigError) as info:
        build_channel(ChannelConfig("chat", "apprise", options))
    assert problem in str(info.value)


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("status", "permanent"),
    [(500, False), (503, False), (429, False), (408, False), (400, True), (404, True)],
)
def test_the_services_status_decides(server: HttpRecorder, status: int, permanent: bool) -> None:
    server.answer(status)
    ch = channel(json_url(server))
    err = send_error(ch)
    ch.close()
    assert (err.permanent, err.code) == (permanent, str(status))
    assert f"error={status}" in str(err)  # Apprise's own log line, captured
    assert str(err).startswith("apprise channel 'chat': JSON failed: ")


def test_nothing_listening_is_temporary_with_apprises_reason() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ch = channel(f"json://127.0.0.1:{port}/x")
    err = send_error(ch)
    ch.close()
    assert not err.permanent and err.code is None
    assert "Connection error" in str(err)


def test_a_slow_service_is_temporary(server: HttpRecorder) -> None:
    server.answer(200, delay=1.5)
    ch = channel(json_url(server), timeout=0.3)
    err = send_error(ch)
    ch.close()
    assert not err.permanent


def test_concurrent_failures_keep_their_own_log_lines(server: HttpRecorder) -> None:
    # Apprise's log is captured per call: one send's error never carries another's.
    import threading

    ch = channel(json_url(server, "/{to}"))
    for _ in range(4):
        server.answer(500)
    errors: dict[str, str] = {}

    def work(to: str) -> None:
        try:
            ch.send(message(to=to))
        except DeliveryError as exc:
            errors[to] = str(exc)

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    ch.close()
    assert len(errors) == 4
    assert all(e.count("error=500") == 1 for e in errors.values())


# --------------------------------------------------------------------------- private addresses


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_loopback_is_refused_unless_allowed(server: HttpRecorder, host: str) -> None:
    url = json_url(server).replace("127.0.0.1", host)
    refused = channel(url, allow_private=None)
    err = send_error(refused)
    assert err.permanent and err.code == "private_address"
    assert "loopback address" in str(err)
    assert server.requests == []

    allowed = build_channel(
        ChannelConfig("chat", "apprise", {"url": url}), allow_private_targets=True
    )
    allowed.send(message())
    assert len(server.requests) == 1


def test_the_check_does_not_outlive_the_send(server: HttpRecorder) -> None:
    # Apprise runs the service in its own worker thread; a refusal there must not leak
    # into the next, allowed, send on the same worker.
    refused = channel(json_url(server), allow_private=False)
    allowed = channel(json_url(server), allow_private=True)
    for _ in range(3):
        assert send_error(refused).code == "private_address"
        allowed.send(message())
    assert len(server.requests) == 3


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({}, "missing option 'url'"),
        ({"url": "slakc://s3cr3t/B0/C0"}, "url: Apprise does not accept this slakc:// URL"),
        ({"url": "s3cr3t"}, "url: Apprise does not accept this (none):// URL"),
        ({"url": "json://h.test", "timeout": "-1"}, "timeout: expected a number of seconds"),
        ({"url": "json://h.test", "allow_private": "perhaps"}, "allow_private: expected"),
        (
            {"url": "json://h.test", "format": "text"},
            "unknown option 'format' (accepted: url, timeout, allow_private, schemes)",
        ),
    ],
)
def test_bad_options_name_the_option_never_the_url(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(ChannelConfigError) as info:
        build_channel(ChannelConfig("chat", "apprise", options))
    assert str(info.value).startswith("channel 'chat' (type apprise): ")
    assert problem in str(info.value)
    assert "s3cr3t" not in str(info.value)


def test_repr_hides_the_url_and_nothing_is_logged_with_it(
    server: HttpRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="duly")
    port = int(server.url.rsplit(":", 1)[1])
    ch = channel(f"json://user:s3cr3t@127.0.0.1:{port}/x")
    assert repr(ch) == "AppriseChannel(name='chat', url='json://…')"
    ch.send(message())
    ch.close()
    assert server.requests[0].headers["authorization"].startswith("Basic ")
    assert all("s3cr3t" not in r.getMessage() for r in caplog.records)
