#!/usr/bin/env bash
# Course part 1.9: hybrid images. Low frequencies (silhouette, colour) follow the first prompt, high
# frequencies (lines, features) the second. On the built-in model: a red apple and a red heart with a
# grinning face drawn into them: the apple's and the heart's silhouette and colour carry the face's
# eyes and mouth (the other way round, "grinning face" + "red apple", the face wins and no apple
# shows). Chosen by looking at twelve pairs (examples/README.md).
# usage: bash examples/hybrid.sh
source "$(dirname "$0")/common.sh"
if [ -n "$EMOJI" ]; then
  run hybrid "red apple" "grinning face" "${MODEL[@]}" --seed "$SEED" -n 4 --out "$OUT/hybrid.png" \
    --trajectory "$OUT/hybrid.gif"
  run hybrid "red heart" "grinning face" "${MODEL[@]}" --seed "$SEED" -n 4 --out "$OUT/hybrid-2.png"
  exit 0
fi
run hybrid "a lithograph of a skull" "a lithograph of waterfalls" "${MODEL[@]}" --seed "$SEED" -n 4 \
  --out "$OUT/hybrid-skull-waterfall.png" --trajectory "$OUT/hybrid.gif"
run hybrid "a photo of a dog" "an oil painting of a snowy mountain village" --split color "${MODEL[@]}" \
  --seed "$SEED" -n 4 --out "$OUT/hybrid-color.png"
run hybrid "a lithograph of a skull" "a photo of a dog" "a lithograph of waterfalls" "${MODEL[@]}" \
  --seed "$SEED" -n 4 --out "$OUT/hybrid-three-band.png"
