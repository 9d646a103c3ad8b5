"""`python -m services.gateway`: serve the public API; `… keys create|list|revoke`: manage API keys
(an operator's tool: it talks to the gateway's database directly); `… migrate`: bring that
database to the newest schema (the migration step of a deployment)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence

from services.common.errors import ServiceError
from services.common.service_cli import add_migrate_command, migrate_command
from services.common.settings_errors import BadSettings, load_settings
from services.gateway.api_keys import ApiKey, create_key, list_keys, parse_key_id, revoke_key
from services.gateway.server import SCHEMA, open_database
from services.gateway.server import main as serve_main
from services.gateway.settings import GatewaySettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve the public API (the default)")
    add_migrate_command(commands, "gateway")
    keys = commands.add_parser("keys", help="API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="a new key for a tenant, shown once")
    create.add_argument("--tenant", required=True, help="the tenant the key acts for")
    create.add_argument("--name", required=True, help="what the key is for (shown in `keys list`)")
    listing = keys.add_parser("list", help="keys, with when each was last used")
    listing.add_argument("--tenant", help="only this tenant's")
    revoke = keys.add_parser("revoke", help="refuse a key from now on")
    revoke.add_argument("key", help="the key's id, or the key as listed (kiln_<id>_…)")
    for sub in (create, listing, revoke):
        sub.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _record(key: ApiKey) -> dict[str, str | None]:
    def stamp(value: dt.datetime | None) -> str | None:
        return value.isoformat(timespec="seconds") if value is not None else None

    return {"id": key.id, "key": key.shown, "tenant": key.tenant, "name": key.name,
            "created": stamp(key.create_time), "revoked": stamp(key.revoke_time), "last_used": stamp(key.last_use_time)}


def _keys(args: argparse.Namespace) -> int:
    transactions = open_database(GatewaySettings())
    now = dt.datetime.now(dt.UTC)
    try:
        with transactions.engine.begin() as conn:
            if args.action == "create":
                key, secret = create_key(conn, args.tenant, args.name, now)
                if args.json:
                    print(json.dumps({**_record(key), "secret_key": secret}))
                else:
                    print(f"created {key.shown} for tenant {key.tenant} ({key.name}); the key, shown only now:")
                    print(secret)
            elif args.action == "list":
                keys = list_keys(conn, args.tenant)
                if args.json:
                    print(json.dumps([_record(key) for key in keys]))
                for key in keys if not args.json else ():
                    state = f"revoked {key.revoke_time:%Y-%m-%d %H:%M}" if key.revoke_time else "active"
                    used = f"{key.last_use_time:%Y-%m-%d %H:%M}" if key.last_use_time else "never"
                    print(f"{key.shown:22} {key.tenant:20} {state:24} last used {used:16} {key.name}")
            else:
                key = revoke_key(conn, parse_key_id(args.key), now)
                print(json.dumps(_record(key)) if args.json else f"revoked {key.shown} ({key.tenant}, {key.name})")
    except ServiceError as error:
        details = "; ".join(f"{v.field}: {v.description}" for v in error.violations) or error.message
        print(f"error: {details}", file=sys.stderr)
        return 2
    finally:
        transactions.close()
        transactions.engine.dispose()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        load_settings(GatewaySettings)  # a bad value stops every command before it starts
    except BadSettings as error:
        print(f"error: gateway: {error}", file=sys.stderr)
        return 2
    if args.command == "keys":
        return _keys(args)
    if args.command == "migrate":
        return migrate_command(SCHEMA, GatewaySettings(), args.database_url)
    serve_main()
    return 0
