#!/usr/bin/env bash
# The BUSI segmentation members behind members/busi and the segmentation part of reports/, on this
# project's CPU machine (2 cores, no GPU): two processes side by side, one core each. Run from the
# repository root with the shared development data (../shared/data/busi, 647 lesion images with masks).
#
# A shortened version of the lightweight U-Net paper's recipe (`--recipe unet`): 32 px instead of 256,
# 15 epochs instead of up to 100, Adam's learning rate 1e-3 instead of 1e-4 (1e-4 had not converged in
# 6 epochs of a trial fold: Dice 0.50 against 0.64). Everything else is the paper's: Dice loss, batch 8,
# L2 1e-4, the learning rate halved after 5 epochs without a better validation loss, flips, rotation,
# scale, translation and shear of image and mask. Every member records its own command in member.json.
set -euo pipefail
DATA=${DATA:-../shared/data}
COMMON=(--dataset "seg:$DATA/busi" --data-dir "$DATA" --recipe unet --size 32 --epochs 15 --lr 1e-3
        --device cpu --threads 1 --workers 0 --no-progress --no-keep-weights)

a() {  # Lighter U-net@16 under Adam, then the group-size comparison at @4
  ens train "${COMMON[@]}" --model lighter-unet@16 --opt adam --n 2
  ens train "${COMMON[@]}" --model lighter-unet@4 --opt adam --variant c4 --n 1
}

b() {  # Lighter U-net@16 under DGrad, then @64
  ens train "${COMMON[@]}" --model lighter-unet@16 --opt dgrad --n 2
  ens train "${COMMON[@]}" --model lighter-unet@64 --opt adam --variant c64 --n 1
}

case "${1:-all}" in
  a) a ;;
  b) b ;;
  all) a; b ;;
esac
