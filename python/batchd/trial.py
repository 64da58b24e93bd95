"""batchd's command-runner protocol (docs/command-runner.md) as `Trial`.

batchd runs your script once per trial with BATCHD_* variables set. Train for
`trial.steps` steps at `trial.batch_size` with `trial.lr(step)`, and call
`trial.report(step, loss)` after each step::

    from batchd.trial import Trial
    trial = Trial()
    for step in range(trial.steps):
        loss = train_one_step(trial.batch_size, trial.lr(step))
        trial.report(step, loss)

When batchd offers a persistent process (BATCHD_CONTROL_FD), `Trial()` takes
it: the script's module code is run again for every trial in this one
process (`batchd._serve`, docs/python.md "Persistent trials").
"""
from __future__ import annotations

import atexit
import json
import math
import os
import sys
import time
import weakref
from typing import IO, Any, Dict, List, Mapping, Optional, Set, Tuple

from . import _serve
from .schedule import batch_phase_at, parse_batch_schedule, schedule_lr

__all__ = ["Trial", "schedule_lr", "REPORT_INTERVAL"]

#: Seconds between writes of the buffered report lines (also written at the
#: last step, on close(), at exit and when an exception escapes).
REPORT_INTERVAL = 1.0

# Every open Trial, flushed at exit and by the sys.excepthook wrapper.
_live: "weakref.WeakSet[Trial]" = weakref.WeakSet()
_hooks_installed = False
# While a persistent process serves: the Trials made during the current
# trial (the serving loop sets a fresh list per trial and closes them all).
_registry: Optional[List["Trial"]] = None


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


def _flush_all() -> None:
    """Write every open Trial's buffered lines (atexit, uncaught exceptions)."""
    for trial in list(_live):
        try:
            trial.flush()
        except Exception:  # noqa: BLE001 - at exit, a closed or broken file is no reason to fail
            pass


def _install_hooks() -> None:
    """Once per process: flush at exit, and before an uncaught exception's traceback."""
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_flush_all)
    previous = sys.excepthook

    def excepthook(kind: Any, value: Any, traceback: Any) -> None:
        _flush_all()
        previous(kind, value, traceback)

    sys.excepthook = excepthook


