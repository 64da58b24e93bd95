#!/usr/bin/env bash
# HTML reports from real GPU searches, for a look (and a browser
# screenshot) on a machine that has a browser:
#   scripts/gpu-report-check.sh [BATCHD_BINARY] [OUT_DIR]
# Writes OUT_DIR/burn-mlp.html (a Burn job on cuda:0) and, where PyTorch
# with CUDA is installed, OUT_DIR/pytorch-mlp.html (the command job).
set -u
cd "$(dirname "$0")/.."
BIN="${1:-target/release/batchd}"
OUT_DIR="${2:-${OUT:-/tmp/batchd-gpu-report-check}}"
mkdir -p "$OUT_DIR"
export BATCHD_CONFIG=/dev/null
[ -d /usr/local/cuda ] && export CUDA_PATH="${CUDA_PATH:-/usr/local/cuda}"
echo "== Burn MLP on the GPU (scripts/gpu/daemon-gpu.toml)"
/usr/bin/time -f "advise wall %e s" "$BIN" advise scripts/gpu/daemon-gpu.toml \
    --report "$OUT_DIR/burn-mlp.html" > "$OUT_DIR/burn-mlp.txt" 2> "$OUT_DIR/burn-mlp.stderr"
head -4 "$OUT_DIR/burn-mlp.txt"; tail -1 "$OUT_DIR/burn-mlp.stderr"
if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "== PyTorch command job (scripts/gpu/pytorch-mlp-advise.toml)"
    /usr/bin/time -f "advise wall %e s" "$BIN" advise scripts/gpu/pytorch-mlp-advise.toml \
        --report "$OUT_DIR/pytorch-mlp.html" > "$OUT_DIR/pytorch-mlp.txt" 2> "$OUT_DIR/pytorch-mlp.stderr"
    head -4 "$OUT_DIR/pytorch-mlp.txt"; tail -1 "$OUT_DIR/pytorch-mlp.stderr"
fi
ls -la "$OUT_DIR"/*.html
