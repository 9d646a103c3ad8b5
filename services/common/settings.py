"""Settings shared by every service, read from the environment (`KILN_` prefix)."""

from __future__ import annotations

import pathlib

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ObjectStoreSettings(BaseModel):
    """An S3-compatible store. With no endpoint the service starts an embedded SeaweedFS."""

    endpoint: str = ""
    access_key: str = "kiln"
    secret_key: SecretStr = SecretStr("kiln-secret-key")
    # S3 bucket naming rules, checked at start-up rather than on the first request.
    bucket: str = Field(default="kiln", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    secure: bool = False
    region: str = "us-east-1"
    # Where the embedded server keeps its data when no endpoint is given.
    embedded_dir: pathlib.Path = pathlib.Path("var/s3")
    # Public base URL for presigned links when clients reach the store by another name.
    public_endpoint: str = ""


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 0
    # Seconds in-flight calls get to finish on SIGTERM.
    shutdown_grace: float = 10.0
    max_workers: int = Field(default=8, ge=1)


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KILN_", env_nested_delimiter="__", extra="ignore")

    log_level: str = "INFO"
    json_logs: bool = True
    data_dir: pathlib.Path = pathlib.Path("var")
    s3: ObjectStoreSettings = ObjectStoreSettings()
    server: ServerSettings = ServerSettings()
    # Signs page tokens. Every replica behind one address needs the same value;
    # empty: a key derived from s3.secret_key, which those replicas share anyway.
    page_token_secret: SecretStr = SecretStr("")
