#!/usr/bin/env bash
# Course part 0 / 1.6: text -> image with CFG 7, 20 vs 100 steps (stride 50 vs 10).
source "$(dirname "$0")/common.sh"
if [ -n "${EMOJI:-}" ]; then
  PROMPTS=("grinning face" "red heart" "thumbs up" "pile of poo" "rocket" "happy face")
else
  PROMPTS=("an oil painting of a snowy mountain village" "a man wearing a hat" "a rocket ship"
           "a detailed butterfly" "a lantern emitting light" "a mural on the side of a building")
fi
for i in "${!PROMPTS[@]}"; do
  p=${PROMPTS[$i]}
  run sample "$p" "${MODEL[@]}" --seed "$SEED" --stride 10 --out "$OUT/sample-$i-100steps.png" --trajectory "$OUT/sample-$i.gif"
  run sample "$p" "${MODEL[@]}" --seed "$SEED" --stride 50 --out "$OUT/sample-$i-20steps.png"
done
run sample "${PROMPTS[0]}" "${MODEL[@]}" --seed "$SEED" --cfg 1 --out "$OUT/sample-0-no-cfg.png"
