# Shared by the example scripts: where outputs go and which model runs.
set -euo pipefail
OUT=${OUT:-gallery}
mkdir -p "$OUT"
SEED=${SEED:-777}
if [ -n "${EMOJI:-}" ]; then
  MODEL=(--model "$EMOJI" --no-upscale)   # emoji models have no stage II
else
  MODEL=(--model "${IF_MODEL:-DeepFloyd/IF-I-XL-v1.0}" --stage2 "${IF_STAGE2:-DeepFloyd/IF-II-L-v1.0}")
fi
run() { echo "+ dfedit $*" >&2; dfedit "$@"; }
