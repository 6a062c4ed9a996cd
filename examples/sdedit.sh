#!/usr/bin/env bash
# Course parts 1.1-1.4 and 1.7: forward process, denoising baselines, SDEdit sweeps
# (i_start 1, 3, 5, 7, 10, 20) on a photo, on a hand-drawn sketch, and text-guided.
# usage: sdedit.sh PHOTO [SKETCH]
source "$(dirname "$0")/common.sh"
PHOTO=${1:?usage: sdedit.sh PHOTO [SKETCH]}
SKETCH=${2:-}
SWEEP=(--i-start 1 --i-start 3 --i-start 5 --i-start 7 --i-start 10 --i-start 20)
run noise "$PHOTO" --t 250 --t 500 --t 750 --model "${MODEL[1]}" --seed "$SEED" --out "$OUT/noise.png"
run denoise "$PHOTO" --t 250 --t 500 --t 750 --model "${MODEL[1]}" --seed "$SEED" --out "$OUT/denoise.png"
run sdedit "$PHOTO" "${SWEEP[@]}" "${MODEL[@]}" --seed "$SEED" --out "$OUT/sdedit-photo.png"
if [ -n "$SKETCH" ]; then
  run sdedit "$SKETCH" "${SWEEP[@]}" "${MODEL[@]}" --seed "$SEED" --out "$OUT/sdedit-sketch.png"
fi
if [ -n "${EMOJI:-}" ]; then P="rocket"; else P="a rocket ship"; fi
run sdedit "$PHOTO" "${SWEEP[@]}" --prompt "$P" "${MODEL[@]}" --seed "$SEED" --out "$OUT/sdedit-text.png"
