#!/usr/bin/env bash
# The daemon on a CUDA machine, with a release binary built elsewhere:
#   scripts/gpu-daemon-check.sh [BATCHD_BINARY] [OUT_DIR]
# Starts `batchd serve` under a fake systemd notify socket, drops a GPU job
# (device auto) and a CPU-pinned job, which must run in parallel on their
# two devices, scrapes /metrics while they run (real NVML series), stops the
# daemon with SIGTERM and prints a short table. Files land in OUT_DIR:
# metrics.txt (the last scrape, for `promtool check metrics`), jobs.json,
# notify.log, serve.log.
set -u
cd "$(dirname "$0")/.."
BIN="${1:-target/release/batchd}"
OUT_DIR="${2:-${OUT:-/tmp/batchd-gpu-daemon-check}}"
mkdir -p "$OUT_DIR"
[ -d /usr/local/cuda ] && export CUDA_PATH="${CUDA_PATH:-/usr/local/cuda}"
ROOT="$(mktemp -d)"
mkdir -p "$ROOT/jobs"
PORT=18477
export BATCHD_CONFIG=/dev/null NOTIFY_SOCKET="$ROOT/notify.sock" WATCHDOG_USEC=10000000

# A stand-in for systemd's notify socket: logs every datagram.
python3 - "$NOTIFY_SOCKET" "$OUT_DIR/notify.log" <<'PY' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(sys.argv[1])
with open(sys.argv[2], "w") as log:
    while True:
        message = s.recv(4096).decode()
        log.write(f"{time.time():.1f} {message!r}\n"); log.flush()
PY
NOTIFY_PID=$!
sleep 0.5

"$BIN" serve --jobs-dir "$ROOT/jobs" --state-dir "$ROOT/state" --listen "127.0.0.1:$PORT" \
    > "$OUT_DIR/serve.log" 2>&1 &
SERVE_PID=$!
get() { python3 -c 'import sys,urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=30).read().decode())' "http://127.0.0.1:$PORT$1" 2>/dev/null; }
for _ in $(seq 60); do get /readyz >/dev/null && break; sleep 1; done
cp scripts/gpu/daemon-gpu.toml scripts/gpu/daemon-cpu.toml "$ROOT/jobs/"
STARTED=$(date +%s)
MAX_RUNNING=0
for _ in $(seq 240); do
    get /metrics > "$OUT_DIR/metrics.txt"
    running=$(awk '$1 == "batchd_searches_running" {print $2}' "$OUT_DIR/metrics.txt")
    [ "${running:-0}" -gt "$MAX_RUNNING" ] && MAX_RUNNING=$running
    get /v1/jobs > "$OUT_DIR/jobs.json"
    # Jobs not yet picked up count as left.
    left=$(python3 -c 'import json,sys; jobs=json.load(open(sys.argv[1]))["jobs"]; print(2 - len(jobs) + sum(j["state"] in ("queued","running") for j in jobs))' "$OUT_DIR/jobs.json" 2>/dev/null || echo 2)
    [ "$left" = 0 ] && break
    sleep 1
done
ELAPSED=$(( $(date +%s) - STARTED ))
get /metrics > "$OUT_DIR/metrics.txt"
for job in daemon-gpu daemon-cpu; do
    get "/v1/jobs/$job" > "$OUT_DIR/$job.json"
    get "/v1/jobs/$job/recommendation" > "$OUT_DIR/$job.recommendation.json"
done
kill -TERM "$SERVE_PID"; wait "$SERVE_PID"; SERVE_RC=$?
sleep 0.5; kill "$NOTIFY_PID" 2>/dev/null

echo "== jobs (both dropped at once; $ELAPSED s until neither was queued or running)"
python3 - "$OUT_DIR" <<'PY'
import json, sys, os
out = sys.argv[1]
print(f"{'job':<11} {'device':<8} {'state':<7} {'batch':>7} {'max fit':>8} {'trials':>6} {'samples/s':>10} {'peak mem':>10}  run")
for name in ("daemon-gpu", "daemon-cpu"):
    try:
        job = json.load(open(os.path.join(out, f"{name}.json")))
    except Exception as e:
        print(f"{name:<11} no answer ({e})"); continue
    try:
        rec = json.load(open(os.path.join(out, f"{name}.recommendation.json")))
    except Exception:
        rec = {}
    run = (job.get("history") or [{}])[-1]
    seconds = (run.get("finished_at_unix_s") or 0) - (run.get("started_at_unix_s") or 0)
    sps = (rec.get("throughput") or {}).get("expected_samples_per_second")
    peak = (rec.get("memory") or {}).get("expected_peak_bytes")
    max_fit = ((rec.get("memory") or {}).get("max_fit") or {}).get("batch_size")
    trials = len((rec.get("evidence") or {}).get("trials") or []) or run.get("trials") or 0
    print(f"{name:<11} {job.get('device') or '-':<8} {job['state']:<7} {rec.get('batch_size') or '-':>7} "
          f"{max_fit or '-':>8} {trials:>6} "
          f"{(f'{sps:.0f}' if sps else '-'):>10} {(f'{peak / 2**30:.2f}GiB' if peak else '-'):>10}  "
          f"{run.get('outcome')} in {seconds} s {job.get('error') or ''}")
PY
echo "== metrics (last scrape)"
grep -E '^batchd_(nvml_up|searches_running|queue_depth|gpu_memory_total_bytes|gpu_memory_used_bytes|gpu_utilization_ratio|gpu_temperature_celsius|gpu_power_watts|job_recommended_batch_size|job_max_fit_batch_size|job_expected_throughput_samples_per_second|job_expected_peak_memory_bytes|trials_total)' "$OUT_DIR/metrics.txt" | grep -v ' 0$' | head -30
echo "max batchd_searches_running seen: $MAX_RUNNING (2 = GPU and CPU jobs in parallel)"
echo "== sd_notify messages"
cut -c1-100 "$OUT_DIR/notify.log" | awk '{ $1=""; print }' | sort | uniq -c | sort -rn | head
echo "serve exit status after SIGTERM: $SERVE_RC"
