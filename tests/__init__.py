"""The test suite. Importing it points the user's cache folder at a scratch one: a test run writes
nothing into ~/.cache. ONNX Runtime keeps a device id there and reads where when it loads, which
can be while pytest imports the first conftest, before any fixture or hook of ours runs."""

import os
import tempfile

os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="kiln-test-user-cache-")
