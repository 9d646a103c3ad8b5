"""The `kiln` command line: the public API for people and scripts (`--json`), plus the operator's
`kiln keys` and `kiln up` where the server is installed."""

from kiln.cli.main import main

__all__ = ["main"]
