"""The recommendation, and how to apply it to a training run.

`Recommendation` wraps batchd's recommendation JSON (schema version 2,
docs/spec.md) and turns it into what trainers take: the LR at every step
(`lr_at`), a `torch.optim.lr_scheduler.LambdaLR`, keyword arguments for
`transformers.TrainingArguments`, and the pieces for Lightning.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
import random
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

from .schedule import batch_phase_at, warmup_cosine_lr

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["Recommendation", "RampBatchSampler"]


@dataclass(frozen=True)
class Recommendation:
    """The figures of a recommendation; everything else is in `raw`."""

    job: str
    batch_size: int
    gradient_accumulation_steps: int
    effective_batch_size: int
    world_size: int
    learning_rate: Optional[float]
    warmup_steps: int
    total_updates: Optional[int]
    final_lr_fraction: float
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Recommendation":
        """From the recommendation JSON (`batchd advise --json`, or
        GET /v1/jobs/NAME/recommendation)."""
        lr = data.get("lr") or {}
        schedule = data.get("schedule") or {}
        return cls(
            job=str(data.get("job", "")),
            batch_size=int(data["batch_size"]),
            gradient_accumulation_steps=int(data.get("gradient_accumulation_steps") or 1),
            effective_batch_size=int(data.get("effective_batch_size") or data["batch_size"]),
            world_size=int(data.get("world_size") or 1),
            learning_rate=None if lr.get("learning_rate") is None else float(lr["learning_rate"]),
            warmup_steps=int(schedule.get("warmup_steps") or 0),
            total_updates=None if schedule.get("total_updates") is None else int(schedule["total_updates"]),
            final_lr_fraction=float(schedule.get("final_lr_fraction", 0.1)),
            raw=dict(data),
        )

    @classmethod
    def from_json(cls, text: Union[str, bytes]) -> "Recommendation":
        """From the recommendation's JSON text."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str) -> "Recommendation":
        """From a file written by `batchd advise --json > FILE`."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    # The schedule -----------------------------------------------------------

    def _peak(self) -> float:
        if self.learning_rate is None:
            raise ValueError(f"job {self.job!r}: the recommendation has no learning rate (none was measured)")
        return self.learning_rate

    def _steps(self, total_steps: Optional[int]) -> int:
        steps = total_steps if total_steps is not None else self.total_updates
        if steps is None:
            raise ValueError(
                f"job {self.job!r}: total_steps is needed (the recommendation has no "
                "schedule.total_updates: the spec gives no dataset size)"
            )
        return int(steps)

    def lr_at(self, step: int, total_steps: Optional[int] = None) -> float:
        """The recommended LR at optimizer step `step` (0-based) of a run of
        `total_steps` optimizer steps (default: schedule.total_updates):
        linear warm-up over schedule.warmup_steps, then cosine decay to
        final_lr_fraction of the peak, exactly as batchd's warmup_cosine."""
        return warmup_cosine_lr(
            self._peak(), self.warmup_steps, self.final_lr_fraction, step, self._steps(total_steps)
        )

    def lr_for(self, batch: int) -> float:
        """The LR for an effective batch of `batch` samples by lr.rule:
        reference_lr * (batch / reference_batch) ** alpha."""
        rule = (self.raw.get("lr") or {}).get("rule")
        if not rule:
            raise ValueError(f"job {self.job!r}: the recommendation has no LR rule")
        if batch <= 0:
            raise ValueError(f"batch must be > 0, got {batch}")
        return float(rule["reference_lr"]) * (batch / int(rule["reference_batch"])) ** float(rule["alpha"])

    def lr_lambda(self, total_steps: Optional[int] = None) -> Callable[[int], float]:
        """The factor lr_at(step) / peak, as LambdaLR takes it."""
        peak = self._peak()
        steps = self._steps(total_steps)
        warmup, final = self.warmup_steps, self.final_lr_fraction
        return lambda step: warmup_cosine_lr(peak, warmup, final, step, steps) / peak

    # Trainers ---------------------------------------------------------------

    def lambda_lr(self, optimizer: "torch.optim.Optimizer", total_steps: Optional[int] = None) -> Any:
        """A `torch.optim.lr_scheduler.LambdaLR` whose LR at step s is
        lr_at(s). It sets every param group's lr (and initial_lr) to the peak
        first, since LambdaLR multiplies them. Call `scheduler.step()` once
        per optimizer step."""
        from torch.optim.lr_scheduler import LambdaLR

        peak = self._peak()
        for group in optimizer.param_groups:
            group["lr"] = peak
            group["initial_lr"] = peak
        return LambdaLR(optimizer, self.lr_lambda(total_steps))

    def hf_training_arguments(
        self, total_steps: Optional[int] = None, world_size: int = 1, **overrides: Any
    ) -> Dict[str, Any]:
        """Keyword arguments for `transformers.TrainingArguments`.

        The per-device batch and accumulation keep the effective batch on
        `world_size` processes. HF's cosine_with_min_lr is close to batchd's
        schedule but not identical (docs/python.md gives the difference and
        the exact alternative, `Trainer(optimizers=(opt, rec.lambda_lr(opt)))`).
        """
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        per_device, accumulation = self.per_device_batch(world_size)
        kwargs: Dict[str, Any] = {
            "per_device_train_batch_size": per_device,
            "gradient_accumulation_steps": accumulation,
            "learning_rate": self._peak(),
            "warmup_steps": self.warmup_steps,
            "lr_scheduler_type": "cosine_with_min_lr",
            "lr_scheduler_kwargs": {"min_lr_rate": self.final_lr_fraction},
        }
        steps = total_steps if total_steps is not None else self.total_updates
        if steps is not None:
            kwargs["max_steps"] = int(steps)
        kwargs.update(overrides)
        return kwargs

    def per_device_batch(self, world_size: Optional[int] = None) -> "tuple[int, int]":
        """(per-device batch, accumulation steps) giving effective_batch_size
        on `world_size` processes (default: the recommendation's). The
        recommended per-device batch is kept when it divides evenly;
        otherwise the largest per-device batch not above it that does."""
        world = self.world_size if world_size is None else int(world_size)
        if world == self.world_size:
            return self.batch_size, self.gradient_accumulation_steps
        effective = self.effective_batch_size
        if effective % world:
            raise ValueError(f"effective batch {effective} does not split over {world} processes")
        per_process = effective // world
        accumulation = max(1, -(-per_process // self.batch_size))
        while per_process % accumulation:
            accumulation += 1
        return per_process // accumulation, accumulation

    def lightning_lr_scheduler(
        self, optimizer: "torch.optim.Optimizer", total_steps: Optional[int] = None
    ) -> Dict[str, Any]:
        """The lr_scheduler entry for LightningModule.configure_optimizers:
        ``return {"optimizer": opt, "lr_scheduler": rec.lightning_lr_scheduler(opt)}``."""
        return {"scheduler": self.lambda_lr(optimizer, total_steps), "interval": "step", "frequency": 1}

    def lightning_trainer_kwargs(self, total_steps: Optional[int] = None, **overrides: Any) -> Dict[str, Any]:
        """Keyword arguments for `lightning.Trainer`: accumulate_grad_batches,
        and max_steps when known. Batch size goes to your DataLoader."""
        kwargs: Dict[str, Any] = {"accumulate_grad_batches": self.gradient_accumulation_steps}
        steps = total_steps if total_steps is not None else self.total_updates
        if steps is not None:
            kwargs["max_steps"] = int(steps)
        kwargs.update(overrides)
        return kwargs

    # The batch ramp -----------------------------------------------------------

    @property
    def batch_schedule(self) -> Optional[List[Dict[str, Any]]]:
        """The batch ramp's phases when batchd recommends it (it beat the
        constant batch beyond seed noise), else None: train at batch_size.
        Each phase: from_sample (samples trained, per device), batch_size,
        lr_factor (multiplies the schedule's LR)."""
        section = self.raw.get("batch_schedule") or {}
        if not section.get("recommended"):
            return None
        return [dict(p) for p in section.get("phases") or []] or None

    def batch_size_at(self, samples_seen: int) -> Tuple[int, float]:
        """(batch size, LR factor) once `samples_seen` samples have been
        trained on (per device): the recommended ramp's phase, or
        (batch_size, 1.0) when no ramp is recommended. Multiply the LR of
        `lr_at` by the factor."""
        phases = self.batch_schedule
        if phases is None:
            return self.batch_size, 1.0
        phase = batch_phase_at(phases, samples_seen)
        return int(phase["batch_size"]), float(phase["lr_factor"])

    def batch_sampler(self, dataset_size: int, shuffle: bool = True, seed: int = 0) -> "RampBatchSampler":
        """A batch sampler for `torch.utils.data.DataLoader(dataset,
        batch_sampler=...)` whose batches follow the recommended ramp (or
        the constant batch): reuse the same sampler across epochs, so it
        counts the samples trained."""
        return RampBatchSampler(self, dataset_size, shuffle=shuffle, seed=seed)


class RampBatchSampler:
    """Index batches whose size follows a recommendation's batch ramp by the
    samples trained so far; one pass over the data per iteration (an
    epoch), the count carrying over from epoch to epoch. Plain Python:
    anything that takes an iterable of index lists can use it."""

    def __init__(self, recommendation: Recommendation, dataset_size: int, shuffle: bool = True,
                 seed: int = 0) -> None:
        if dataset_size <= 0:
            raise ValueError(f"dataset_size must be > 0, got {dataset_size}")
        self.recommendation = recommendation
        self.dataset_size = int(dataset_size)
        self.shuffle = shuffle
        self.samples_seen = 0
        self._random = random.Random(seed)

    def batch_size(self) -> Tuple[int, float]:
        """The next batch's size and LR factor."""
        return self.recommendation.batch_size_at(self.samples_seen)

    def __iter__(self) -> Iterator[List[int]]:
        order = list(range(self.dataset_size))
        if self.shuffle:
            self._random.shuffle(order)
        at = 0
        while at < len(order):
            n, _ = self.batch_size()
            batch = order[at:at + n]
            at += len(batch)
            self.samples_seen += len(batch)
            yield batch

    def __len__(self) -> int:
        """Batches in the next epoch at the sizes now in force."""
        seen, count, at = self.samples_seen, 0, 0
        while at < self.dataset_size:
            n, _ = self.recommendation.batch_size_at(seen)
            step = min(n, self.dataset_size - at)
            at += step
            seen += step
            count += 1
        return count
