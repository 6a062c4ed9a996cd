#!/usr/bin/env bash
# Regenerates every image in docs/gallery/ with the built-in emoji model (CPU, offline).
# usage: bash docs/make_gallery.sh        (from the repository root, after installing dfedit)
set -euo pipefail
G=docs/gallery
M=(--model emoji --device cpu --seed 0 --quiet)
mkdir -p "$G"

# 1. samples for a dozen prompts: eight training captions, then four paraphrases it never saw,
#    then two emoji of the held-out split (never trained on): what it does with a name it never saw
i=0
for p in "grinning face" "red heart" "ghost" "pile of poo" "unicorn" "snowman" "fire" "pizza" \
         "happy face" "a sad face" "a big red heart" "crying laughing face" "thumbs up" "rocket"; do
  i=$((i + 1))
  dfedit sample "$p" "${M[@]}" -n 4 --out "$G/sample-$(printf %02d $i).png"
done

# 2. an SDEdit sweep of a hand-drawn sketch (docs/gallery/sketch.png, drawn by docs/sketch.py)
dfedit sdedit "$G/sketch.png" --prompt "grinning face" --i-start 10 --i-start 22 --i-start 27 --i-start 30 \
  "${M[@]}" --out "$G/sdedit-sketch.png"

# 3. inpainting: regenerate the lower half of a generated face as another face
dfedit sample "grinning face" "${M[@]}" --seed 1 --out "$G/inpaint-input.png"
rm -f "$G/inpaint-input.display.png"  # the enlarged copy: the page shows the 32 px input itself
python - <<'PY'
from PIL import Image
m = Image.new("L", (32, 32), 0)
m.paste(255, (0, 16, 32, 32))
m.save("docs/gallery/inpaint-mask.png")
PY
dfedit inpaint "$G/inpaint-input.png" --mask "$G/inpaint-mask.png" --prompt "face with tongue" \
  --jump-length 3 --jump-n-sample 3 "${M[@]}" -n 4 --out "$G/inpaint.png"

# 4. a visual anagram: one image, "light bulb" upright and "pear" upside down (examples/README.md: how
#    the pair was chosen)
dfedit anagram "light bulb" "pear" --view flip "${M[@]}" -n 4 --out "$G/anagram.png"

# 5. a hybrid: the low frequencies of a red apple, the high frequencies of a grinning face
dfedit hybrid "red apple" "grinning face" "${M[@]}" -n 4 --out "$G/hybrid.png"
