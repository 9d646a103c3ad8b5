"""Where webhooks may go: http(s) URLs without credentials, on hosts whose every address is
outside Kiln's own networks. Checked when an endpoint is registered and again, on the address
actually connected to, at every attempt (a name that later resolves inside is still refused)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> the host's addresses as text; the system resolver unless one is given.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
# IPv6 prefixes that reach IPv4 through a translator: the well-known NAT64 prefix, whose last
# 32 bits are the IPv4 address (checked as that address), and prefixes refused outright: the
# local-use NAT64 prefix (which a network may translate anywhere inside) and the deprecated
# IPv4-compatible ::a.b.c.d, which some stacks still route as IPv4.
NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
REFUSED_TRANSLATED = {ipaddress.IPv6Network("64:ff9b:1::/48"): "a local-use NAT64 address",
                      ipaddress.IPv6Network("::/96"): "a deprecated IPv4-compatible address"}


class RefusedAddress(Exception):
    """A URL or address webhooks must not reach, with why (said to the user as it is)."""


@dataclass(frozen=True)
class Target:
    """A URL taken apart: what to connect to, and the name the receiver expects (Host, SNI)."""

    url: str
    scheme: str
    host: str
    port: int


def parse_url(url: str) -> Target:
    if len(url) > MAX_URL_LENGTH:
        raise RefusedAddress(f"at most {MAX_URL_LENGTH} characters")
    if not url.isprintable() or any(c.isspace() for c in url):
        raise RefusedAddress("a URL has no spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RefusedAddress(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise RefusedAddress("only http:// and https:// URLs can receive webhooks")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise RefusedAddress("no credentials in the URL (user:password@); authenticate deliveries by their "
                             "signature")
    if not parts.hostname:
        raise RefusedAddress("the URL names no host")
    if parts.fragment:
        raise RefusedAddress("no #fragment: it is never sent")
    return Target(url, parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80))


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses a packet to this IPv6 address may end up at, through 6to4, Teredo
    (its server and its client) or the well-known NAT64 prefix."""
    inside: list[ipaddress.IPv4Address] = []
    if address.sixtofour is not None:
        inside.append(address.sixtofour)
    if address.teredo is not None:
        inside.extend(address.teredo)
    if address in NAT64_WELL_KNOWN:
        inside.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return inside


async def system_resolver(host: str, port: int) -> list[str]:
    found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in found]


class AddressPolicy:
    def __init__(self, allow_private: bool, blocked: Sequence[str] = (), resolver: Resolver | None = None) -> None:
        self.allow_private = allow_private
        self._blocked = [ipaddress.ip_network(network, strict=False) for network in blocked]
        self._resolver = resolver or system_resolver

    def check(self, address: IPAddress) -> None:
        """Raises RefusedAddress for an address webhooks must not reach, or whose IPv4 address
        inside (mapped, 6to4, Teredo, NAT64) they must not reach, or that is in a translation
        prefix refused outright."""
        if isinstance(address, ipaddress.IPv6Address):
            if address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            else:
                # :: and ::1 are in ::/96 but refused below as what they are.
                for network, kind in REFUSED_TRANSLATED.items():
                    if address in network and int(address) > 1:
                        raise RefusedAddress(f"{address} is {kind}, which may reach networks inside")
                for inside in embedded_ipv4(address):
                    try:
                        self._check_one(inside)
                    except RefusedAddress as exc:
                        raise RefusedAddress(f"{address} carries {inside}: {exc}") from None
        self._check_one(address)

    def _check_one(self, address: IPAddress) -> None:
        if any(address in network for network in self._blocked):
            raise RefusedAddress(f"{address} is in a network Kiln's own services use")
        if address.is_unspecified:
            raise RefusedAddress(f"{address} is the unspecified address")
        if address.is_multicast:
            raise RefusedAddress(f"{address} is a multicast address")
        if address.is_link_local:
            raise RefusedAddress(f"{address} is link-local (where cloud metadata services answer)")
        if address.is_loopback or (address.is_private and not address.is_global):
            if self.allow_private:
                return
            kind = "loopback" if address.is_loopback else "in a private network"
            raise RefusedAddress(f"{address} is {kind}: webhooks go to public addresses")
        if not address.is_global:
            raise RefusedAddress(f"{address} is a reserved address, not a public one")

    async def resolve(self, target: Target) -> list[IPAddress]:
        """The addresses to connect to, in the resolver's order, once every one has passed."""
        try:
            return self._checked([ipaddress.ip_address(target.host)])
        except ValueError:
            pass
        try:
            found = await self._resolver(target.host, target.port)
        except (socket.gaierror, UnicodeError) as exc:
            raise RefusedAddress(f"the host {target.host!r} does not resolve: {exc}") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(text.split("%")[0]) for text in found))
        if not addresses:
            raise RefusedAddress(f"the host {target.host!r} has no address")
        return self._checked(addresses)

    def _checked(self, addresses: list[IPAddress]) -> list[IPAddress]:
        # Every address, not just the first: a name answering one public and one inside address
        # could be reached on either.
        for address in addresses:
            self.check(address)
        return addresses
