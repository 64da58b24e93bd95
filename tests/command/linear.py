"""A real (pure Python) training script for batchd's command-runner tests:
linear regression on a noisy random teacher, trained with SGD at the batch
size and learning rate batchd asks for, reporting through the example helper.

MODE (from the spec's environment) makes it misbehave the ways real training
scripts do, so the tests can check how batchd classifies each:
  train (default) | hungry | torch-oom | jax-oom | tf-oom | crash | garbled |
  silent | hang | short | nan | killed
BYTES_PER_SAMPLE emulates activation memory: that many bytes per sample are
held during each step, so memory grows with the batch like a real model's.
"""
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "examples", "python"))
from batchd_trial import Trial  # noqa: E402

DIM = 16
trial = Trial()
mode = os.environ.get("MODE", "train")
bytes_per_sample = int(os.environ.get("BYTES_PER_SAMPLE", "0"))
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


if mode == "silent":
    sys.exit(0)
if mode == "hang":
    # A child too (as a data loader would start): it must die with the trial.
    import subprocess
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"] + sys.argv[1:])
    time.sleep(3600)
if mode == "killed":
    os.kill(os.getpid(), 9)
oom_messages = {
    "torch-oom": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. "
                 "GPU 0 has a total capacity of 79.10 GiB of which 1.19 GiB is free.",
    "jax-oom": "jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory "
               "while trying to allocate 4294967296 bytes.",
    "tf-oom": "tensorflow.python.framework.errors_impl.ResourceExhaustedError: "
              "OOM when allocating tensor with shape[65536,4096] and type float",
}

hog = []
steps = trial.steps - 1 if mode == "short" else trial.steps
for step in range(steps):
    if mode in oom_messages and step == 1:
        print("Traceback (most recent call last):\n  File \"train.py\", line 42, in <module>",
              file=sys.stderr)
        print(oom_messages[mode], file=sys.stderr)
        sys.exit(1)
    if mode == "crash" and step == 1:
        raise ValueError("mat1 and mat2 shapes cannot be multiplied (64x16 and 32x10)")
    if mode == "hungry":
        hog.append(b"\x01" * (32 << 20))  # a leak: 32 MiB more every step
        time.sleep(0.05)
    activations = b"\x01" * (bytes_per_sample * trial.batch_size)
    xs, ys = batch(trial.batch_size)
    g, loss = gradient(xs, ys)
    extra = {}
    if trial.measure_noise(step):
        g_small, _ = gradient(xs[: trial.grad_noise_small_batch], ys[: trial.grad_noise_small_batch])
        extra = {"grad_norm_sq": sum(v * v for v in g), "grad_norm_sq_small": sum(v * v for v in g_small)}
    lr = trial.lr(step)
    weights = [w - lr * v for w, v in zip(weights, g)]
    if mode == "nan" and step == 2:
        loss = float("nan")
    if trial.validate and step == steps - 1:
        extra["val_loss"] = gradient(*batch(512))[1]
    del activations
    trial.report(step, loss, parameters=DIM, **extra)
    if mode == "garbled" and step == 0:
        with open(os.environ["BATCHD_REPORT"], "a") as report:
            report.write("step one done!\n")
