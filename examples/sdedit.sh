#!/usr/bin/env bash
# Course parts 1.1-1.4 and 1.7: the forward process and denoising baselines on a "photo", SDEdit
# sweeps of that photo and of a hand-drawn sketch, and a text-guided edit of the photo.
# Inputs: examples/inputs/face.png (the model's own grinning face) and sketch.png, or PHOTO [SKETCH].
# usage: bash examples/sdedit.sh [PHOTO [SKETCH]]
source "$(dirname "$0")/common.sh"
PHOTO=${1:-$IN/face.png}
SKETCH=${2:-$IN/sketch.png}
run noise "$PHOTO" --t 250 --t 500 --t 750 "${MODEL[@]:0:2}" --seed "$SEED" --out "$OUT/noise.png"
if [ -n "$EMOJI" ]; then
  # The emoji model's unconditional branch draws no clean emoji (docs/gallery.md#edits-without-a-prompt),
  # so every edit here names what it should become: the photo's own caption, then another one.
  P_PHOTO="grinning face"; P_SKETCH="grinning face"; P_TEXT="face with tongue"
  # i_start 10, 20, 27, 30: t = 690, 390, 180, 90 (lower = more noise = a bigger change)
  SWEEP=(--i-start "$(istart 10)" --i-start "$(istart 20)" --i-start "$(istart 27)" --i-start "$(istart 30)")
  TEXT=(--i-start "$(istart 14)" --i-start "$(istart 17)" --i-start "$(istart 20)")
else
  P_PHOTO="a high quality photo"; P_SKETCH="a high quality photo"; P_TEXT="a rocket ship"
  SWEEP=(--i-start 1 --i-start 3 --i-start 5 --i-start 7 --i-start 10 --i-start 20)
  TEXT=("${SWEEP[@]}")
fi
run denoise "$PHOTO" --t 250 --t 500 --t 750 --prompt "$P_PHOTO" "${MODEL[@]:0:2}" --seed "$SEED" \
  --out "$OUT/denoise.png"
run sdedit "$PHOTO" "${SWEEP[@]}" --prompt "$P_PHOTO" "${MODEL[@]}" --seed "$SEED" -n 2 --out "$OUT/sdedit-photo.png"
run sdedit "$SKETCH" "${SWEEP[@]}" --prompt "$P_SKETCH" "${MODEL[@]}" --seed "$SEED" -n 2 \
  --out "$OUT/sdedit-sketch.png"
run sdedit "$PHOTO" "${TEXT[@]}" --prompt "$P_TEXT" "${MODEL[@]}" --seed "$SEED" -n 2 --out "$OUT/sdedit-text.png"
