#!/usr/bin/env bash
# Throughput of the pretraining step on a lent GPU: samples/s and MFU of the paper configuration (ViT-B/16 at
# 224 px + BERT-base at 256 tokens, batch 64, bf16, fused Adam) at mask ratio 0 and 0.5, without and with
# --compile, then the image loader's images/s from the cache with 16 workers. MFU = counted FLOPs per step
# (torch.utils.flop_counter) x steps/s / 989 TFLOP/s (bf16 dense peak, H100/H200 SXM).
#
#   scripts/gpu_throughput.sh [OUT_DIR]          # GPU: writes throughput.txt / throughput.json there
#   scripts/gpu_throughput.sh --cpu [OUT_DIR]    # tiny sizes on the CPU: shows that the run works
#
# The compiled extension is optional here (masked_patch_gather / gather_patches fall back to their references
# with one warning); build it first with scripts/device_check.sh to time the fused kernels. The loader reads the
# demo MIMIC-CXR copy (generated under data/demo on first use, a few minutes on a fresh machine).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=()
if [ "${1:-}" = "--cpu" ]; then mode=(--cpu); shift; fi
out="${1:-${OUT:-throughput_out}}"
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
"$python" -m cgns.bench.throughput "${mode[@]}" --json "$out/throughput.json" 2>&1 | tee "$out/throughput.txt"
