"""`python -m services.dataset`: serve; `… migrate`: bring its database to the newest schema."""

from services.common.service_cli import service_main
from services.dataset.server import SCHEMA, main
from services.dataset.settings import DatasetSettings

raise SystemExit(service_main("dataset", SCHEMA, main, DatasetSettings))
