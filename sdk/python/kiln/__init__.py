"""Kiln's Python SDK. `kiln.v1` holds the generated messages and stubs of the public API."""
