"""Make the example outside package (examples/leaky_core) visible through the entry-point group, as
``pip install examples/leaky_core`` would, without installing anything: a ``.dist-info`` folder with its
``entry_points.txt`` on ``sys.path`` (and on ``PYTHONPATH`` for subprocesses such as the CLI's workers)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "leaky_core"
NAME = "leaky"


def expose_example_core() -> list[str]:
    """Put the example core's module and a dist-info naming its entry point on the path; return the paths."""
    site = Path(tempfile.mkdtemp(prefix="rims-rl-plugin-"))
    info = site / "leaky_core-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: leaky-core\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[rims_rl.cores]\n{NAME} = leaky_core:LeakyCore\n")
    paths = [str(site), str(EXAMPLE)]
    sys.path[:0] = paths
    os.environ["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [os.environ.get("PYTHONPATH")])])
    return paths
