"""Webhook settings (environment: KILN_WEBHOOK_…), part of the trainer service's settings."""

from __future__ import annotations

import ipaddress
import pathlib
from typing import Self

from pydantic import Field, model_validator

from services.common.settings import CommonSettings

# The waits between attempts: the first at once, the last a day after the one before.
DEFAULT_RETRY_SCHEDULE = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)


class WebhookSettings(CommonSettings):
    # Loopback and private ranges (10/8, 172.16/12, 192.168/16, fc00::/7) are refused as
    # endpoint addresses unless this is set (tests, on-premises receivers). Link-local (cloud
    # metadata), multicast and unspecified addresses are refused whatever it says.
    webhook_allow_private_networks: bool = False
    # Networks (CIDR) never delivered to, even with private networks allowed: where Kiln's own
    # services and gateway live.
    webhook_blocked_networks: list[str] = Field(default_factory=list)
    # Seconds to wait before each attempt of a delivery (one entry per attempt); jittered.
    webhook_retry_schedule: list[float] = Field(default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE), min_length=1)
    # A fraction of each wait drawn at random, so receivers that failed together aren't retried together.
    webhook_retry_jitter: float = Field(default=0.2, ge=0, le=1)
    # The longest one attempt may take (connect, send, answer).
    webhook_timeout_seconds: float = Field(default=15.0, gt=0)
    # A replica's claim on a delivery; one killed mid-attempt leaves it to another after this.
    webhook_lease_seconds: float = Field(default=60.0, gt=0)
    # Deliveries in flight at once per replica; 0: this replica delivers nothing (API only).
    webhook_concurrency: int = Field(default=16, ge=0)
    # How often deliveries due later (retries, other replicas' events) are looked for.
    webhook_poll_seconds: float = Field(default=1.0, gt=0)
    # Endpoints one tenant may register.
    max_webhook_endpoints_per_tenant: int = Field(default=20, ge=1)
    # Deliveries that succeeded or failed for good are listed for this long after their last
    # attempt, then deleted (pending ones are kept whatever their age).
    webhook_deliveries_kept_days: float = Field(default=30.0, gt=0)
    # PEM file of further CAs that may sign receivers' certificates (an on-premises CA), trusted
    # beside the public ones.
    webhook_ca_file: pathlib.Path | None = None

    @model_validator(mode="after")
    def _lease_outlasts_an_attempt(self) -> Self:
        if self.webhook_lease_seconds <= self.webhook_timeout_seconds:
            raise ValueError("webhook_lease_seconds must be longer than webhook_timeout_seconds, or a slow attempt "
                             "would be sent a second time while it runs")
        if any(wait < 0 for wait in self.webhook_retry_schedule):
            raise ValueError("webhook_retry_schedule: waits in seconds, none negative")
        for network in self.webhook_blocked_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"webhook_blocked_networks: {network!r} is not a network (CIDR, e.g. "
                                 "10.20.0.0/16)") from None
        return self
