"""Tagger settings from the environment (`KILN_TAGGER_…`), e.g. `KILN_TAGGER_DIR=/srv/taggers`,
`KILN_TAGGER_RUNTIME__BATCH_SIZE=4`, `KILN_TAGGER_POLICY_FILE=/etc/kiln/moderation.json`."""

from __future__ import annotations

import pathlib

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.tagger.errors import TaggerError
from services.tagger.moderation import ModerationPolicy
from services.tagger.runtime import RuntimeOptions


class TaggerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KILN_TAGGER_", env_nested_delimiter="__", extra="ignore")

    dir: pathlib.Path = Field(pathlib.Path(".kiln/taggers"), description="where installed taggers live")
    default: str | None = Field(
        None, description="tagger used when a request names none; unset: newest installed WD model, else builtin"
    )
    runtime: RuntimeOptions = RuntimeOptions()
    policy: ModerationPolicy = ModerationPolicy()
    policy_file: pathlib.Path | None = Field(None, description="JSON ModerationPolicy; replaces `policy`")

    def moderation_policy(self) -> ModerationPolicy:
        if self.policy_file is None:
            return self.policy
        try:
            return ModerationPolicy.model_validate_json(self.policy_file.read_bytes())
        except (OSError, ValidationError) as error:
            raise TaggerError(f"moderation policy {self.policy_file} is unusable: {error}") from None
