from services.common.database import run_migrations_online
from services.trainer.schema import metadata

run_migrations_online(metadata)
