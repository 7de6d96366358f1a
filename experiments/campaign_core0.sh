#!/bin/bash
# The first core's background campaign (issue 42), in order; start it in every session's first minute,
# from a frozen clone of the code (see experiments/campaign.sh). Every step skips what is finished.
#
#   RIMS_RL_RUNS=~/rims-rl-runs PY=/work/main/.venv/bin/python setsid nohup experiments/campaign_core0.sh \
#       >> ~/rims-rl-runs/campaign-core0.log 2>&1 &
#
# Pong rims_ppo finished (2,500,608 steps): step 1 only skips now. A lost machine before it had finished:
# `train.py unpack docs/results/atari-pong-cpu-rims/rims_ppo-seed0.resume.zip (git history, 251a053) --run-dir
# ~/rims-rl-runs/compare-pong-cpu-rims/runs/rims_ppo-seed0` first (experiments/campaign_snapshot.py --pack
# writes that form at a session's end).
set -u
cd "$(dirname "$0")/.." || exit  # the clone's root
R=${RIMS_RL_RUNS:?set RIMS_RL_RUNS to the folder of long runs, outside the work tree}
PY=${PY:-python}
CORE=${CORE:-0}
run() { echo "== $(date -u +%FT%TZ) $*"; taskset -c "$CORE" "$PY" "$@"; }

# 1. Pong rims_ppo to the paper's 10M frames (lstm_ppo's run is finished: docs/results/atari-pong-cpu).
run train.py compare --suite atari-modes-pong --agents rims_ppo --seeds 1 --timesteps 2500000 --eval-episodes 10 \
    --stochastic --workers 1 --set vec_env=ale --out "$R/compare-pong-cpu-rims" || exit

# 2. The bf16 CNN's learning-parity run: the same seed of lstm_ppo on Breakout (it learns within the first
#    half million steps, where Pong barely moves) in float32 and with bf16_features, curves side by side.
for mode in fp32 bf16; do
    flag=false
    [ "$mode" = bf16 ] && flag=true
    run train.py compare --env ALE/Breakout-v5 --agents lstm_ppo --seeds 1 --timesteps 500000 --eval-episodes 10 \
        --stochastic --workers 1 --set vec_env=ale --set policy_kwargs.bf16_features=$flag --out "$R/bf16-parity-$mode" || exit
done
echo "== $(date -u +%FT%TZ) core-0 campaign done"
