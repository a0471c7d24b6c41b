"""What the HTTP channels (webhook, twilio-*, apprise) share: option parsing, one httpx
client policy, the mapping of network failures to :class:`DeliveryError`, and the refusal of
private addresses.

Private addresses. A channel sends to public addresses only, unless it is allowed private
ones (its ``allow_private: true`` option, or ``allow_private_targets: true`` in the rule file,
which :func:`duly.delivery.channels.build_channel` passes on). A URL's host may come from the
environment or, through ``{to}`` placeholders, from a recipient's address sent by the app;
without the check, a message could be aimed at the database server, an admin port on
localhost or a cloud metadata endpoint (169.254.169.254).

The check is made on the address each connection actually goes to, not on the name in the
URL: while a send runs inside :func:`public_addresses_only`, a process-wide audit hook
(``sys.addaudithook``) looks at every ``socket.connect`` made in that context and refuses
non-public ones. That covers a name that resolves to 127.0.0.1, DNS
answers that change between a check and the connection, redirects, and libraries that make
their own connections (Apprise, through requests, in its own worker threads: it runs each
service in a copy of the caller's ``contextvars`` context, which carries the check along).
A refused connection fails with :class:`PrivateAddressRefused` (an ``OSError``, so the
library reports an ordinary connection error) and is remembered, so the channel can say
what happened and fail the message permanently. A proxy from ``HTTPS_PROXY`` is a
connection like any other: a private one needs the channel to allow private addresses.
Datagrams sent without connecting (``sendto``: an Apprise ``rsyslog://`` target) are not
checked: refusing them would also catch a UDP syslog log handler that happens to run
during a send, and a lone datagram is not the request forgery this guards against.
"""

from __future__ import annotations

import ipaddress
import json
import math
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import httpx

from duly import __version__
from duly.delivery.channels.base import DeliveryError

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_TIMEOUT",
    "MAX_RESPONSE_BYTES",
    "PRIVATE_ADDRESS",
    "USER_AGENT",
    "PrivateAddressRefused",
    "address_problem",
    "bool_option",
    "make_client",
    "post",
    "public_addresses_only",
    "refused_error",
    "snippet",
    "timeout_option",
]

# Connecting should be quick; a provider may take a while to answer. `timeout: N` on a
# channel replaces every phase's limit with N seconds.
DEFAULT_TIMEOUT = httpx.Timeout(15.0, connect=5.0)
# Per channel: sends run on the dispatcher's worker threads, which share one client.
DEFAULT_LIMITS = httpx.Limits(max_connections=10, max_keepalive_connections=10)
# An answer is read for its status, an id and an error message: no more than this.
MAX_RESPONSE_BYTES = 64 * 1024

USER_AGENT = f"duly/{__version__}"
# DeliveryError.code of a message refused because its target is not public.
PRIVATE_ADDRESS = "private_address"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_ULA = ipaddress.IPv6Network("fc00::/7")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


# --------------------------------------------------------------------------- options


def bool_option(name: str, value: Any) -> bool:
    """A yes/no option, given as a YAML boolean or as a string (from ``${VAR}``)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{name}: expected true or false, not {value!r}")


def timeout_option(value: Any) -> httpx.Timeout:
    """``timeout`` (seconds, for every phase of a request), or the default when None."""
    if value is None:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not 0 < seconds < math.inf:  # also refuses NaN
        raise ValueError(f"timeout: expected a number of seconds above 0, not {value!r}")
    return httpx.Timeout(seconds)


def make_client(timeout: httpx.Timeout = DEFAULT_TIMEOUT, **kwargs: Any) -> httpx.Client:
    """The client a channel keeps for its sends: redirects are not followed (a POST that is
    redirected is a configuration to fix, and the answer says where to)."""
    return httpx.Client(
        timeout=timeout,
        limits=DEFAULT_LIMITS,
        follow_redirects=False,
        headers={"user-agent": USER_AGENT},
        **kwargs,
    )


# --------------------------------------------------------------------------- addresses


class PrivateAddressRefused(ConnectionRefusedError):
    """A connection to a non-public address, made while only public ones were allowed."""


def address_problem(address: str) -> str | None:
    """Why ``address`` (an IP literal) is not public — ``"loopback"``, ``"private"`` … —
    or None for a public address. The one check for channels and outgoing webhooks."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            inner = address_problem(str(embedded))
            return f"{inner} (embedded in {ip})" if inner else None
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "carrier-grade NAT (100.64.0.0/10)"
    if isinstance(ip, ipaddress.IPv6Address) and ip in _ULA:
        return "unique local (fc00::/7)"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "not globally routable"
    return None


# What the connections refused so far in this context were (None: no check in force).
_refusals: ContextVar[list[str] | None] = ContextVar("duly_private_refusals", default=None)
_hook_lock = threading.Lock()
_hook_installed = False


