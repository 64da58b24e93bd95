"""Speak batchd's command-runner protocol from a training script.

batchd runs your script once per trial with BATCHD_* variables set (see
docs/command-runner.md). Train for `trial.steps` steps at `trial.batch_size`
with `trial.lr(step)`, and call `trial.report(step, loss)` after each step.

    from batchd_trial import Trial
    trial = Trial()
    for step in range(trial.steps):
        loss = train_one_step(trial.batch_size, trial.lr(step))
        trial.report(step, loss)
"""
import json
import math
import os
import time


class Trial:
    def __init__(self, environ=os.environ):
        self.batch_size = int(environ["BATCHD_BATCH_SIZE"])
        self.steps = int(environ["BATCHD_STEPS"])
        self.warmup_steps = int(environ.get("BATCHD_WARMUP_STEPS", "0"))
        self.seed = int(environ.get("BATCHD_SEED", "0"))
        self.device = environ.get("BATCHD_DEVICE", "cpu")  # "cuda" or "cpu"
        self.precision = environ.get("BATCHD_PRECISION", "f32")
        self.validate = environ.get("BATCHD_VALIDATE") == "1"
        self.schedule = json.loads(environ["BATCHD_LR_SCHEDULE"])
        small = environ.get("BATCHD_GRAD_NOISE_SMALL_BATCH")
        # When set, also report |g|^2 at this smaller batch (see measure_noise).
        self.grad_noise_small_batch = int(small) if small else None
        self._report = open(environ["BATCHD_REPORT"], "a", buffering=1)

    def lr(self, step):
        s = self.schedule
        if s["kind"] == "constant":
            return s["lr"]
        if s["kind"] == "warmup":
            w = s["warmup_steps"]
            return s["lr"] * (step + 1) / w if w and step < w else s["lr"]
        if s["kind"] == "warmup_cosine":
            w = s["warmup_steps"]
            if step < w:
                return s["lr"] * (step + 1) / w
            span = max(self.steps - w - 1, 1)
            cosine = 0.5 * (1 + math.cos(math.pi * min((step - w) / span, 1.0)))
            return s["lr"] * (s["final_fraction"] + (1 - s["final_fraction"]) * cosine)
        fraction = step / (self.steps - 1) if self.steps > 1 else 0.0
        return s["min_lr"] * (s["max_lr"] / s["min_lr"]) ** fraction

    def measure_noise(self, step):
        """Whether to report grad_norm_sq and grad_norm_sq_small at `step`."""
        return self.grad_noise_small_batch is not None and step >= self.warmup_steps

    def report(self, step, loss, samples=None, **extra):
        """extra: grad_norm_sq, grad_norm_sq_small, val_loss, parameters."""
        loss = float(loss)
        line = {"step": step, "loss": loss if math.isfinite(loss) else None,
                "samples": samples or self.batch_size, "time": time.monotonic(),
                "lr": self.lr(step)}
        line.update({k: v for k, v in extra.items() if v is not None})
        self._report.write(json.dumps(line) + "\n")
