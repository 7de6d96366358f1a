#!/usr/bin/env bash
# The command a lent GPU machine runs (from the repository root, with .whl/ from fetch_wheels.sh):
#   bash experiments/gpu/run.sh [atari_gpu.py flags]      e.g. --minutes 8 --game Pong
# The device tool's call: run(command="bash experiments/gpu/run.sh", carry=[".whl"], timeout_s=600).
# Installs the carried wheels (no network there) into /tmp/site and runs experiments/atari_gpu.py, which
# writes its summary and the packed run directories into $OUT.
set -euo pipefail
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl} SITE=${SITE:-/tmp/site}
ls "$WHEELS"/*.whl >/dev/null || { echo "error: no wheels in $WHEELS: run experiments/gpu/fetch_wheels.sh first and carry .whl" >&2; exit 2; }
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
# The checkout is imported as it is; a dist-info beside it carries pyproject's entry points, which is
# where the core registry finds its cores (what `pip install` would write, without building anything).
SITE=$SITE $PY - <<'PY'
import os
import tomllib
from pathlib import Path

project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
info = Path(os.environ["SITE"]) / f"rims_rl-{project['version']}.dist-info"
info.mkdir(parents=True, exist_ok=True)
(info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: rims_rl\nVersion: {project['version']}\n")
groups = project.get("entry-points", {}) | {"console_scripts": project.get("scripts", {})}
text = "".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for g, eps in groups.items())
(info / "entry_points.txt").write_text(text)
PY
export PYTHONPATH=$SITE:$PWD PYTHONUNBUFFERED=1
exec $PY experiments/atari_gpu.py --out "${OUT:?set OUT to the folder that is copied back}" "$@"
