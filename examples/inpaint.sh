#!/usr/bin/env bash
# Course part 1.7.2: inpainting (white = regenerate), simple per-step replacement and RePaint
# resampling (jump length 5, 4 passes).  usage: inpaint.sh PHOTO MASK
source "$(dirname "$0")/common.sh"
PHOTO=${1:?usage: inpaint.sh PHOTO MASK}
MASK=${2:?usage: inpaint.sh PHOTO MASK}
run inpaint "$PHOTO" --mask "$MASK" "${MODEL[@]}" --seed "$SEED" --out "$OUT/inpaint.png" --trajectory "$OUT/inpaint.gif"
run inpaint "$PHOTO" --mask "$MASK" "${MODEL[@]}" --seed "$SEED" --jump-length 5 --jump-n-sample 4 --out "$OUT/inpaint-repaint.png"
