"""`python -m services.trainer`: serve; `… migrate`: bring its database to the newest schema."""

from services.common.service_cli import service_main
from services.trainer.server import SCHEMA, main
from services.trainer.service_settings import TrainerServiceSettings

raise SystemExit(service_main("trainer", SCHEMA, main, TrainerServiceSettings))
