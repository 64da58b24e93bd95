#!/usr/bin/env bash
# One prepared check for a CUDA machine, run with a release binary built
# elsewhere and carried over:
#   scripts/gpu-check.sh [BATCHD_BINARY] [OUT_DIR] [advise|advise-only|pytorch-only]
# It lists the GPUs, runs a CUDA trial of each model kind, measures the
# trial start-up cost with a cold and a warm kernel cache, provokes an
# out-of-memory and shows how it was classified, then prints a table.
# `advise` adds a full `batchd advise` of the h=8192 MLP (max-fit search on
# the whole GPU); `advise-only` runs just that. Where PyTorch with CUDA is
# installed, it also runs the PyTorch command job of examples/pytorch
# (trials, a provoked CUDA out-of-memory, and an advise); `pytorch-only`
# runs just that.
set -u
cd "$(dirname "$0")/.."
BIN="${1:-target/release/batchd}"
OUT_DIR="${2:-${OUT:-/tmp/batchd-gpu-check}}"
mkdir -p "$OUT_DIR"
export BATCHD_CONFIG=/dev/null
[ -d /usr/local/cuda ] && export CUDA_PATH="${CUDA_PATH:-/usr/local/cuda}"
CACHE="$(mktemp -d)/kernels"
RESULTS="$OUT_DIR/results.jsonl"
: > "$RESULTS"

echo "== batchd gpus"
"$BIN" gpus 2>&1 | tee "$OUT_DIR/gpus.txt"

# trial LABEL SPEC BATCH STEPS [extra flags...]
trial() {
    local label="$1" spec="$2" batch="$3" steps="$4"
    shift 4
    local started=$(date +%s.%N)
    "$BIN" trial "$spec" --device cuda:0 --batch-size "$batch" --steps "$steps" \
        --kernel-cache "$CACHE" --json "$@" > "$OUT_DIR/$label.json" 2> "$OUT_DIR/$label.stderr"
    local ended=$(date +%s.%N)
    python3 - "$label" "$OUT_DIR/$label.json" "$started" "$ended" >> "$RESULTS" <<'PY'
import json, sys
label, path, t0, t1 = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
try:
    r = json.load(open(path))
except Exception as e:
    r = {"outcome": "no-json", "reason": str(e)}
r["label"] = label
r["process_seconds"] = t1 - t0
r.pop("losses", None); r.pop("learning_rates", None)
print(json.dumps(r))
PY
    echo "   $label: $(tail -1 "$RESULTS" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["outcome"], r.get("reason") or "")')"
}

MODE="${3:-}"
if [ "$MODE" != "advise-only" ] && [ "$MODE" != "pytorch-only" ]; then
echo "== trials (cold kernel cache first, then warm)"
trial mlp-cold        scripts/gpu/mlp-h8192.toml 4096 20 --lr 1e-4
trial mlp-warm        scripts/gpu/mlp-h8192.toml 4096 20 --lr 1e-4
trial mlp-b65536      scripts/gpu/mlp-h8192.toml 65536 8 --lr 1e-4
trial cnn-f32         examples/jobs/cnn-synthetic.toml 256 20
trial gpt-f16-synth   examples/jobs/transformer-synthetic.json 256 20
trial gpt-bf16-text   examples/jobs/transformer-text.toml 128 20
trial gpt-bf16-warm   examples/jobs/transformer-text.toml 128 20
echo "== provoking an out-of-memory (batch 1,048,576 of the h=8192 MLP)"
trial mlp-oom-b1M     scripts/gpu/mlp-h8192.toml 1048576 3 --lr 1e-4
trial mlp-after-oom   scripts/gpu/mlp-h8192.toml 4096 8 --lr 1e-4
fi

if [ "$MODE" != "advise-only" ]; then
    if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        echo "== PyTorch command job (examples/pytorch/pytorch-mlp.toml, runner = \"command\")"
        python3 -c 'import torch; print("   torch", torch.__version__, "CUDA", torch.version.cuda)'
        trial torch-b4096       examples/pytorch/pytorch-mlp.toml 4096 20
        trial torch-b65536      examples/pytorch/pytorch-mlp.toml 65536 8
        trial torch-oom-b4M     examples/pytorch/pytorch-mlp.toml 4194304 3
        trial torch-after-oom   examples/pytorch/pytorch-mlp.toml 4096 8
        echo "== batchd advise on the PyTorch job"
        /usr/bin/time -f "advise wall %e s" "$BIN" advise scripts/gpu/pytorch-mlp-advise.toml \
            > "$OUT_DIR/advise-pytorch.txt" 2> "$OUT_DIR/advise-pytorch.stderr"
        sed -n '/recommendation/,/throughput curve/p' "$OUT_DIR/advise-pytorch.txt" | head -30
        sed -n '/  why/,$p' "$OUT_DIR/advise-pytorch.txt" | head -60
        tail -1 "$OUT_DIR/advise-pytorch.stderr"
    else
        echo "== PyTorch with CUDA is not installed here: command-job check skipped"
    fi
fi

if [ "$MODE" = "advise" ] || [ "$MODE" = "advise-only" ]; then
    echo "== batchd advise on the h=8192 MLP (max-fit search on the whole GPU)"
    /usr/bin/time -f "advise wall %e s" "$BIN" advise scripts/gpu/mlp-h8192-advise.toml --kernel-cache "$CACHE" \
        > "$OUT_DIR/advise.txt" 2> "$OUT_DIR/advise.stderr"
    sed -n '1,/throughput curve/p' "$OUT_DIR/advise.txt"
    sed -n '/  trials/,$p' "$OUT_DIR/advise.txt"
    tail -1 "$OUT_DIR/advise.stderr"
fi

echo
echo "== summary"
python3 - "$RESULTS" <<'PY' | tee "$OUT_DIR/summary.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def gib(b): return "-" if b is None else f"{b/2**30:.1f}GiB"
def num(x, f="{:.0f}"): return "-" if x is None else f.format(x)
print(f"{'trial':<16}{'batch':>9} {'outcome':<15}{'samples/s':>12}{'peak mem':>10} {'src':<6}{'start-up':>9}{'process':>9}  note")
for r in rows:
    note = (r.get("reason") or "")[:70]
    print(f"{r['label']:<16}{r.get('batch_size',0):>9} {r['outcome']:<15}{num(r.get('samples_per_second')):>12}"
          f"{gib(r.get('peak_memory_bytes')):>10} {(r.get('peak_memory_source') or '-'):<6}"
          f"{num(r.get('startup_seconds'),'{:.2f}s'):>9}{num(r.get('process_seconds'),'{:.1f}s'):>9}  {note}")
PY
