# Shared by the example scripts: where outputs go, which model runs, the shipped inputs.
#   OUT=dir        outputs (default: gallery/)
#   SEED=n         seed of every run (default 0)
#   EMOJI=RUN_DIR  another emoji model (default: emoji, the built-in one)
#   IF_MODEL=id    DeepFloyd IF instead (a GPU, the licence accepted: see the main README); the course's
#                  prompts then, with IF_STAGE2 (default DeepFloyd/IF-II-L-v1.0) as stage II
#   STEPS=n        n model calls per run instead of the defaults (a quick check: STEPS=2)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
IN="$HERE/inputs"  # face.png, sketch.png, mask.png: written by make_inputs.py
OUT=${OUT:-gallery}
mkdir -p "$OUT"
SEED=${SEED:-0}
if [ -n "${IF_MODEL:-}" ]; then
  EMOJI=""
  MODEL=(--model "$IF_MODEL" --stage2 "${IF_STAGE2:-DeepFloyd/IF-II-L-v1.0}")
else
  EMOJI=${EMOJI:-emoji}
  MODEL=(--model "$EMOJI")  # emoji models have no stage II: --upscale is off for them
fi
# index i of the default stride-30 grid (t = 990 - 30 i), or the nearest index of the STEPS grid
istart() { if [ -n "${STEPS:-}" ]; then echo $(( $1 * (STEPS - 1) / 33 )); else echo "$1"; fi; }
# the generating commands (and denoise) take --steps; STEPS replaces their --stride
run() {
  local cmd=$1; shift
  local args=("$@")
  if [ -n "${STEPS:-}" ] && [ "$cmd" != noise ]; then
    local keep=() skip=0
    for a in "${args[@]}"; do
      if [ $skip = 1 ]; then skip=0; continue; fi
      if [ "$a" = --stride ]; then skip=1; continue; fi
      keep+=("$a")
    done
    args=("${keep[@]}" --steps "$STEPS")
  fi
  echo "+ dfedit $cmd ${args[*]}" >&2
  dfedit "$cmd" "${args[@]}"
}
