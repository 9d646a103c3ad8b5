"""The operator guide's settings table is what scripts/settings_table.py reads from the settings
classes, so a setting added, removed, renamed or re-defaulted in code shows up as a failure here
until the guide is regenerated (`python scripts/settings_table.py --write deploy/README.md`)."""

from __future__ import annotations

import importlib.util
import pathlib
from types import ModuleType

ROOT = pathlib.Path(__file__).resolve().parents[1]


def settings_table() -> ModuleType:
    spec = importlib.util.spec_from_file_location("settings_table", ROOT / "scripts" / "settings_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_guide_lists_every_setting_as_the_code_declares_it():
    script = settings_table()
    guide = (ROOT / "deploy" / "README.md").read_text()
    assert script.written_section(guide) == script.section(), (
        "deploy/README.md's settings table is stale: run `python scripts/settings_table.py --write deploy/README.md`")


def test_the_table_names_each_setting_once_with_its_readers_and_meaning():
    variables = [row[0] for row in settings_table().rows()]
    assert len(variables) == len(set(variables))
    rows = {row[0]: row for row in settings_table().rows()}
    # Nested settings are joined with `__`, as the services read them.
    assert rows["KILN_S3__ENDPOINT"][2] == "all"
    assert rows["KILN_INTERNAL_AUTH__ACCEPTED_TOKENS"][2] == "every service"
    assert rows["KILN_TRAINER_DATABASE_URL"][2] == "trainer, backup"
    assert rows["KILN_MIGRATE_ON_START"][1] == "`true`"
    assert all(meaning for _, _, _, meaning in rows.values()), [v for v, *_, m in rows.values() if not m]
