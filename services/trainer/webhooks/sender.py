"""One attempt of a delivery: POST to the address that was checked (so a name re-resolved in
between can't move it inside), the URL's own name kept in the Host header and TLS SNI, redirects
never followed, the whole attempt held to the timeout.

Connections are pooled per (scheme, host, port), never across names: the HTTP pool matches
connections by the address connected to, so a shared pool would reuse a TLS connection verified
for one name to send another name's deliveries, unverified, when both resolve to one address."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import email.utils
import ipaddress
import pathlib
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import certifi
import httpx

from services.trainer.webhooks import signing
from services.trainer.webhooks.addresses import AddressPolicy, IPAddress, RefusedAddress, parse_url

MAX_ERROR = 500
# The hosts whose connections are kept alive at once; the least recently used one's are closed.
KEPT_HOSTS = 64
HostKey = tuple[str, str, int]
# The most of an answer's body read so that its connection can be kept alive.
MAX_DRAINED = 64 * 1024


@dataclass(frozen=True)
class Attempt:
    """What one attempt came to."""

    status_code: int  # 0: no HTTP answer
    latency: float
    error: str
    retry_after: float | None = None

    @property
    def succeeded(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def gone(self) -> bool:
        return self.status_code == 410


class _HostClient:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.in_use = 0
        self.evicted = False


class HostClients:
    """One HTTP client per (scheme, host, port), at most `kept` of them: the least recently used
    is closed when another host needs room (once its attempts in flight have finished)."""

    def __init__(self, make: Callable[[], httpx.AsyncClient], kept: int = KEPT_HOSTS) -> None:
        self._make = make
        self._kept = kept
        self._clients: collections.OrderedDict[HostKey, _HostClient] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._clients)

    @contextlib.asynccontextmanager
    async def client(self, key: HostKey) -> AsyncIterator[httpx.AsyncClient]:
        entry = self._clients.get(key)
        if entry is None:
            entry = self._clients[key] = _HostClient(self._make())
            while len(self._clients) > self._kept:
                _, oldest = self._clients.popitem(last=False)
                oldest.evicted = True
                if oldest.in_use == 0:
                    await oldest.client.aclose()
        self._clients.move_to_end(key)
        entry.in_use += 1
        try:
            yield entry.client
        finally:
            entry.in_use -= 1
            if entry.evicted and entry.in_use == 0:
                await entry.client.aclose()

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), collections.OrderedDict()
        for entry in clients:
            entry.evicted = True
            await entry.client.aclose()


class WebhookSender:
    def __init__(self, policy: AddressPolicy, timeout: float, ca_file: pathlib.Path | None = None,
                 kept_hosts: int = KEPT_HOSTS) -> None:
        self._policy = policy
        self._timeout = timeout
        trusted = ssl.create_default_context(cafile=certifi.where())
        if ca_file is not None:
            trusted.load_verify_locations(cafile=str(ca_file))

        def make() -> httpx.AsyncClient:
            # trust_env off: a proxy from the environment would connect on our behalf, past the check.
            return httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=timeout, verify=trusted,
                                     limits=httpx.Limits(max_connections=50, max_keepalive_connections=10))

        self._clients = HostClients(make, kept_hosts)

    async def close(self) -> None:
        await self._clients.close()

    async def send(self, url: str, event_id: str, body: str, secrets: Sequence[str]) -> Attempt:
        started = time.monotonic()
        try:
            return await asyncio.wait_for(self._send(url, event_id, body, secrets, started), self._timeout)
        except TimeoutError:
            return Attempt(0, time.monotonic() - started, f"no answer within {self._timeout:g} s")

    async def _send(self, url: str, event_id: str, body: str, secrets: Sequence[str], started: float) -> Attempt:
        try:
            target = parse_url(url)
            addresses = await self._policy.resolve(target)
        except RefusedAddress as exc:
            return Attempt(0, time.monotonic() - started, f"refused: {exc}")
        default_port = 443 if target.scheme == "https" else 80
        host_header = _bracketed(target.host) + ("" if target.port == default_port else f":{target.port}")
        headers = signing.headers(secrets, event_id, dt.datetime.now(dt.UTC), body)
        headers["host"] = host_header
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        async with self._clients.client((target.scheme, target.host.lower(), target.port)) as client:
            return await self._post(client, url, addresses, body, headers, extensions, started)

    async def _post(self, client: httpx.AsyncClient, url: str, addresses: Sequence[IPAddress], body: str,
                    headers: dict[str, str], extensions: dict[str, str], started: float) -> Attempt:
        for index, address in enumerate(addresses):
            request = client.build_request("POST", httpx.URL(url).copy_with(host=str(address)),
                                           content=body.encode(), headers=headers, extensions=extensions)
            try:
                response = await client.send(request, stream=True)
                await _drain(response)
                break
            except httpx.ConnectError as exc:
                if index + 1 < len(addresses):
                    continue  # the name's next checked address
                return Attempt(0, time.monotonic() - started, _clip(_describe(exc)))
            except httpx.HTTPError as exc:
                return Attempt(0, time.monotonic() - started, _clip(_describe(exc)))
        latency = time.monotonic() - started
        code = response.status_code
        if 200 <= code < 300:
            return Attempt(code, latency, "")
        if 300 <= code < 400:
            location = response.headers.get("location", "")
            return Attempt(code, latency, _clip(f"redirects are not followed (to {location or 'nowhere'}); "
                                                "register the final URL"))
        return Attempt(code, latency, _clip(f"answered {code} {response.reason_phrase}".rstrip()),
                       retry_after=_retry_after(response.headers.get("retry-after")))


async def _drain(response: httpx.Response) -> None:
    """Reads a short answer's body to its end, so its connection can carry the next delivery
    (only its status counts); a longer one is dropped with its connection."""
    try:
        read = 0
        async for chunk in response.aiter_raw():
            read += len(chunk)
            if read > MAX_DRAINED:
                break
    finally:
        await response.aclose()


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _bracketed(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR else text[:MAX_ERROR - 1] + "…"
