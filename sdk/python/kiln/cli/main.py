"""`kiln`: the command line. Each group of commands lives in its own module; this one builds the
parser and turns failures into a message and an exit status, never a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kiln.cli import datasets, generate, images, jobs, models, operator, tags, webhooks
from kiln.cli.context import Context
from kiln.client import KEY_VARIABLE, URL_VARIABLE
from kiln.errors import KilnError

GROUPS = (datasets, images, tags, jobs, models, generate, webhooks, operator)
EPILOG = (f"The gateway's address and your API key come from --url/--api-key or {URL_VARIABLE}/{KEY_VARIABLE}. "
          "Every command takes --json for machine-readable output.")


def common_options(suppress: bool) -> argparse.ArgumentParser:
    """Options every command takes, before or after its name."""
    default = argparse.SUPPRESS if suppress else None
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--json", action="store_true", default=default if suppress else False,
                        help="machine-readable output (JSON)")
    parser.add_argument("--url", default=default, help=f"the gateway's gRPC address (default: ${URL_VARIABLE})")
    parser.add_argument("--api-key", default=default, help=f"your API key (default: ${KEY_VARIABLE})")
    parser.add_argument("--quiet", action="store_true", default=default if suppress else False,
                        help="no progress bars")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiln", description="Kiln: LoRA training as a service.", epilog=EPILOG,
                                     parents=[common_options(suppress=False)])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = common_options(suppress=True)
    for group in GROUPS:
        group.register(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, passed_on = parser.parse_known_args(argv)
    if passed_on and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(passed_on)}")
    args.passed_on = passed_on
    ctx = Context(args)
    try:
        status: int = args.run(ctx)
        return status
    except KilnError as error:
        ctx.out.error(error)
        return 1
    except OSError as error:  # a local file: unreadable, unwritable, a folder that can't be made
        where = f": {error.filename}" if error.filename else ""
        print(f"error: {error.strerror or error}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        ctx.close()


