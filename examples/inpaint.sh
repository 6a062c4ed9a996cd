#!/usr/bin/env bash
# Course part 1.7.2: inpainting (mask white = regenerate, black = keep exactly), simple per-step
# replacement and RePaint resampling. Inputs: examples/inputs/face.png and mask.png (its lower half),
# or PHOTO MASK.  usage: bash examples/inpaint.sh [PHOTO MASK]
source "$(dirname "$0")/common.sh"
PHOTO=${1:-$IN/face.png}
MASK=${2:-$IN/mask.png}
if [ -n "$EMOJI" ]; then
  # the upper half of the grinning face stays; the lower half becomes a tongue (the unconditional
  # branch, with no --prompt, fills it with a smudge: docs/gallery.md#edits-without-a-prompt)
  P=(--prompt "face with tongue"); RP=(--jump-length 3 --jump-n-sample 3)
else
  P=(); RP=(--jump-length 5 --jump-n-sample 4)
fi
run inpaint "$PHOTO" --mask "$MASK" ${P[@]+"${P[@]}"} "${MODEL[@]}" --seed "$SEED" -n 4 --out "$OUT/inpaint.png" \
  --trajectory "$OUT/inpaint.gif"
run inpaint "$PHOTO" --mask "$MASK" ${P[@]+"${P[@]}"} "${MODEL[@]}" --seed "$SEED" -n 4 "${RP[@]}" \
  --out "$OUT/inpaint-repaint.png"
