"""rims-rl's command line from a checkout: ``python train.py ARGS`` is ``rims-rl ARGS``.

The commands live in ``rims_rl/cli.py`` (installed as the ``rims-rl`` console script); ``python train.py
--help`` lists them.
"""

from __future__ import annotations

from rims_rl.cli import build_parser, cmd_compare, main, run

__all__ = ["build_parser", "cmd_compare", "main"]

if __name__ == "__main__":
    run()
