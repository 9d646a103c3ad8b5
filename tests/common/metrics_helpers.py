"""Reading a service's Prometheus metrics, as a scraper would."""

from __future__ import annotations

import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
RPC_COUNT = "kiln_rpc_duration_seconds_count"


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def wait_until_served(url: str, method: str, count: float, timeout: float = 30, **labels: str) -> None:
    """Until the service has finished `count` calls of `method` (with `labels`, e.g. code="CANCELLED";
    else whatever their outcome): a call the client gave up on goes on in the service, and only its
    metrics say when it is over."""
    deadline = time.monotonic() + timeout
    while value(scrape(url), RPC_COUNT, method=method, **labels) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"the service did not finish {count:g} {method} calls in {timeout:g}s")
        time.sleep(0.02)  # the scrape is the only signal a finished call leaves outside the service
