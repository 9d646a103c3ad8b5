"""Gateway settings (environment: KILN_…, e.g. KILN_GATEWAY_DATABASE_URL, KILN_DATASET_ADDRESS,
KILN_TRAINER_ADDRESS, KILN_HTTP__PORT, KILN_CORS_ALLOWED_ORIGINS='["https://app.example.com"]')."""

from __future__ import annotations

import pathlib
from typing import Annotated

from pydantic import BaseModel, Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import CommonSettings


class HttpSettings(BaseModel):
    """Where the Connect protocol (HTTP/1.1: browsers, curl, Connect clients) is served. Port 0
    picks a free port (logged at start)."""

    # Where the Connect (HTTP/1.1) side listens; port 0 picks a free one.
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)


class GatewaySettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="KILN_", env_nested_delimiter="__", extra="ignore")

    # Default: a SQLite file under data_dir. PostgreSQL: postgresql://user:pass@host/db
    gateway_database_url: str = ""
    # host:port of the internal services behind the public API.
    dataset_address: str = ""
    trainer_address: str = ""
    # How long a key's check is remembered: a key revoked on another replica is refused within this.
    key_cache_seconds: float = Field(default=5.0, ge=0)
    # Per key and gateway replica: requests a second (bursts up to the burst), open watch streams.
    key_requests_per_second: float = Field(default=50.0, gt=0)
    key_request_burst: int = Field(default=100, ge=1)
    max_watch_streams_per_key: int = Field(default=20, ge=1)
    # The largest request message or HTTP request body (past it: RESOURCE_EXHAUSTED with a QuotaFailure), and
    # the largest image an upload may declare or stream, or a browser upload form be asked for. The gRPC
    # transport takes messages up to the larger of max_request_bytes and 8 MiB (twice the largest upload
    # chunk), so these checks can answer; gRPC refuses a larger message itself, unread and without details.
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_upload_bytes: int = Field(default=50 * 1024 * 1024, ge=1)
    # How often the keys' last use is written.
    key_use_write_seconds: float = Field(default=30.0, gt=0)
    http: HttpSettings = HttpSettings()
    # Web origins (scheme://host[:port]) whose pages may call the HTTP side from a browser; "*" for any.
    cors_allowed_origins: list[str] = []
    # The web workbench's built files, served on every GET that is no API path. Empty: the build
    # beside this code (web/dist) when there is one; "off": no workbench.
    web_dir: str = ""
    # The object store's public origins (scheme://host[:port], as its presigned URLs name it): the only
    # origins besides its own that the workbench page may send uploads to and load images from. Empty:
    # none, and the page's uploads and images from the store are refused by the browser.
    web_store_origins: list[Annotated[str, Field(pattern=r"^https?://[A-Za-z0-9.\-\[\]:]+$")]] = []

    def web_root(self) -> pathlib.Path | None:
        if self.web_dir == "off":
            return None
        if self.web_dir:
            return pathlib.Path(self.web_dir)
        built = pathlib.Path(__file__).resolve().parents[2] / "web" / "dist"
        return built if (built / "index.html").exists() else None

    def database_url(self) -> str:
        return self.gateway_database_url or f"sqlite:///{self.data_dir / 'gateway.db'}"
