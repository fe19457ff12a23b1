#!/usr/bin/env bash
# Download the LLFF forward-facing scenes as prepared by the NeRF authors (nerf_llff_data.zip, about
# 1.9 GB; fern flower fortress horns leaves orchids room trex), from their Google Drive folder
# https://drive.google.com/drive/folders/128yBriW1IG_3NJ5Rp7APSTZsJqdJdfc1 (file id below). Each scene
# holds images/ (JPG), images_4/ and images_8/ (PNG, made with ImageMagick's `mogrify -resize`),
# sparse/0 (COLMAP) and poses_bounds.npy. The paper protocol also needs images_2 (the HR reference),
# which the archive lacks: this script makes it with tools/resize_images.py --factors 2 (area
# averaging; ImageMagick-made images_2 would give slightly different numbers, see that tool's notes).
# Usage: bash scripts/download_llff.sh [DATA_ROOT]      (default: data/)  -> DATA_ROOT/nerf_llff_data/<scene>
# Google Drive may refuse scripted downloads (quota, changed confirmation page): then download the file
# by hand from the folder above, put it at DATA_ROOT/nerf_llff_data.zip and re-run this script.
# Idempotent: an unpacked dataset is kept; a finished archive is not fetched again.
set -euo pipefail
ROOT=$(mkdir -p "${1:-data}" && cd "${1:-data}" && pwd)  # absolute, before any cd
cd "$(dirname "$0")/.."
DEST="$ROOT/nerf_llff_data"
ZIP="$ROOT/nerf_llff_data.zip"
FILE_ID="16VnMcF1KJYxN9QId6TClMsZRahHNMW5g"
URL="https://drive.usercontent.google.com/download?id=$FILE_ID&export=download&confirm=t"
SCENES="fern flower fortress horns leaves orchids room trex"

. scripts/lib/fetch.sh  # after the cd to the repository root

complete() {
  for s in $SCENES; do
    [ -d "$DEST/$s/images" ] && [ -d "$DEST/$s/sparse/0" ] || return 1
  done
}

mkdir -p "$ROOT"
if ! complete; then
  if [ ! -f "$ZIP" ]; then
    echo "downloading nerf_llff_data.zip (Google Drive id $FILE_ID)"
    fetch "$URL" "$ZIP.part"
    if ! unzip -tq "$ZIP.part" >/dev/null 2>&1; then
      rm -f "$ZIP.part"
      echo "error: Google Drive did not return the zip (quota or a confirmation page); download" \
           "nerf_llff_data.zip by hand from https://drive.google.com/drive/folders/128yBriW1IG_3NJ5Rp7APSTZsJqdJdfc1" \
           "to $ZIP and re-run" >&2
      exit 1
    fi
    mv "$ZIP.part" "$ZIP"
  fi
  echo "unpacking $ZIP"
  unzip -q -n "$ZIP" -d "$ROOT"
  rm -rf "$ROOT/__MACOSX"  # macOS metadata some copies of the archive carry
  complete || { echo "error: $ZIP did not hold every scene ($SCENES); delete it and re-run" >&2; exit 1; }
  rm -f "$ZIP"
fi

PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
for s in $SCENES; do
  if [ ! -d "$DEST/$s/images_2" ]; then
    "$PY" tools/resize_images.py "$DEST/$s" --factors 2 --quiet
  fi
done
echo "LLFF is in $DEST: $SCENES (images, images_2, images_4, images_8, sparse/0)"
echo "e.g. python train.py -s $DEST/fern -r 8 --eval -m output/llff/fern"
