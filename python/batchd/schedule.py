"""Learning-rate schedules, computed exactly as batchd's Rust code does.

`schedule_lr` is `LrSchedule::lr_at` (src/trial/mod.rs): the same operations
in the same order, so the floats are bit-for-bit the ones batchd uses.
"""
from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Mapping, Sequence

__all__ = ["schedule_lr", "warmup_cosine_lr", "batch_phase_at", "parse_batch_schedule", "SCHEDULE_KINDS"]

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


def parse_batch_schedule(text: str) -> List[Dict[str, Any]]:
    """BATCHD_BATCH_SCHEDULE's phases, checked as batchd checks them
    (`BatchSchedule::check`): from sample 0, growing, batches > 0, finite
    LR factors > 0."""
    phases = json.loads(text)
    if not isinstance(phases, list) or not phases:
        raise ValueError("BATCHD_BATCH_SCHEDULE: expected a non-empty list of phases")
    previous = -1
    out: List[Dict[str, Any]] = []
    for i, phase in enumerate(phases):
        try:
            start = int(phase["from_sample"])
            batch = int(phase["batch_size"])
            factor = float(phase["lr_factor"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"BATCHD_BATCH_SCHEDULE phase {i}: {error!r}") from None
        if (i == 0 and start != 0) or start <= previous or batch <= 0 or not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"BATCHD_BATCH_SCHEDULE phase {i} is malformed: {phase!r}")
        previous = start
        out.append({"from_sample": start, "batch_size": batch, "lr_factor": factor})
    return out


def batch_phase_at(phases: Sequence[Mapping[str, Any]], seen: int) -> Mapping[str, Any]:
    """The phase in force once `seen` samples have been trained on
    (`BatchSchedule::phase_at`)."""
    current = phases[0]
    for phase in phases:
        if phase["from_sample"] <= seen:
            current = phase
        else:
            break
    return current
