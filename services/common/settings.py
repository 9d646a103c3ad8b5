"""Settings shared by every service, read from the environment (`KILN_` prefix)."""

from __future__ import annotations

import pathlib
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ObjectStoreSettings(BaseModel):
    """An S3-compatible store. With no endpoint the service starts an embedded SeaweedFS."""

    # host:port of MinIO or any S3. Empty: the service starts an embedded SeaweedFS (one machine only).
    endpoint: str = ""
    # The store's credentials: change both in production.
    access_key: str = "kiln"
    secret_key: SecretStr = SecretStr("kiln-secret-key")
    # The bucket every service shares (S3 naming rules, checked at start-up rather than on the first
    # request).
    bucket: str = Field(default="kiln", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    # HTTPS to the store.
    secure: bool = False
    # The region presigned URLs are signed for.
    region: str = "us-east-1"
    # Where the embedded server keeps its data when no endpoint is given.
    embedded_dir: pathlib.Path = pathlib.Path("var/s3")
    # Public base URL for presigned links when clients reach the store by another name.
    public_endpoint: str = ""
    # The longest one call to the store may take (a caller's shorter deadline wins), and the
    # longest a connection attempt may take.
    call_timeout_seconds: float = Field(default=60.0, gt=0)
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    # Threads for calls to the store, of each service: its own, so a hung store can't starve others.
    max_parallel_calls: int = Field(default=16, ge=1)


class TlsSettings(BaseModel):
    """TLS for a server or its clients (PEM files). With `client_ca_file` on a server, callers
    must present a certificate it signed: mutual TLS, the production form of internal trust."""

    # PEM certificate (chain) and its key; set both to serve (or call) over TLS.
    cert_file: pathlib.Path | None = None
    key_file: pathlib.Path | None = None
    # On a server: the CA whose certificates callers must present (mutual TLS).
    client_ca_file: pathlib.Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


class ServerSettings(BaseModel):
    # Where the gRPC server listens (0.0.0.0 in a container); port 0 picks a free one.
    host: str = "127.0.0.1"
    port: int = 0
    # Seconds in-flight calls get to finish on SIGTERM; the process exits within it.
    shutdown_grace: float = Field(default=10.0, gt=0)
    # Calls served at once; past it callers get RESOURCE_EXHAUSTED. None: no limit.
    max_concurrent_rpcs: int | None = Field(default=None, ge=1)
    tls: TlsSettings = TlsSettings()
    # How often readiness probes the service's dependencies (health turns NOT_SERVING while
    # one is unreachable), and how long one probe may take.
    readiness_interval_seconds: float = Field(default=2.0, gt=0)
    readiness_timeout_seconds: float = Field(default=2.0, gt=0)


class MetricsSettings(BaseModel):
    """Prometheus metrics over HTTP (`/metrics`). Port 0 picks a free one (logged at start)."""

    # Serve /metrics; where (0.0.0.0 in a container, so Prometheus can scrape it).
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)


class TracingSettings(BaseModel):
    """OpenTelemetry spans, exported over OTLP/gRPC when an endpoint is set; off otherwise."""

    # host:port of an OTLP/gRPC collector (empty: no tracing); plaintext unless otlp_insecure is false;
    # the share of traces kept.
    otlp_endpoint: str = ""
    otlp_insecure: bool = True
    sample_ratio: float = Field(default=1.0, ge=0, le=1)


class InternalAuthSettings(BaseModel):
    """How internal services (dataset, tagger, trainer) know a call comes from inside Kiln.

    `token`: every call carries `authorization: Bearer <token>`, compared in constant time.
    `mtls`: the transport proves it (server.tls with a client CA); the token, when set, is
    checked as well."""

    # "token": internal calls carry the shared token; "mtls": the transport proves them.
    mode: Literal["token", "mtls"] = "token"
    # The internal credential (required in token mode): a long random secret, the same on every service.
    token: SecretStr = SecretStr("")
    # Further tokens a server accepts besides `token` (clients always send `token`), so the token
    # can be rotated replica by replica without refusing a call: first every service accepts the
    # new one, then every service sends it (the old one still accepted), then the old one goes.
    accepted_tokens: list[SecretStr] = []
    # Client side of mTLS: the certificate this service presents to the ones it calls, and the
    # CA that signed theirs.
    client_tls: TlsSettings = TlsSettings()
    server_ca_file: pathlib.Path | None = None


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KILN_", env_nested_delimiter="__", extra="ignore")

    # Logs on stderr: the level, and one JSON object a line (false: plain text).
    log_level: str = "INFO"
    json_logs: bool = True
    # Where SQLite files (when no database URL is set) and other local state live.
    data_dir: pathlib.Path = pathlib.Path("var")
    s3: ObjectStoreSettings = ObjectStoreSettings()
    server: ServerSettings = ServerSettings()
    metrics: MetricsSettings = MetricsSettings()
    tracing: TracingSettings = TracingSettings()
    internal_auth: InternalAuthSettings = InternalAuthSettings()
    # The longest one transaction may take (a caller's shorter deadline wins), and the longest
    # a connection attempt to the database may take.
    database_timeout_seconds: float = Field(default=15.0, gt=0)
    database_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    # SQL threads and pooled connections of each service replica (PostgreSQL: each replica may open
    # twice this many; size max_connections for every replica together).
    database_pool_size: int = Field(default=8, ge=1)
    # Bring the service's tables to the newest schema at start-up. Off where a separate step runs
    # `python -m services.<service> migrate` first: a service then refuses a schema behind its code.
    migrate_on_start: bool = True
    # Signs page tokens. Every replica behind one address needs the same value;
    # empty: a key derived from s3.secret_key, which those replicas share anyway.
    page_token_secret: SecretStr = SecretStr("")
