#!/usr/bin/env bash
# Train a CLIP-Mamba model with the stock open_clip trainer on a CSV of image paths and captions.
#
#   bash examples/train_csv.sh train.csv [MODEL] [OUT]
#
# train.csv is tab-separated with a header: filepath<TAB>title. MODEL defaults to vmamba-s (any of
# vmamba-{t220,s,b,nano}, simba-{s,b,l,nano}); OUT (default ./logs) gets OUT/<name>/checkpoints/*.pt,
# which open_clip.create_model(MODEL, pretrained=PATH) and `mamba-clip zeroshot --pretrained PATH` load.
# Extra trainer flags can follow in EXTRA, e.g. EXTRA="--force-image-size 64 --device cpu".
set -euo pipefail
CSV=${1:?usage: train_csv.sh train.csv [MODEL] [OUT]}
MODEL=${2:-vmamba-s}
OUT=${3:-./logs}
NAME=${NAME:-${MODEL}-$(date +%Y%m%d-%H%M%S)}

# Flags that matter for our towers:
#  --precision amp_bf16   the scan keeps an fp32 state; bf16 autocast is safe and fast on GPUs
#  --grad-checkpointing   VMamba / SiMBA stages support timm's gradient checkpointing
#  --lock-image / --lock-image-freeze-bn-stats   fine-tune only the text tower (SiMBA's stem has BatchNorm)
#  --torchcompile         the scan ops are torch custom ops: compiles without graph breaks
python -m open_clip_train.main \
    --model "$MODEL" --train-data "$CSV" --dataset-type csv \
    --csv-img-key filepath --csv-caption-key title --csv-separator $'\t' \
    --batch-size "${BATCH:-128}" --epochs "${EPOCHS:-32}" --lr "${LR:-5e-4}" --wd 0.2 --warmup "${WARMUP:-1000}" \
    --workers "${WORKERS:-8}" --precision "${PRECISION:-amp_bf16}" --seed 0 \
    --logs "$OUT" --name "$NAME" --save-frequency 1 --zeroshot-frequency 0 --report-to "" \
    ${EXTRA:-}

# Several GPUs on one node: the same flags under torchrun, e.g.
#   torchrun --standalone --nproc_per_node 8 -m open_clip_train.main --model "$MODEL" ... \
#       --local-loss --gather-with-grad
