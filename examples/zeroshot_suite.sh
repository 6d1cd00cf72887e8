#!/usr/bin/env bash
# Zero-shot classification suite (the report's Table 1) on datasets you have, plus your own.
#
#   bash examples/zeroshot_suite.sh MODEL PRETRAINED DATASET_ROOT OUT [DATASET ...]
#
# DATASET_ROOT holds one folder per dataset (clip_benchmark's layout); missing ones are listed with
# how to get them, and the run goes on. Your own labelled images (one folder per class) become a
# dataset with `mamba-clip make-wds`, read as wds/NAME. Results: OUT/<model>/<dataset>.json,
# OUT/table1.{csv,md,png} beside the published numbers. Reruns skip finished datasets.
set -euo pipefail
MODEL=${1:?usage: zeroshot_suite.sh MODEL PRETRAINED DATASET_ROOT OUT [DATASET ...]}
PRETRAINED=${2:?}
ROOT=${3:?}
OUT=${4:?}
shift 4

# Optional: your own ImageFolder as a dataset (set MY_IMAGES=/path/to/folder, MY_NAME=mydata).
if [[ -n "${MY_IMAGES:-}" ]]; then
    mamba-clip make-wds "$MY_IMAGES" "$ROOT/${MY_NAME:-mydata}" ${MY_TEMPLATES:+--templates "$MY_TEMPLATES"}
    set -- "$@" "wds/${MY_NAME:-mydata}"
fi

DATASETS=()
(($#)) && DATASETS=(--datasets "$@")
mamba-clip zeroshot --model "$MODEL" --pretrained "$PRETRAINED" --dataset-root "$ROOT" --output "$OUT" \
    "${DATASETS[@]}" --batch-size "${BATCH:-64}" --workers "${WORKERS:-4}" ${EXTRA:-}
