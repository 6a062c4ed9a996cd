#!/usr/bin/env bash
# Text -> image (course part 0 / 1.6). On the built-in model: five of its training captions and one
# emoji typed as itself (read as its name, "octopus"), four samples each at the defaults (strided
# DDPM, 34 steps, the model's own CFG 3); then the first at 100 and 20 steps (stride 10 vs 50) and
# without guidance (--cfg 1).  usage: bash examples/sample.sh
source "$(dirname "$0")/common.sh"
if [ -n "$EMOJI" ]; then
  # training captions (dfedit prompts --model emoji lists all 1,722): drawn as Google draws them
  PROMPTS=("grinning face" "red heart" "ghost" "unicorn" "pizza" "🐙")
else
  PROMPTS=("an oil painting of a snowy mountain village" "a man wearing a hat" "a rocket ship"
           "a detailed butterfly" "a lantern emitting light" "a mural on the side of a building")
fi
for i in "${!PROMPTS[@]}"; do
  run sample "${PROMPTS[$i]}" "${MODEL[@]}" --seed "$SEED" -n 4 --out "$OUT/sample-$i.png"
done
run sample "${PROMPTS[0]}" "${MODEL[@]}" --seed "$SEED" --stride 10 -n 4 --out "$OUT/sample-0-100steps.png" \
  --trajectory "$OUT/sample-0.gif"
run sample "${PROMPTS[0]}" "${MODEL[@]}" --seed "$SEED" --stride 50 -n 4 --out "$OUT/sample-0-20steps.png"
run sample "${PROMPTS[0]}" "${MODEL[@]}" --seed "$SEED" --cfg 1 -n 4 --out "$OUT/sample-0-no-cfg.png"
