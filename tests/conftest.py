"""Shared test set-up: the example plug-in core joins the registry for every test (and subprocess)."""

from __future__ import annotations

from plugin_core import expose_example_core  # noqa: E402

expose_example_core()