def _sockaddr_problem(sock: socket.socket, address: Any) -> str | None:
    """Why a connection from ``sock`` to ``address`` may not be made, or None."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return f"{address!r} is a local socket, not a public address"
    host = str(address[0])
    try:
        # Connections made by HTTP libraries name the address they resolved; a name here
        # (a direct sock.connect((name, port))) is resolved for the check as well.
        candidates = [host] if _is_ip(host) else _resolve(host, address[1])
    except OSError:
        return None  # the connect itself will fail to resolve it
    for ip in candidates:
        problem = address_problem(ip)
        if problem is not None:
            shown = ip if ip == host else f"{host} ({ip})"
            return f"{shown} is a {problem} address"
    return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _resolve(host: str, port: Any) -> list[str]:
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port)]


def _audit(event: str, args: tuple[Any, ...]) -> None:
    # Called for every audited event in the process: return at once for the others.
    if event != "socket.connect":
        return
    refusals = _refusals.get()
    if refusals is None:
        return
    sock, address = args
    problem = _sockaddr_problem(sock, address)
    if problem is not None:
        refusals.append(problem)
        raise PrivateAddressRefused(f"refused: {problem}")


@contextmanager
def public_addresses_only(enabled: bool = True) -> Iterator[list[str]]:
    """Within the block (and in threads given a copy of its context), connections to
    non-public addresses fail. Yields the list of refusals made, to explain a failure.
    With ``enabled=False`` nothing is checked and the list stays empty."""
    refusals: list[str] = []
    if not enabled:
        yield refusals
        return
    _install_hook()
    token = _refusals.set(refusals)
    try:
        yield refusals
    finally:
        _refusals.reset(token)


def _install_hook() -> None:
    global _hook_installed
    with _hook_lock:
        if not _hook_installed:
            sys.addaudithook(_audit)  # hooks cannot be removed: one, for the process
            _hook_installed = True


def refused_error(where: str, refusals: list[str]) -> DeliveryError:
    """The permanent error of a send whose connections were refused."""
    return DeliveryError(
        f"{where}: refused: {refusals[0]}; channels send to public addresses only "
        "(set allow_private: true on the channel, or allow_private_targets: true in the "
        "rule file, to allow private ones)",
        permanent=True,
        code=PRIVATE_ADDRESS,
    )


# --------------------------------------------------------------------------- sending


def post(
    client: httpx.Client,
    url: str | httpx.URL,
    *,
    where: str,
    allow_private: bool,
    **kwargs: Any,
) -> tuple[httpx.Response, bytes]:
    """POST and read at most :data:`MAX_RESPONSE_BYTES` of the answer, whatever its
    status. A refused address raises a permanent :class:`DeliveryError`; timeouts and
    network failures a temporary one (``where`` starts their messages)."""
    with public_addresses_only(not allow_private) as refusals:
        try:
            with client.stream("POST", url, **kwargs) as response:
                body = _read_some(response)
        except httpx.TimeoutException as exc:
            raise DeliveryError(
                f"{where}: no answer in time ({type(exc).__name__}); the message may or may "
                "not have gone out"
            ) from exc
        except (httpx.HTTPError, OSError) as exc:
            if refusals:
                raise refused_error(where, refusals) from exc
            host = httpx.URL(url).host
            raise DeliveryError(
                f"{where}: cannot reach {host}: {type(exc).__name__}: {exc}"
            ) from exc
    return response, body


def _read_some(response: httpx.Response) -> bytes:
    out = bytearray()
    for chunk in response.iter_bytes():
        out += chunk
        if len(out) >= MAX_RESPONSE_BYTES:
            break
    return bytes(out[:MAX_RESPONSE_BYTES])


def snippet(body: bytes, limit: int = 300) -> str:
    """The start of an answer's body, on one line, for an error message."""
    text = " ".join(body.decode("utf-8", "replace").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- options


def read_secret(option: str, value: Any, file_value: Any) -> str:
    """The secret given as ``option`` or, read from a file, as ``option_file``. Raises
    ValueError naming the option, never showing the secret."""
    if value not in (None, "") and file_value not in (None, ""):
        raise ValueError(f"give {option} or {option}_file, not both")
    if file_value not in (None, ""):
        path = Path(str(file_value)).expanduser()
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ValueError(f"{option}_file: cannot read {str(path)!r}: {why}") from None
        if not text:
            raise ValueError(f"{option}_file: {str(path)!r} is empty")
        return text
    text = str(value or "").strip()
    if not text:
        raise ValueError(f"missing option {option!r} (or '{option}_file')")
    return text


def http_url(option: str, value: Any) -> str:
    """``value`` as an http(s) URL with a host (as given: a trailing slash is kept, since a
    signed callback URL must match to the character)."""
    url = str(value).strip()
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"{option}: expected an http:// or https:// URL with a host")
    return url


def json_object(body: bytes) -> dict[str, Any]:
    """The answer's JSON object, or {} when it is not one."""
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
