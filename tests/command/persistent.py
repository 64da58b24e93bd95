"""A pure-Python training script for batchd's persistent-trial tests: linear
regression on a noisy random teacher (as linear.py), through the package's
`Trial`, so batchd can run many trials in one process (BATCHD_CONTROL_FD);
without the offer it runs one trial, as any script does.

What a trial does is chosen by the trial's own variables, so that one spec
drives several kinds of trial in one process:
  BATCHD_SEED 13  raise ValueError at step 1
  BATCHD_SEED 14  print "MemoryError: out of memory" and exit 3 at step 2
                  (what batchd.torch does on an out-of-memory error)
  BATCHD_SEED 15  hang, with a child process (sleep) as a data loader would
  BATCHD_SEED 16  NaN losses from step 2 on, every step reported, exit 0
and by the spec's environment:
  PIDS_FILE         append "pid seed batch" per trial
  BYTES_PER_SAMPLE  hold that many bytes per sample during each step
  LEAK_MB           keep that many MiB more per trial, in leakstore (a leak)
  REEXEC_FAIL=1     an import-time side effect that fails when the module
                    runs a second time in one process, placed before Trial():
                    a persistent process's first trial already fails with
                    stage "setup" (trial 1 is itself a re-run); =2: placed
                    after Trial(), so trial 1 passes and trial 2 fails
  STEP_SECONDS      sleep per step (default 0)
The package comes from PYTHONPATH (the spec sets it to python/).
"""
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import leakstore  # noqa: E402
from batchd.trial import Trial  # noqa: E402


def set_start_method_once():
    import multiprocessing

    # Allowed once per process: the module's second run in it raises
    # RuntimeError ("context has already been set") before any step.
    multiprocessing.set_start_method("spawn")


# Before Trial(): the original run and the re-run of trial 1 both pass here,
# so the first trial of a persistent process already fails (stage "setup").
if os.environ.get("REEXEC_FAIL") == "1":
    set_start_method_once()

DIM = 16
trial = Trial()

# After Trial(): the persistent process's first trial passes, its second
# fails (stage "setup"); one process per trial never fails.
if os.environ.get("REEXEC_FAIL") == "2":
    set_start_method_once()

pids_file = os.environ.get("PIDS_FILE")
if pids_file:
    with open(pids_file, "a") as f:
        f.write(f"{os.getpid()} {trial.seed} {trial.batch_size}\n")

bytes_per_sample = int(os.environ.get("BYTES_PER_SAMPLE", "0"))
step_seconds = float(os.environ.get("STEP_SECONDS", "0"))
leakstore.leak(int(os.environ.get("LEAK_MB", "0")))

rng = random.Random(trial.seed)
teacher = [rng.gauss(0, 1) for _ in range(DIM)]
weights = [0.0] * DIM


def batch(n):
    xs = [[rng.gauss(0, 1) for _ in range(DIM)] for _ in range(n)]
    ys = [sum(a * b for a, b in zip(x, teacher)) + rng.gauss(0, 0.5) for x in xs]
    return xs, ys


def gradient(xs, ys):
    g = [0.0] * DIM
    loss = 0.0
    for x, y in zip(xs, ys):
        err = sum(a * b for a, b in zip(x, weights)) - y
        loss += err * err
        for i in range(DIM):
            g[i] += 2 * err * x[i]
    return [v / len(xs) for v in g], loss / len(xs)


if trial.seed == 15:
    import subprocess

    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"] + sys.argv[1:])
    time.sleep(3600)

for step in range(trial.steps):
    if trial.seed == 13 and step == 1:
        raise ValueError("boom at step 1")
    if trial.seed == 14 and step == 2:
        print("MemoryError: out of memory", file=sys.stderr, flush=True)
        raise SystemExit(3)
    activations = b"\x01" * (bytes_per_sample * trial.batch_size)
    xs, ys = batch(trial.batch_size)
    g, loss = gradient(xs, ys)
    extra = {}
    if trial.measure_noise(step):
        small = trial.grad_noise_small_batch
        g_small, _ = gradient(xs[:small], ys[:small])
        extra = {"grad_norm_sq": sum(v * v for v in g), "grad_norm_sq_small": sum(v * v for v in g_small)}
    lr = trial.lr(step)
    weights = [w - lr * v for w, v in zip(weights, g)]
    if trial.seed == 16 and step >= 2:
        loss = float("nan")
    if trial.validate and step == trial.steps - 1:
        extra["val_loss"] = gradient(*batch(512))[1]
    if step_seconds:
        time.sleep(step_seconds)
    del activations
    trial.report(step, loss, parameters=DIM, **extra)
