#!/usr/bin/env bash
# Hessian max-eigenvalue spectra (the report's Figure 3; Park & Kim 2022) of one or more models on
# your labelled images, and the overlaid plot.
#
#   bash examples/hessian_spectrum.sh DATA OUT MODEL[:PRETRAINED] [MODEL[:PRETRAINED] ...]
#
# DATA is an ImageFolder (one folder per class; the zero-shot loss against class prototypes from the
# text tower) or an open_clip CSV of image paths and captions (the CLIP loss). Each model gets a
# resumable run folder OUT/<model> (eigenvalues.json + .npz, per batch); OUT/spectra.png overlays them
# with the count of negative eigenvalues. Settings via the environment: N_SAMPLES (report: 3000),
# BATCH (15), K (5), METHOD (power = PyHessian's power iteration as in the report, or lanczos),
# PARAMS (image, text, all or a name pattern), EXTRA (more flags, e.g. "--image-size 64").
set -euo pipefail
DATA=${1:?usage: hessian_spectrum.sh DATA OUT MODEL[:PRETRAINED] ...}
OUT=${2:?}
shift 2
(($#)) || { echo "give at least one MODEL[:PRETRAINED]" >&2; exit 2; }

RUNS=()
for spec in "$@"; do
    model=${spec%%:*}
    pretrained=${spec#*:}
    [[ "$pretrained" == "$spec" ]] && pretrained=""
    mamba-clip hessian --model "$model" ${pretrained:+--pretrained "$pretrained"} --data "$DATA" \
        --out "$OUT/$model" --n-samples "${N_SAMPLES:-3000}" --batch-size "${BATCH:-15}" --k "${K:-5}" \
        --method "${METHOD:-power}" --params "${PARAMS:-image}" ${EXTRA:-}
    RUNS+=("$OUT/$model")
done
mamba-clip hessian plot "${RUNS[@]}" --out "$OUT/spectra.png"
