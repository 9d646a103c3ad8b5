"""`kiln webhooks`: where this version of the API has the WebhookService."""

from __future__ import annotations

import argparse

from kiln.cli.context import Context
from kiln.client import webhook_stubs


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    webhooks = commands.add_parser("webhooks", add_help=False, help="endpoints that hear of your jobs and models")
    webhooks.add_argument("rest", nargs=argparse.REMAINDER)
    webhooks.set_defaults(run=webhooks_command)


def webhooks_command(ctx: Context) -> int:
    webhook_stubs()  # says "not available" where the API has no webhooks yet
    return 0
