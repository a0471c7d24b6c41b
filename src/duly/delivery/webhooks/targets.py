"""Where a webhook may be sent: public addresses only, unless the rule file allows private
ones (``allow_private_targets: true``).

The host is resolved when the request is made, every address it resolves to is checked, and
the connection goes to the address that was checked (the URL's host is swapped for it; the
``Host`` header and TLS server name stay the original host). So a DNS answer cannot point a
webhook at the database server or a cloud metadata endpoint, neither at load time nor by
changing between the check and the connection.

Refused: unspecified, loopback, private (10/8, 172.16/12, 192.168/16), link-local (including
169.254.169.254), carrier-grade NAT (100.64/10), multicast, reserved, IPv6 unique-local
(fc00::/7) and anything else not globally routable — also when embedded in an IPv6 address
(IPv4-mapped ``::ffff:a.b.c.d``, 6to4 ``2002::/16``, NAT64 ``64:ff9b::/96``).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from duly.delivery.channels._http import address_problem

__all__ = ["Resolver", "Target", "TargetRefused", "address_problem", "pin", "system_resolver"]

# host, port -> the addresses to try, in order
Resolver = Callable[[str, int], list[str]]


class TargetRefused(Exception):
    """The webhook's host is not a public address: refused for good (not retried)."""


@dataclass(frozen=True, slots=True)
class Target:
    """What to connect to for one request."""

    url: httpx.URL  # the host replaced by the checked address (or as given, when allowed)
    host_header: str | None = None  # the original host[:port], when the URL was pinned
    sni_hostname: str | None = None  # the original host, for TLS (https only)


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (``socket.getaddrinfo``), without duplicates."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out: list[str] = []
    for info in infos:
        addr = str(info[4][0])
        if addr not in out:
            out.append(addr)
    return out


def pin(url: str, *, allow_private: bool, resolve: Resolver = system_resolver) -> Target:
    """Check ``url``'s host and return what to connect to.

    Raises :class:`TargetRefused` for a non-public address (permanent), and lets
    ``OSError`` (``socket.gaierror``: the name does not resolve now) through: temporary.
    """
    u = httpx.URL(url)
    if u.scheme not in ("http", "https") or not u.host:
        raise TargetRefused("the webhook URL must be http:// or https:// with a host")
    if allow_private:
        return Target(u)
    host = u.raw_host.decode("ascii")  # IDNA-encoded, brackets stripped
    port = u.port or (443 if u.scheme == "https" else 80)
    addresses = resolve(host, port)
    if not addresses:
        raise OSError(f"{host} resolves to no address")
    for address in addresses:
        problem = address_problem(address.split("%", 1)[0])  # drop an IPv6 zone
        if problem is not None:
            shown = host if host == address else f"{host} resolves to {address}, which"
            raise TargetRefused(
                f"refused: {shown} is a {problem} address; webhooks go to public addresses "
                "only (set allow_private_targets: true in the rule file to allow private ones)"
            )
    chosen = addresses[0].split("%", 1)[0]
    return Target(
        u.copy_with(host=chosen),
        host_header=u.netloc.decode("ascii"),
        sni_hostname=host if u.scheme == "https" else None,
    )
