#!/usr/bin/env bash
# Once, here (with network), before a GPU session: the wheels that the lent GPU machine lacks, for its
# Python 3.12 on x86-64, at the versions this checkout's .venv runs. (This project itself travels as
# the checkout; run.sh gives it the entry points its core registry reads.)
# They land in .whl/ (ignored through .git/info/exclude) and travel with `run`'s working tree;
# experiments/gpu/run.sh installs them there. Its image already has torch, numpy, pyyaml, tqdm, rich,
# matplotlib, pandas, scipy, cloudpickle, typing-extensions and tensorboard.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
NEEDED="gymnasium farama-notifications stable-baselines3 sb3-contrib ale-py minigrid pygame-ce popgym"
pins=$($PY - "$NEEDED" <<'PY'
import sys
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1].split()))
PY
)
mkdir -p .git/info && touch .git/info/exclude
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >>.git/info/exclude
rm -rf .whl && mkdir .whl
platforms=""
for n in 28 27 17; do platforms="$platforms --platform manylinux_2_${n}_x86_64"; done
# shellcheck disable=SC2086
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $platforms --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $pins
ls -la .whl
du -sh .whl
