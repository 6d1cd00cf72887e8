#!/usr/bin/env bash
# OOD robustness and shape bias with the model-vs-human protocol, on 16-category images you have.
#
#   bash examples/ood_eval.sh MODEL[:PRETRAINED] SOURCE_IMAGEFOLDER OUT [CUE_CONFLICT_DIR]
#
# SOURCE_IMAGEFOLDER has one folder per model-vs-human category (airplane, bear, ... truck). The
# script writes the 12 parametric manipulations of it, evaluates the model on them (and on the
# cue-conflict stimuli for shape bias, if given) and writes OUT/summary.json with Figure-1/2-style plots.
set -euo pipefail
MODEL=${1:?usage: ood_eval.sh MODEL[:PRETRAINED] SOURCE OUT [CUE_CONFLICT_DIR]}
SOURCE=${2:?}
OUT=${3:?}
CUE=${4:-}

mamba-clip ood make-datasets --source "$SOURCE" --out "$OUT/datasets" \
    --datasets ${DATASETS:-contrast high-pass low-pass uniform-noise phase-scrambling rotation} \
    --mode split ${MAX_PER_CATEGORY:+--max-per-category "$MAX_PER_CATEGORY"}

SETS=()
for d in "$OUT"/datasets/*/; do SETS+=("$(basename "$d")=$d"); done
[[ -n "$CUE" ]] && SETS+=("cue-conflict=$CUE")
mamba-clip ood evaluate --models "$MODEL" --datasets "${SETS[@]}" --out "$OUT" ${EXTRA:-}
