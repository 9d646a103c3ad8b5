"""Where webhooks may go: http(s) URLs without credentials, on hosts whose every address is
outside Kiln's own networks. Checked when an endpoint is registered and again, on the address
actually connected to, at every attempt (a name that later resolves inside is still refused)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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


class AddressPolicy:
    def __init__(self, allow_private: bool, blocked: Sequence[str] = ()) -> None:
        self.allow_private = allow_private
        self._blocked = [ipaddress.ip_network(network, strict=False) for network in blocked]

    def check(self, address: IPAddress) -> None:
        """Raises RefusedAddress for an address webhooks must not reach."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
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
        loop = asyncio.get_running_loop()
        try:
            found = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise RefusedAddress(f"the host {target.host!r} does not resolve: {exc}") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in found))
        if not addresses:
            raise RefusedAddress(f"the host {target.host!r} has no address")
        return self._checked(addresses)

    def _checked(self, addresses: list[IPAddress]) -> list[IPAddress]:
        # Every address, not just the first: a name answering one public and one inside address
        # could be reached on either.
        for address in addresses:
            self.check(address)
        return addresses
