#!/usr/bin/env bash
# The learnability search's runs, one at a time (nice'd; the shared machine has 2 cores): each line is
# "agent suite timesteps seed [--set ...]". Train on the suite's training env, then evaluate the final
# model on the training env and every variant. Run directories go to runs/learn/ (not committed).
set -u
cd "$(dirname "$0")/../../.."
PY=.venv/bin/python
# One torch thread per run: on a shared 2-core machine, more threads oversubscribe the cores.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
while read -r agent suite steps seed sets; do
  [ -z "$agent" ] && continue
  tag="${suite}-${agent}-${steps}-s${seed}${sets:+-$(echo "$sets" | tr -cd 'a-z0-9_.=' | tr '=' '_')}"
  dir="runs/learn/$tag"
  if [ ! -f "$dir/model.zip" ]; then
    # shellcheck disable=SC2086
    nice -n 10 $PY train.py train --agent "$agent" --suite "$suite" --timesteps "$steps" --seed "$seed" \
      $sets --run-dir "$dir" --eval-episodes 0 --no-progress > "runs/learn/$tag.train.log" 2>&1
  fi
  nice -n 10 $PY train.py evaluate --checkpoint "$dir" --suite "$suite" --episodes 20 \
    > "runs/learn/$tag.eval.log" 2>&1
  echo "done $tag"
done < "${1:-/dev/stdin}"
