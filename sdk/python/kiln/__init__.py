"""Kiln's Python SDK: `Client` calls the gateway with an API key, `KilnError` is what a failed call
raises. `kiln.v1` holds the generated messages and stubs of the public API."""

from kiln.client import Client
from kiln.errors import JobFailed, KilnError

__all__ = ["Client", "JobFailed", "KilnError"]
