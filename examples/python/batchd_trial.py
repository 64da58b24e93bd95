"""Speak batchd's command-runner protocol from a training script.

This file is now a shim: with the `batchd` package installed
(`pip install ./python`, see docs/python.md) it re-exports
`batchd.trial.Trial`; without it, the standalone copy below (standard library
only) does the same, so copies of this file keep working. New scripts:
`from batchd.trial import Trial`, or `batchd.torch.train` for PyTorch.

batchd runs your script once per trial with BATCHD_* variables set (see
docs/command-runner.md). Train for `trial.steps` steps at `trial.batch_size`
with `trial.lr(step)`, and call `trial.report(step, loss)` after each step.

    from batchd_trial import Trial
    trial = Trial()
    for step in range(trial.steps):
        loss = train_one_step(trial.batch_size, trial.lr(step))
        trial.report(step, loss)
"""
try:
    from batchd.trial import Trial, schedule_lr  # noqa: F401
    STANDALONE = False
except ImportError:
    STANDALONE = True

if STANDALONE:
    import json
    import math
    import os
    import time

    def schedule_lr(schedule, step, steps):
        """The LR at `step` of `steps`, exactly as batchd's LrSchedule::lr_at."""
        kind = schedule["kind"]
        if kind == "constant":
            return float(schedule["lr"])
        if kind == "warmup":
            lr, w = float(schedule["lr"]), int(schedule["warmup_steps"])
            return lr if w == 0 or step >= w else lr * (step + 1) / w
        if kind == "exponential_sweep":
            fraction = 0.0 if steps <= 1 else step / (steps - 1)
            return float(schedule["min_lr"]) * (float(schedule["max_lr"]) / float(schedule["min_lr"])) ** fraction
        if kind == "warmup_cosine":
            lr, w, final = float(schedule["lr"]), int(schedule["warmup_steps"]), float(schedule["final_fraction"])
            if step < w:
                return lr * (step + 1) / w
            decay_steps = max(steps - w, 1)
            progress = 1.0 if decay_steps <= 1 else (step - w) / (decay_steps - 1)
            cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
            return lr * (final + (1.0 - final) * cosine)
        raise ValueError("unknown LR schedule kind %r" % (kind,))

    def _json_value(value):
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if hasattr(value, "__float__"):
            number = float(value)
            return number if math.isfinite(number) else None
        return value

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
            measurements = environ.get("BATCHD_GRAD_NOISE_MEASUREMENTS")
            # On how many steps (the last ones); None: every step after warm-up.
            self.grad_noise_measurements = int(measurements) if measurements else None
            self.report_path = environ["BATCHD_REPORT"]
            self._report = open(self.report_path, "a", buffering=1, encoding="utf-8")

        def lr(self, step):
            return schedule_lr(self.schedule, step, self.steps)

        def measure_noise(self, step):
            """Whether to report grad_norm_sq and grad_norm_sq_small at `step`:
            the last BATCHD_GRAD_NOISE_MEASUREMENTS steps after warm-up."""
            if self.grad_noise_small_batch is None or step < self.warmup_steps:
                return False
            if self.grad_noise_measurements is None:
                return True
            return step >= self.steps - self.grad_noise_measurements

        def report(self, step, loss, samples=None, **extra):
            """extra: grad_norm_sq, grad_norm_sq_small, val_loss, parameters, train_samples."""
            at = extra.pop("time", None)
            loss = float(loss)
            line = {"step": step, "loss": _json_value(loss),
                    "samples": self.batch_size if samples is None else int(samples),
                    "time": time.monotonic() if at is None else float(at), "lr": self.lr(step)}
            line.update({k: _json_value(v) for k, v in extra.items() if v is not None})
            self._report.write(json.dumps(line, allow_nan=False) + "\n")
            self._report.flush()

        def close(self):
            self._report.close()
