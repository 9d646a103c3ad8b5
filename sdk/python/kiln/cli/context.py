"""What every command gets: its arguments, where to print, and a client made on first use (so the
operator's commands and `--help` need no gateway)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from kiln.cli.output import Output
from kiln.client import KEY_VARIABLE, URL_VARIABLE, Client
from kiln.errors import KilnError


class Context:
    def __init__(self, args: argparse.Namespace, connect: Callable[[], Client] | None = None) -> None:
        self.args = args
        self.out = Output(bool(getattr(args, "json", False)))
        self._connect = connect or (lambda: _client_for(args))
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = self._connect()
        return self._client

    @property
    def progress(self) -> bool:
        """Progress bars, unless the output is for a script."""
        return not self.out.json and not getattr(self.args, "quiet", False)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _client_for(args: argparse.Namespace) -> Client:
    try:
        return Client(args.url, args.api_key)
    except KilnError as error:
        # What is missing, named as this command line takes it.
        flags = {"url": ("--url", URL_VARIABLE), "api_key": ("--api-key", KEY_VARIABLE)}
        missing = [flags[name] for name, description in error.violations
                   if name in flags and description.startswith(f"pass {name}=")]
        if missing:
            error.violations = [(flag, f"pass {flag} or set {variable}") for flag, variable in missing]
            error.hint = (f"pass --url HOST:PORT and --api-key kiln_…, or set {URL_VARIABLE} and {KEY_VARIABLE} "
                          "(an operator creates keys with `kiln keys create`)")
        raise


Command = Callable[[Context], int]
