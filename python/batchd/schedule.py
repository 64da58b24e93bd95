"""Learning-rate schedules, computed exactly as batchd's Rust code does.

`schedule_lr` is `LrSchedule::lr_at` (src/trial/mod.rs): the same operations
in the same order, so the floats are bit-for-bit the ones batchd uses.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

__all__ = ["schedule_lr", "warmup_cosine_lr", "SCHEDULE_KINDS"]

SCHEDULE_KINDS = ("constant", "warmup", "exponential_sweep", "warmup_cosine")


def warmup_cosine_lr(lr: float, warmup_steps: int, final_fraction: float, step: int, steps: int) -> float:
    """Linear warm-up from lr/warmup_steps to lr, then cosine decay to
    lr * final_fraction at the last of `steps` steps (0-based `step`)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max(steps - warmup_steps, 1)  # Rust: saturating_sub, then max(1)
    if decay_steps <= 1:
        progress = 1.0
    else:
        progress = (step - warmup_steps) / (decay_steps - 1)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return lr * (final_fraction + (1.0 - final_fraction) * cosine)


def schedule_lr(schedule: Mapping[str, Any], step: int, steps: int) -> float:
    """The LR at `step` (0-based) of a trial of `steps` steps, for a schedule
    as batchd passes it in BATCHD_LR_SCHEDULE, e.g.
    ``{"kind": "warmup_cosine", "lr": 0.1, "warmup_steps": 5, "final_fraction": 0.1}``."""
    kind = schedule.get("kind")
    if step < 0 or steps < 0:
        raise ValueError(f"step and steps must be >= 0, got step={step}, steps={steps}")
    if kind == "constant":
        return float(schedule["lr"])
    if kind == "warmup":
        lr = float(schedule["lr"])
        warmup = int(schedule["warmup_steps"])
        if warmup == 0 or step >= warmup:
            return lr
        return lr * (step + 1) / warmup
    if kind == "exponential_sweep":
        min_lr = float(schedule["min_lr"])
        max_lr = float(schedule["max_lr"])
        fraction = 0.0 if steps <= 1 else step / (steps - 1)
        return min_lr * (max_lr / min_lr) ** fraction
    if kind == "warmup_cosine":
        return warmup_cosine_lr(
            float(schedule["lr"]),
            int(schedule["warmup_steps"]),
            float(schedule["final_fraction"]),
            step,
            steps,
        )
    raise ValueError(f"unknown LR schedule kind {kind!r} (expected one of {', '.join(SCHEDULE_KINDS)})")
