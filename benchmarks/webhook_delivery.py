"""Webhook delivery: events committed through a real trainer service (SQLite, its own process)
to a receiver on this machine, signed and sent by the service's dispatcher. Prints deliveries
per second for a burst of events, to one endpoint (its deliveries go one at a time, in order)
and spread over several, and the delay from each event's commit to its arrival (p50/p99) when
events come at a steady PACED_PER_S. The baseline, in the same run: signed POSTs sent straight
to the receiver in a loop, no queue."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import statistics
import time

import httpx

from benchmarks.event_latency import percentile
from benchmarks.harness import BENCH_AUTH, embedded_store, service_process
from kiln.v1 import webhooks_pb2 as wpb
from kiln.v1 import webhooks_pb2_grpc
from services.common.internal_client import internal_aio_channel, tenant_metadata
from services.common.settings import InternalAuthSettings
from services.trainer.webhooks import signing

EVENTS = 200
ENDPOINTS = 4
# Events per second of the paced run: a busy tenant's jobs, well under what delivery keeps up with.
PACED_PER_S = 20
TENANT = "bench"


class Receiver:
    """A minimal HTTP/1.1 server on asyncio: answers 200 to every POST, notes when each body arrived."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, bytes]] = []
        self.changed = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.arrivals.append((time.time(), body))
                self.changed.set()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            # The benchmark's loop ends with the trainer's keep-alive connections still open: their
            # handlers are torn down with it, which is nothing to report.
            pass
        finally:
            writer.close()

    async def wait_for(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(self.arrivals) < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), max(0.01, deadline - time.monotonic()))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def _event_time(body: bytes) -> float:
    stamp = json.loads(body)["timestamp"]
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def _through_service(address: str, auth: InternalAuthSettings, receiver: Receiver, port: int,
                           endpoints: int, pace: float | None = None) -> tuple[float, list[float]]:
    """(deliveries per second, delays in seconds) of EVENTS test events spread over `endpoints`,
    committed as fast as they go or `pace` a second."""
    channel = internal_aio_channel(address, auth)
    stub = webhooks_pb2_grpc.WebhookServiceStub(channel)
    metadata = tenant_metadata(TENANT)
    names = [(await stub.CreateWebhookEndpoint(wpb.CreateWebhookEndpointRequest(
        webhook_endpoint=wpb.WebhookEndpoint(url=f"http://127.0.0.1:{port}/e{k}", event_types=["model.published"])),
        metadata=metadata)).name for k in range(endpoints)]
    receiver.arrivals.clear()
    started = time.time()
    pending = asyncio.Semaphore(8)

    async def send(index: int) -> None:
        if pace is not None:
            await asyncio.sleep(max(0.0, started + index / pace - time.time()))
        async with pending:
            await stub.SendTestWebhook(wpb.SendTestWebhookRequest(name=names[index % endpoints]), metadata=metadata)

    await asyncio.gather(*(send(i) for i in range(EVENTS)))
    await receiver.wait_for(EVENTS)
    finished = max(at for at, _ in receiver.arrivals)
    delays = [at - _event_time(body) for at, body in receiver.arrivals]
    for name in names:
        await stub.DeleteWebhookEndpoint(wpb.DeleteWebhookEndpointRequest(name=name), metadata=metadata)
    await channel.close()
    return EVENTS / (finished - started), delays


async def _straight(port: int) -> float:
    """Signed POSTs in a loop, one at a time: what one endpoint's deliveries can't beat."""
    secret = signing.new_secret()
    async with httpx.AsyncClient(trust_env=False) as client:
        started = time.perf_counter()
        for index in range(EVENTS):
            body = json.dumps({"type": "webhook.test", "data": {"n": index}})
            headers = signing.headers([secret], f"evt_{index}", dt.datetime.now(dt.UTC), body)
            answer = await client.post(f"http://127.0.0.1:{port}/straight", content=body, headers=headers)
            answer.raise_for_status()
        return EVENTS / (time.perf_counter() - started)


def main() -> dict[str, float]:
    return asyncio.run(_main())


async def _main() -> dict[str, float]:
    figures: dict[str, float] = {}
    receiver = Receiver()
    receiver_port = await receiver.start()
    try:
        # The service in a process of its own, as deployed, beside this one's receiver.
        with embedded_store() as store, service_process("services.trainer", store,
                                                        WEBHOOK_ALLOW_PRIVATE_NETWORKS="true") as address:
            figures["straight_per_s"] = await _straight(receiver_port)
            for endpoints in (1, ENDPOINTS):
                rate, _ = await _through_service(address, BENCH_AUTH, receiver, receiver_port, endpoints)
                figures[f"per_s_{endpoints}"] = rate
                figures[f"vs_straight_{endpoints}"] = rate / figures["straight_per_s"]
            _, delays = await _through_service(address, BENCH_AUTH, receiver, receiver_port, 1, pace=PACED_PER_S)
            figures["paced_p50_ms"] = statistics.median(delays) * 1000
            figures["paced_p99_ms"] = percentile(delays, 0.99) * 1000
    finally:
        await receiver.close()
    print(f"webhook delivery, {EVENTS} events committed through the trainer service (its own process, SQLite) "
          "to a local receiver:")
    print(f"  straight signed POSTs, no queue: {figures['straight_per_s']:7.1f}/s")
    for endpoints in (1, ENDPOINTS):
        print(f"  a burst to {endpoints} endpoint(s): {figures[f'per_s_{endpoints}']:7.1f} deliveries/s "
              f"({figures[f'vs_straight_{endpoints}']:.2f}x straight)")
    print(f"  {PACED_PER_S} events/s to one endpoint: delay after commit p50 {figures['paced_p50_ms']:6.1f} ms, "
          f"p99 {figures['paced_p99_ms']:6.1f} ms")
    return figures


if __name__ == "__main__":
    main()
