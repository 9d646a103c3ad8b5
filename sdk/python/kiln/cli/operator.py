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


# These commands' arguments are the server's own commands' (`args.passed_on`), parsed there.
def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    keys = commands.add_parser("keys", add_help=False,
                               help="API keys: create --tenant T --name N | list | revoke KEY (operators; on the "
                                    "gateway's database)")
    keys.set_defaults(run=keys_command, passthrough=True)
    up = commands.add_parser("up", add_help=False,
                             help="start the whole stack here (object store, services, a worker, the gateway)")
    up.set_defaults(run=up_command, passthrough=True)


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


def _passed_on(ctx: Context) -> list[str]:
    """The command's own arguments, with `--json` where it came before the command's name."""
    rest = list(ctx.args.passed_on)
    if ctx.out.json and "--json" not in rest:
        rest.append("--json")
    return rest


def keys_command(ctx: Context) -> int:
    gateway_cli = server_module("services.gateway.cli", "keys")
    status: int = gateway_cli.main(["keys", *_passed_on(ctx)])
    return status


def up_command(ctx: Context) -> int:
    stack = server_module("services.stack", "up")
    status: int = stack.main(_passed_on(ctx))
    return status
