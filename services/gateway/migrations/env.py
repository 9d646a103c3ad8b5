from services.common.database import run_migrations_online
from services.gateway.schema import metadata

run_migrations_online(metadata)
