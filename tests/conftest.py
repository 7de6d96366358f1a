"""Shared test set-up: the example plug-in core joins the registry for every test (and subprocess)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the helper modules beside the tests

from plugin_core import expose_example_core  # noqa: E402

expose_example_core()
