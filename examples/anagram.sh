#!/usr/bin/env bash
# Course part 1.8: visual anagrams (upside-down flip), plus a 90-degree and a jigsaw illusion.
source "$(dirname "$0")/common.sh"
if [ -n "${EMOJI:-}" ]; then
  run anagram "grinning face" "red heart" "${MODEL[@]}" --seed "$SEED" -n 4 --out "$OUT/anagram-flip.png"
  run anagram "cat face" "dog face" --view rotate_cw "${MODEL[@]}" --seed "$SEED" -n 4 --out "$OUT/anagram-rotate.png"
  exit 0
fi
run anagram "an oil painting of an old man" "an oil painting of people around a campfire" \
  "${MODEL[@]}" --seed "$SEED" -n 4 --noise-level 50 --out "$OUT/anagram-flip.png" --trajectory "$OUT/anagram.gif"
run anagram "a lithograph of a skull" "a lithograph of waterfalls" --view rotate_cw \
  "${MODEL[@]}" --seed "$SEED" -n 4 --noise-level 50 --out "$OUT/anagram-rotate.png"
run anagram "an oil painting of a dog" "an oil painting of a rabbit" --view jigsaw \
  "${MODEL[@]}" --seed "$SEED" -n 4 --noise-level 50 --out "$OUT/anagram-jigsaw.png"
