"""The training loop of `batchd.torch`, written against a backend object so
that it runs, and is tested, without torch (tests/test_loop.py drives it
with pure-Python stand-ins)."""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Dict, Iterable, Iterator, List, Optional, Protocol, Union

from .trial import Trial

__all__ = ["Backend", "Scaler", "TrainResult", "run", "head", "batch_len", "OOM_EXIT_CODE"]

#: Exit status after an out-of-memory error (batchd classifies the trial by
#: the "out of memory" message on stderr; the code only has to be non-zero).
OOM_EXIT_CODE = 3

Batch = Any
BatchSource = Union[Callable[[int], Batch], Iterable[Batch]]


class Scaler(Protocol):
    """What the loop uses of `torch.amp.GradScaler`."""

    def scale(self, loss: Any) -> Any: ...
    def step(self, optimizer: Any) -> Any: ...
    def update(self) -> None: ...
    def get_scale(self) -> float: ...


class Backend(Protocol):
    """The tensor library's part of the loop (`batchd.torch.TorchBackend`)."""

    def prepare(self, model: Any) -> None:
        """Move the model to the device."""
    def to_device(self, batch: Batch) -> Batch:
        """Move a batch (tensors, or tuples/lists/dicts of them) to the device."""
    def autocast(self, dtype: Optional[str]) -> ContextManager[Any]:
        """Mixed precision ("bfloat16", "float16"), or nothing for None."""
    def grad_scaler(self) -> Scaler:
        """A fresh gradient scaler (for f16)."""
    def grad_norm_sq(self, model: Any) -> Any:
        """The squared norm of all the model's gradients, as a scalar on the
        device (not yet a float: converting waits for the device)."""
    def to_floats(self, values: Iterable[Any]) -> List[float]:
        """Device scalars as Python floats, all with one wait for the device."""
    def preconditioned_norm_sq(self, model: Any, optimizer: Any) -> Any:
        """|g / (sqrt(v_hat) + eps)|^2 with Adam's second moment v from the
        optimizer's state, as a device scalar; None when the optimizer keeps
        no such state (optional: a backend without it reports raw norms only)."""
    def no_grad(self) -> ContextManager[Any]:
        """No autograd inside."""
    def count_parameters(self, model: Any) -> int:
        """The model's parameter count."""
    def is_oom(self, error: BaseException) -> bool:
        """Whether `error` is the device (or host) running out of memory."""


@dataclass
class TrainResult:
    """What `run` did: per-step losses and LRs, the noise pairs, val_loss."""

    losses: List[float] = field(default_factory=list)
    lrs: List[float] = field(default_factory=list)
    noise: List[Dict[str, float]] = field(default_factory=list)
    val_loss: Optional[float] = None
    parameters: int = 0


