"""Tagger settings from the environment, beside the ones every service shares (`KILN_…`):
`KILN_TAGGER_DIR=/srv/taggers`, `KILN_TAGGER_DEFAULT=wd-vit-v3`, `KILN_TAGGER_RUNTIME__BATCH_SIZE=4`,
`KILN_TAGGER_POLICY='{"rules": [...]}'` or `KILN_TAGGER_POLICY_FILE=/etc/kiln/moderation.json`."""

from __future__ import annotations

import pathlib

from pydantic import Field, ValidationError
from pydantic_settings import SettingsConfigDict

from services.common import object_keys
from services.common.settings import CommonSettings
from services.tagger.errors import TaggerError
from services.tagger.moderation import ModerationPolicy
from services.tagger.runtime import RuntimeOptions


class TaggerSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="KILN_", env_nested_delimiter="__", extra="ignore")

    tagger_dir: pathlib.Path | None = Field(None, description="installed taggers; default DATA_DIR/taggers")
    tagger_default: str | None = Field(
        None, description="tagger used when a request names none; unset: newest installed WD model, else builtin"
    )
    tagger_runtime: RuntimeOptions = RuntimeOptions()
    # The moderation policy as JSON (rules on the tagger's safety tags; see services/tagger/moderation.py).
    tagger_policy: ModerationPolicy = ModerationPolicy()
    tagger_policy_file: pathlib.Path | None = Field(None, description="JSON ModerationPolicy; replaces tagger_policy")
    # Object keys the service may read: what the dataset service writes, nothing else in the bucket.
    tagger_object_prefixes: tuple[str, ...] = object_keys.owned_prefixes(object_keys.Service.DATASET)
    tagger_max_images: int = Field(32, ge=1, le=256, description="images per TagImages call")

    def taggers_dir(self) -> pathlib.Path:
        return self.tagger_dir or self.data_dir / "taggers"

    def moderation_policy(self) -> ModerationPolicy:
        if self.tagger_policy_file is None:
            return self.tagger_policy
        try:
            return ModerationPolicy.model_validate_json(self.tagger_policy_file.read_bytes())
        except (OSError, ValidationError) as error:
            raise TaggerError(f"moderation policy {self.tagger_policy_file} is unusable: {error}") from None
