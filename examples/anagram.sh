#!/usr/bin/env bash
# Course part 1.8: visual anagrams. One image shows the first prompt upright and the second upside
# down (--view flip). On the built-in model: a light bulb that is a pear upside down, and a drop of
# water that is a balloon; pairs chosen by looking at ten candidates (examples/README.md).
# usage: bash examples/anagram.sh
source "$(dirname "$0")/common.sh"
if [ -n "$EMOJI" ]; then
  run anagram "light bulb" "pear" --view flip "${MODEL[@]}" --seed "$SEED" -n 4 --out "$OUT/anagram-flip.png" \
    --trajectory "$OUT/anagram.gif"
  run anagram "droplet" "balloon" --view flip "${MODEL[@]}" --seed "$SEED" -n 4 --out "$OUT/anagram-flip-2.png"
  exit 0
fi
run anagram "an oil painting of an old man" "an oil painting of people around a campfire" \
  "${MODEL[@]}" --seed "$SEED" -n 4 --noise-level 50 --out "$OUT/anagram-flip.png" --trajectory "$OUT/anagram.gif"
run anagram "a lithograph of a skull" "a lithograph of waterfalls" --view rotate_cw \
  "${MODEL[@]}" --seed "$SEED" -n 4 --noise-level 50 --out "$OUT/anagram-rotate.png"
run anagram "an oil painting of a dog" "an oil painting of a rabbit" --view jigsaw \
  "${MODEL[@]}" --seed "$SEED" -n 4 --noise-level 50 --out "$OUT/anagram-jigsaw.png"