def noise_steps(steps: int, warmup: int, measurements: Optional[int], start: Optional[int]) -> Optional[Set[int]]:
    """The steps that carry noise measurements, or None for "every step
    after warm-up" (no count given). With `start` (BATCHD_GRAD_NOISE_FROM=h):
    the m steps h + floor((i + 1/2) * (steps - h) / m), i = 0..m-1, spread
    evenly over [h, steps) (the last m steps when h >= steps); without it,
    the last m steps. Never inside the warm-up, never past the last step."""
    if measurements is None:
        if start is None:
            return None
        return set(range(max(start, warmup), steps))
    if start is None or start >= steps or measurements <= 0:
        # batchd's GradNoiseRequest::steps falls back the same way.
        return set(range(max(steps - max(measurements, 0), warmup), steps))
    span = steps - start
    chosen = (start + (2 * i + 1) * span // (2 * measurements) for i in range(measurements))
    return {s for s in chosen if warmup <= s < steps}


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
    batch_schedule: Optional[List[Dict[str, Any]]]
    grad_noise_small_batch: Optional[int]
    grad_noise_measurements: Optional[int]
    grad_noise_from: Optional[int]
    steps_reported: int

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        if environ is os.environ and _serve.CONTROL_ENV in os.environ:
            # batchd offers a persistent process: serve every trial from
            # here (does not return), unless this process cannot (declined).
            _serve.take_over()
        self.batch_size = int(environ["BATCHD_BATCH_SIZE"])
        self.steps = int(environ["BATCHD_STEPS"])
        self.warmup_steps = int(environ.get("BATCHD_WARMUP_STEPS", "0"))
        self.seed = int(environ.get("BATCHD_SEED", "0"))
        self.device = environ.get("BATCHD_DEVICE", "cpu")  # "cuda" or "cpu"
        self.precision = environ.get("BATCHD_PRECISION", "f32")  # "f32", "f16" or "bf16"
        self.validate = environ.get("BATCHD_VALIDATE") == "1"
        self.schedule = json.loads(environ["BATCHD_LR_SCHEDULE"])
        ramp = environ.get("BATCHD_BATCH_SCHEDULE")
        # A batch that grows during the run (see batch_at); None: constant.
        self.batch_schedule = parse_batch_schedule(ramp) if ramp else None
        small = environ.get("BATCHD_GRAD_NOISE_SMALL_BATCH")
        # When set, also report |g|^2 at this smaller batch (see measure_noise).
        self.grad_noise_small_batch = int(small) if small else None
        measurements = environ.get("BATCHD_GRAD_NOISE_MEASUREMENTS")
        # On how many steps; None: every step after warm-up.
        self.grad_noise_measurements = int(measurements) if measurements else None
        start = environ.get("BATCHD_GRAD_NOISE_FROM")
        # Spread them over [from, steps); None: the last ones.
        self.grad_noise_from = int(start) if start else None
        self._noise_steps = noise_steps(self.steps, self.warmup_steps, self.grad_noise_measurements,
                                        self.grad_noise_from)
        self.steps_reported = 0
        self.report_path = environ["BATCHD_REPORT"]
        self._report: IO[str] = open(self.report_path, "a", buffering=1, encoding="utf-8")
        self._pending: List[str] = []
        self._written_at = time.monotonic()
        _install_hooks()
        _live.add(self)
        if _registry is not None:
            _registry.append(self)

    def lr(self, step: int) -> float:
        """The learning rate for `step` (0-based), exactly as batchd computes it."""
        return schedule_lr(self.schedule, step, self.steps)

    def batch_at(self, seen: int) -> Tuple[int, float]:
        """The batch size and LR factor once `seen` samples have been trained
        on: the BATCHD_BATCH_SCHEDULE phase in force, or (BATCHD_BATCH_SIZE,
        1.0) without one. Multiply `lr(step)` by the factor."""
        if self.batch_schedule is None:
            return self.batch_size, 1.0
        phase = batch_phase_at(self.batch_schedule, seen)
        return int(phase["batch_size"]), float(phase["lr_factor"])

    def measure_noise(self, step: int) -> bool:
        """Whether to report grad_norm_sq and grad_norm_sq_small at `step`:
        the BATCHD_GRAD_NOISE_MEASUREMENTS steps batchd asks for, spread
        evenly from BATCHD_GRAD_NOISE_FROM to the end when that is set, else
        the last ones; never inside the warm-up (a batchd that does not say
        how many gets every step after warm-up). A measured step does a
        second backward pass, so batchd leaves it out of the speed figures:
        measuring every step would leave none to time, and cost a pass per
        step."""
        if self.grad_noise_small_batch is None or step < self.warmup_steps:
            return False
        if self._noise_steps is None:
            return True
        return step in self._noise_steps

    def report(self, step: int, loss: Any, samples: Optional[int] = None, **extra: Any) -> None:
        """Add the step's line to the report; `extra`: grad_norm_sq,
        grad_norm_sq_small, val_loss, parameters, train_samples (None is left
        out), or `time` to give the step's end yourself (default: now).

        Lines are kept in memory and written every REPORT_INTERVAL seconds,
        at the last step, on close(), at exit and when an exception escapes
        (a process killed outright loses at most the last second's)."""
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
        self._pending.append(json.dumps(line, allow_nan=False) + "\n")
        self.steps_reported += 1
        if step >= self.steps - 1 or time.monotonic() - self._written_at >= REPORT_INTERVAL:
            self.flush()

    def flush(self) -> None:
        """Write the buffered report lines to the file now."""
        if self._pending and not self._report.closed:
            lines, self._pending = "".join(self._pending), []
            self._report.write(lines)
            self._report.flush()
        self._written_at = time.monotonic()

    def close(self) -> None:
        """Write what is buffered and close the report file (also done at
        exit); closing twice is harmless."""
        if self._report.closed:
            return
        try:
            self.flush()
        finally:
            self._report.close()
            _live.discard(self)

    def __enter__(self) -> "Trial":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