def head(batch: Batch, n: int) -> Batch:
    """The first `n` samples of a batch: a tensor or plain list sliced on its
    first dimension; tuples, dicts and lists of tensors, item by item."""
    if isinstance(batch, dict):
        return {k: head(v, n) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(head(v, n) for v in batch)
    if _is_tensor_list(batch):
        return [head(v, n) for v in batch]
    return batch[:n]


def batch_len(batch: Batch) -> int:
    """The number of samples in a batch (its first tensor's first dimension)."""
    if isinstance(batch, dict):
        return batch_len(next(iter(batch.values())))
    if isinstance(batch, tuple) or _is_tensor_list(batch):
        return batch_len(batch[0])
    return len(batch)


def _is_tensor_list(value: Any) -> bool:
    """A list of tensors (a DataLoader's [inputs, targets]), as opposed to a
    plain list of samples."""
    return isinstance(value, list) and bool(value) and (hasattr(value[0], "shape") or isinstance(value[0], dict))


def _default_forward(loss_fn: Optional[Callable[..., Any]]) -> Callable[[Any, Batch], Any]:
    def forward(model: Any, batch: Batch) -> Any:
        if loss_fn is None:
            raise ValueError("give loss_fn, or forward=(model, batch) -> loss")
        if isinstance(batch, dict):
            raise ValueError("a dict batch needs forward=(model, batch) -> loss")
        inputs, targets = batch
        return loss_fn(model(inputs), targets)

    return forward


class _Batches:
    """Batches of `n` samples from a callable `source(n)`, or in turn from an
    iterable (a DataLoader), started again when it runs out."""

    def __init__(self, source: BatchSource) -> None:
        self.source = source
        self.iterator: Optional[Iterator[Batch]] = None

    def next(self, n: int) -> Batch:
        if callable(self.source) and not hasattr(self.source, "__iter__"):
            return self.source(n)
        for _ in range(2):
            if self.iterator is None:
                self.iterator = iter(self.source)  # type: ignore[arg-type]
            try:
                return next(self.iterator)
            except StopIteration:
                self.iterator = None
        raise ValueError("the batch source yielded no batch")


def _finite(value: float) -> bool:
    return math.isfinite(value)


def _set_mode(model: Any, training: bool) -> None:
    method = getattr(model, "train", None)
    if callable(method):
        method(training)


def run(
    trial: Trial,
    backend: Backend,
    model: Any,
    optimizer: Any,
    loss_fn: Optional[Callable[..., Any]],
    batches: BatchSource,
    *,
    validation: Optional[Union[Callable[[], Any], Iterable[Batch]]] = None,
    forward: Optional[Callable[[Any, Batch], Any]] = None,
    train_samples: Optional[int] = None,
    exit_on_oom: bool = True,
) -> TrainResult:
    """Train `model` for trial.steps steps under the command-runner protocol
    (see batchd.torch.train, which calls this with the torch backend)."""
    compute = forward or _default_forward(loss_fn)
    source = _Batches(batches)
    amp = {"bf16": "bfloat16", "f16": "float16"}.get(trial.precision)
    result = TrainResult()
    n = trial.batch_size  # the step's batch, for the out-of-memory message
    try:
        backend.prepare(model)
        _set_mode(model, True)
        scaler = backend.grad_scaler() if trial.precision == "f16" else None
        result.parameters = backend.count_parameters(model)
        last = trial.steps - 1
        ramp = getattr(trial, "batch_schedule", None)
        if ramp is not None and not (callable(batches) and not hasattr(batches, "__iter__")):
            raise ValueError("batchd: this trial grows its batch (BATCHD_BATCH_SCHEDULE), which needs "
                             "batches=callable(n) returning n samples; an iterable (a DataLoader) has "
                             "a fixed batch. Pass a callable, or drop batch_schedule = true from the spec")
        seen = 0
        for step in range(trial.steps):
            n, factor = trial.batch_at(seen) if ramp is not None else (trial.batch_size, 1.0)
            lr = trial.lr(step) * factor
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = backend.to_device(source.next(n))
            samples = batch_len(batch)
            seen += samples
            extra: Dict[str, Any] = {"parameters": result.parameters}
            if train_samples is not None:
                extra["train_samples"] = train_samples
            small = trial.grad_noise_small_batch or 0
            noise = trial.measure_noise(step) and 0 < small < samples
            small_norm: Any = None
            small_pre: Any = None
            precondition = getattr(backend, "preconditioned_norm_sq", None)
            if noise:
                # |g|^2 on the first `small` samples, at the parameters the
                # full batch's gradient is taken at (before the update).
                optimizer.zero_grad(set_to_none=True)
                with backend.autocast(amp):
                    small_loss = compute(model, head(batch, small))
                _backward(small_loss, scaler)
                small_norm = backend.grad_norm_sq(model)
                if precondition is not None:
                    # Adam's v is the optimizer's, from the steps before this
                    # one: the same preconditioner for both batches.
                    small_pre = precondition(model, optimizer)
            optimizer.zero_grad(set_to_none=True)
            with backend.autocast(amp):
                loss = compute(model, batch)
            _backward(loss, scaler)
            if noise:
                # Both norms (and the f16 scale) reach the host together:
                # one wait for the device per measured step.
                values = [small_norm, backend.grad_norm_sq(model)]
                big_pre = precondition(model, optimizer) if small_pre is not None else None
                if big_pre is not None:
                    values += [small_pre, big_pre]
                scale = _scale_tensor(scaler)
                if scale is not None:
                    values.append(scale)
                floats = _to_floats(backend, values)
                scale_sq = floats[-1] ** 2 if scale is not None else _scale_sq(scaler)
                small_sq, big_sq = floats[0] / scale_sq, floats[1] / scale_sq
                if big_pre is not None and _finite(floats[2]) and _finite(floats[3]):
                    extra["grad_norm_sq_small_pre"] = floats[2] / scale_sq
                    extra["grad_norm_sq_pre"] = floats[3] / scale_sq
                # An overflowed f16 pass gives inf: such a pair is left out
                # (the scaler skips that step too).
                if _finite(big_sq) and _finite(small_sq):
                    extra["grad_norm_sq"] = big_sq
                    extra["grad_norm_sq_small"] = small_sq
                    result.noise.append({"step": step, "big": big_sq, "small": small_sq})
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            # float() waits for the device: the step's end.
            value = float(loss.detach() if hasattr(loss, "detach") else loss)
            ended = time.monotonic()
            if trial.validate and step == last:
                result.val_loss = _validate(backend, model, compute, amp, validation, source, trial.batch_size)
                extra["val_loss"] = result.val_loss
                # Not training: batchd counts it apart from the steps.
                extra["val_seconds"] = time.monotonic() - ended
            result.losses.append(value)
            result.lrs.append(lr)
            trial.report(step, value, samples=samples, time=ended, lr=lr, **extra)
    except Exception as error:  # noqa: BLE001 - only OOM is handled, the rest re-raised
        if not (exit_on_oom and backend.is_oom(error)):
            raise
        cuda = "cuda" in str(error).lower() or trial.device == "cuda"
        what = "CUDA out of memory" if cuda else "out of memory"
        print(f"batchd.torch: {what} at batch size {n}: "
              f"{type(error).__name__}: {error}", file=sys.stderr, flush=True)
        flush = getattr(trial, "flush", None)
        if flush is not None:
            flush()  # the steps before the error, before the exit
        raise SystemExit(OOM_EXIT_CODE) from None
    return result


def _to_floats(backend: Backend, values: List[Any]) -> List[float]:
    """backend.to_floats, or float() of each for a backend without it."""
    convert = getattr(backend, "to_floats", None)
    if convert is None:
        return [float(v) for v in values]
    return [float(v) for v in convert(values)]


def _scale_tensor(scaler: Optional[Scaler]) -> Any:
    """torch's GradScaler's scale as a device tensor (read without a wait),
    or None: then get_scale() gives it."""
    if scaler is None:
        return None
    read = getattr(scaler, "_get_scale_async", None)
    if read is None:
        return None
    try:
        return read()
    except Exception:  # noqa: BLE001 - a private API: fall back to get_scale()
        return None


def _scale_sq(scaler: Optional[Scaler]) -> float:
    return float(scaler.get_scale()) ** 2 if scaler is not None else 1.0


def _backward(loss: Any, scaler: Optional[Scaler]) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def _validate(
    backend: Backend,
    model: Any,
    compute: Callable[[Any, Batch], Any],
    amp: Optional[str],
    validation: Optional[Union[Callable[[], Any], Iterable[Batch]]],
    source: _Batches,
    batch_size: int,
) -> float:
    """The held-out loss: `validation()` as a number, or the loss on the
    batch it returns, or the sample-weighted mean over an iterable of
    batches; without `validation`, the loss on a fresh batch of the source."""
    _set_mode(model, False)
    try:
        with backend.no_grad():
            if validation is None:
                batches: Iterable[Batch] = [source.next(batch_size)]
            elif callable(validation) and not hasattr(validation, "__iter__"):
                value = validation()
                if isinstance(value, (int, float)) or (hasattr(value, "__float__") and not _is_batch(value)):
                    return float(value)
                batches = [value]
            else:
                batches = validation
            total, count = 0.0, 0
            for batch in batches:
                batch = backend.to_device(batch)
                n = batch_len(batch)
                with backend.autocast(amp):
                    loss = compute(model, batch)
                total += float(loss.detach() if hasattr(loss, "detach") else loss) * n
                count += n
            if count == 0:
                raise ValueError("the validation source yielded no batch")
            return total / count
    finally:
        _set_mode(model, True)


def _is_batch(value: Any) -> bool:
    """A batch, as opposed to a loss: a container, or a tensor of more than one element."""
    if isinstance(value, (tuple, list, dict)):
        return True
    numel = getattr(value, "numel", None)
    return callable(numel) and numel() != 1

