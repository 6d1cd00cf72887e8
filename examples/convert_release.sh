#!/usr/bin/env bash
# Convert released CLIP-Mamba checkpoints (Hugging Face weiquan/mamba-clip) into open_clip safetensors,
# both tower copies: the EMA towers (what the report evaluates on 25 datasets) and the online towers.
#
#   bash examples/convert_release.sh RELEASE.pt [MODEL] [OUT_DIR]
#
# e.g. RELEASE.pt = VMamba_S_clip.pt, MODEL = vmamba-s. Writes OUT_DIR/MODEL-ema.safetensors and
# OUT_DIR/MODEL-online.safetensors; load with open_clip.create_model(MODEL, pretrained=FILE).
# (Or skip this: pretrained="yfcc15m" / "yfcc15m-online" downloads and converts once, then caches.)
set -euo pipefail
SRC=${1:?usage: convert_release.sh RELEASE.pt [MODEL] [OUT_DIR]}
MODEL=${2:-}
OUT=${3:-.}
mkdir -p "$OUT"
NAME=${MODEL:-$(basename "${SRC%.*}")}
for towers in ema online; do
    mamba-clip convert "$SRC" -o "$OUT/$NAME-$towers.safetensors" --towers "$towers" ${MODEL:+--model "$MODEL"}
done
