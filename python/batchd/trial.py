"""batchd's command-runner protocol (docs/command-runner.md) as `Trial`.

batchd runs your script once per trial with BATCHD_* variables set. Train for
`trial.steps` steps at `trial.batch_size` with `trial.lr(step)`, and call
`trial.report(step, loss)` after each step::

    from batchd.trial import Trial
    trial = Trial()
    for step in range(trial.steps):
        loss = train_one_step(trial.batch_size, trial.lr(step))
        trial.report(step, loss)
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import IO, Any, Dict, Mapping, Optional

from .schedule import schedule_lr

__all__ = ["Trial", "schedule_lr"]


def _json_value(value: Any) -> Any:
    """A report value as JSON: tensors and numpy scalars become numbers,
    non-finite floats become null (JSON has no NaN)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float) or hasattr(value, "__float__"):
        number = float(value)
        return number if math.isfinite(number) else None
    return value


class Trial:
    """One trial, as batchd describes it in the environment."""

    batch_size: int
    steps: int
    warmup_steps: int
    seed: int
    device: str
    precision: str
    validate: bool
    schedule: Dict[str, Any]
    grad_noise_small_batch: Optional[int]
    grad_noise_measurements: Optional[int]

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self.batch_size = int(environ["BATCHD_BATCH_SIZE"])
        self.steps = int(environ["BATCHD_STEPS"])
        self.warmup_steps = int(environ.get("BATCHD_WARMUP_STEPS", "0"))
        self.seed = int(environ.get("BATCHD_SEED", "0"))
        self.device = environ.get("BATCHD_DEVICE", "cpu")  # "cuda" or "cpu"
        self.precision = environ.get("BATCHD_PRECISION", "f32")  # "f32", "f16" or "bf16"
        self.validate = environ.get("BATCHD_VALIDATE") == "1"
        self.schedule = json.loads(environ["BATCHD_LR_SCHEDULE"])
        small = environ.get("BATCHD_GRAD_NOISE_SMALL_BATCH")
        # When set, also report |g|^2 at this smaller batch (see measure_noise).
        self.grad_noise_small_batch = int(small) if small else None
        measurements = environ.get("BATCHD_GRAD_NOISE_MEASUREMENTS")
        # On how many steps (the last ones); None: every step after warm-up.
        self.grad_noise_measurements = int(measurements) if measurements else None
        self.report_path = environ["BATCHD_REPORT"]
        self._report: IO[str] = open(self.report_path, "a", buffering=1, encoding="utf-8")

    def lr(self, step: int) -> float:
        """The learning rate for `step` (0-based), exactly as batchd computes it."""
        return schedule_lr(self.schedule, step, self.steps)

    def measure_noise(self, step: int) -> bool:
        """Whether to report grad_norm_sq and grad_norm_sq_small at `step`:
        on the last BATCHD_GRAD_NOISE_MEASUREMENTS steps after warm-up, the
        steps batchd's own worker measures (a batchd that does not say how
        many gets every step after warm-up). A measured step does a second
        backward pass, so batchd leaves it out of the speed figures: measuring
        every step would leave none to time, and cost a pass per step."""
        if self.grad_noise_small_batch is None or step < self.warmup_steps:
            return False
        if self.grad_noise_measurements is None:
            return True
        return step >= self.steps - self.grad_noise_measurements

    def report(self, step: int, loss: Any, samples: Optional[int] = None, **extra: Any) -> None:
        """Append the step's line to the report; `extra`: grad_norm_sq,
        grad_norm_sq_small, val_loss, parameters, train_samples (None is left
        out), or `time` to give the step's end yourself (default: now)."""
        at = extra.pop("time", None)
        loss = float(loss)  # a tensor's float() waits for the device: the step has ended
        line: Dict[str, Any] = {
            "step": step,
            "loss": _json_value(loss),
            "samples": self.batch_size if samples is None else int(samples),
            "time": time.monotonic() if at is None else float(at),
            "lr": self.lr(step),
        }
        line.update({k: _json_value(v) for k, v in extra.items() if v is not None})
        self._report.write(json.dumps(line, allow_nan=False) + "\n")
        self._report.flush()

    def close(self) -> None:
        """Close the report file (also done at exit)."""
        self._report.close()

    def __enter__(self) -> "Trial":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
