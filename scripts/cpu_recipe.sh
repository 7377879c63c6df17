#!/usr/bin/env bash
# The CPU-scale recipe of the learning issue, end to end and resumable (re-run the same command):
#   noisy expert demos (train split) -> sgvla gen -> sgvla train (configs/cpu_recipe.yaml)
#   -> val success of every snapshot along the run (scripts/learning_curve.py).
# Knobs (environment): RECIPE_OUT (outputs/cpu_recipe), RECIPE_SEEDS (train episodes per subtask, 48),
# RECIPE_NOISE (0.2), RECIPE_REPEATS (2: the clean demo + one perturbed copy), RECIPE_VAL (val
# episodes per subtask for each point of the curve, 30: the learning issue's measure),
# RECIPE_WORKERS (2), RECIPE_SET (extra --set overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${RECIPE_OUT:-outputs/cpu_recipe}"
SEEDS="${RECIPE_SEEDS:-48}"; NOISE="${RECIPE_NOISE:-0.2}"; REPEATS="${RECIPE_REPEATS:-2}"
VAL="${RECIPE_VAL:-30}"; WORKERS="${RECIPE_WORKERS:-2}"
export PATH="$PWD/.venv/bin:$PATH"
t0=$SECONDS

# Demos: two processes, two subtasks each (each subtask file is written atomically, so a killed
# run redoes only the subtasks it had not finished).
pids=()
for pair in "pick place" "open close"; do
  (for sub in $pair; do
     [ -f "$OUT/demos/$sub.json" ] || sgvla demos --subtask "$sub" --episodes "$SEEDS" --noise "$NOISE" \
       --repeats "$REPEATS" --out "$OUT/demos"
   done) &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done  # a failed recording stops the script here
sgvla gen --task mini_kitchen --subtask all --demos "$OUT/demos" --out "$OUT/dataset" --workers "$WORKERS"

train_args=(--config configs/cpu_recipe.yaml --dataset "$OUT/dataset" --output "$OUT/run" --workers "$WORKERS")
for s in ${RECIPE_SET:-}; do train_args+=(--set "$s"); done
if [ ! -f "$OUT/run/model/config.json" ]; then
  if [ -f "$OUT/run/run.json" ]; then sgvla train "${train_args[@]}" --resume; else sgvla train "${train_args[@]}"; fi
fi
python scripts/learning_curve.py "$OUT/run" --episodes "$VAL" --workers "$WORKERS"
echo "cpu recipe done in $((SECONDS - t0)) s: curve in $OUT/run/learning_curve.json"
