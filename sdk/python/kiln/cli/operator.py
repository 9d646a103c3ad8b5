"""The operator's commands, run where the Kiln server is installed: `kiln keys` (the gateway's API
keys, on its own database) and `kiln up` (the whole stack on one machine). The SDK alone has neither:
they import the server lazily."""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

import grpc

from kiln.cli.context import Context
from kiln.errors import KilnError


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    keys = commands.add_parser("keys", add_help=False,
                               help="API keys: create --tenant T --name N | list | revoke KEY (operators; on the "
                                    "gateway's database)")
    keys.add_argument("rest", nargs=argparse.REMAINDER)
    keys.set_defaults(run=keys_command)
    up = commands.add_parser("up", add_help=False,
                             help="start the whole stack here (object store, services, a worker, the gateway)")
    up.add_argument("rest", nargs=argparse.REMAINDER)
    up.set_defaults(run=up_command)


def server_module(name: str, command: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name is None or not name.startswith(error.name):
            raise  # the server is there but lacks one of its own dependencies: that is its error to show
        raise KilnError(grpc.StatusCode.UNIMPLEMENTED, f"`kiln {command}` needs the Kiln server, which is not "
                        f"installed here ({name} is missing)",
                        hint=f"run `kiln {command}` from a checkout of Kiln (the one with services/), or on the "
                             "machine that runs the gateway") from None


def keys_command(ctx: Context) -> int:
    gateway_cli = server_module("services.gateway.cli", "keys")
    rest = list(ctx.args.rest)
    if ctx.out.json and "--json" not in rest:
        rest.append("--json")
    status: int = gateway_cli.main(["keys", *rest])
    return status


def up_command(ctx: Context) -> int:
    stack = server_module("services.stack", "up")
    status: int = stack.main(list(ctx.args.rest))
    return status
