#!/usr/bin/env bash
# Course part 1.9: hybrid images (low frequencies from the first prompt, high from the second),
# a grayscale/colour split and a three-band hybrid.
source "$(dirname "$0")/common.sh"
if [ -n "${EMOJI:-}" ]; then
  run hybrid "grinning face" "red apple" "${MODEL[@]}" --seed "$SEED" -n 4 --out "$OUT/hybrid.png"
  exit 0
fi
run hybrid "a lithograph of a skull" "a lithograph of waterfalls" "${MODEL[@]}" --seed "$SEED" -n 4 \
  --out "$OUT/hybrid-skull-waterfall.png" --trajectory "$OUT/hybrid.gif"
run hybrid "a photo of a dog" "an oil painting of a snowy mountain village" --split color "${MODEL[@]}" \
  --seed "$SEED" -n 4 --out "$OUT/hybrid-color.png"
run hybrid "a lithograph of a skull" "a photo of a dog" "a lithograph of waterfalls" "${MODEL[@]}" \
  --seed "$SEED" -n 4 --out "$OUT/hybrid-three-band.png"
