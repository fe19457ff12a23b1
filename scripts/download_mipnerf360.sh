#!/usr/bin/env bash
# Download the Mip-NeRF 360 dataset (Barron et al. 2022, https://jonbarron.info/mipnerf360/) from the
# authors' Google Cloud bucket: 360_v2.zip (7 scenes: bicycle bonsai counter garden kitchen room stump)
# and 360_extra_scenes.zip (flowers treehill). About 12 GB in all. Each scene holds images/ plus the
# authors' images_2/4/8 (made with ImageMagick's `mogrify -resize`; keep them for the paper protocol:
# LR = images_8, HR = images_2) and sparse/0 (COLMAP).
# Usage: bash scripts/download_mipnerf360.sh [DATA_ROOT]      (default: data/)  -> DATA_ROOT/mipnerf360/<scene>
# Idempotent: scenes already unpacked are kept; a finished archive is not fetched again.
set -euo pipefail
ROOT=$(mkdir -p "${1:-data}" && cd "${1:-data}" && pwd)  # absolute, before any cd
DEST="$ROOT/mipnerf360"
URLS=(
  "http://storage.googleapis.com/gresearch/refraw360/360_v2.zip"
  "http://storage.googleapis.com/gresearch/refraw360/360_extra_scenes.zip"
)
SCENES="bicycle bonsai counter flowers garden kitchen room stump treehill"

. "$(dirname "$0")/lib/fetch.sh" resume

complete() {  # every scene has images/ and sparse/0
  for s in $SCENES; do
    [ -d "$DEST/$s/images" ] && [ -d "$DEST/$s/sparse/0" ] || return 1
  done
}

mkdir -p "$DEST"
if complete; then
  echo "Mip-NeRF 360 already in $DEST ($(echo $SCENES | wc -w) scenes); nothing to do"
  exit 0
fi
for url in "${URLS[@]}"; do
  zip="$DEST/$(basename "$url")"
  if [ ! -f "$zip.done" ]; then
    echo "downloading $url"
    fetch "$url" "$zip.part"
    mv "$zip.part" "$zip"
    touch "$zip.done"
  fi
  if [ -f "$zip" ]; then
    echo "unpacking $zip"
    unzip -q -n "$zip" -d "$DEST"   # -n: never overwrite what is already there
    rm -f "$zip"                    # keep only the .done marker
  fi
done
rm -f "$DEST/flowers.txt" "$DEST/treehill.txt"  # 360_v2.zip's notes that these scenes ship separately
if complete; then
  echo "Mip-NeRF 360 is in $DEST: $SCENES"
  echo "e.g. python train.py -s $DEST/garden -r 8 --eval -m output/mipnerf360/garden"
else
  echo "error: $DEST lacks some scenes after unpacking; delete $DEST/*.done and re-run" >&2
  exit 1
fi
