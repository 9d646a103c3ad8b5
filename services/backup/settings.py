"""What a backup reads and a restore writes, from the same KILN_ variables the services read."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.settings import ObjectStoreSettings

# The services with a database, in the order their databases are dumped: a service that refers
# to another's records before the one it refers to (training jobs name dataset snapshots), so
# every record a dump names was already in the dumps that follow it.
SERVICES = ("gateway", "trainer", "dataset")


class BackupSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KILN_", env_nested_delimiter="__", extra="ignore")

    dataset_database_url: str = ""
    trainer_database_url: str = ""
    gateway_database_url: str = ""
    s3: ObjectStoreSettings = ObjectStoreSettings()

    def database_urls(self) -> dict[str, str]:
        """Each service's database URL, for those set (a service without one keeps SQLite)."""
        urls = {name: getattr(self, f"{name}_database_url") for name in SERVICES}
        return {name: url for name, url in urls.items() if url}
