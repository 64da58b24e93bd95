"""Run a PyTorch model under batchd's command-runner protocol.

    import batchd.torch
    trial, device = batchd.torch.setup()          # reads BATCHD_*, seeds, picks the device
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=trial.lr(0))
    batchd.torch.train(model, optimizer, torch.nn.CrossEntropyLoss(),
                       batches=lambda n: make_batch(n), validation=lambda: make_batch(4096),
                       trial=trial)

`train` sets the LR of every param group each step, measures the gradient
noise norms when batchd asks, reports the validation loss on the last step,
runs under autocast (and a GradScaler for f16) as BATCHD_PRECISION says, and
turns out-of-memory into the message and exit status batchd classifies.
torch is imported only when used, so this module imports without it.
"""
from __future__ import annotations

import contextlib
import random
import sys
from typing import Any, Callable, ContextManager, Dict, Iterable, List, Optional, Tuple, Union

from ._loop import OOM_EXIT_CODE, Backend, BatchSource, TrainResult, run
from .trial import Trial

__all__ = ["setup", "device_for", "train", "TorchBackend", "TrainResult", "OOM_EXIT_CODE", "Backend"]


def _torch() -> Any:
    import torch  # noqa: PLC0415 - optional dependency

    return torch


def device_for(trial: Trial) -> Any:
    """The torch.device for the trial: cuda when batchd asks for it and
    CUDA is available (a warning on stderr when it is not), else cpu."""
    torch = _torch()
    if trial.device == "cuda":
        if torch.cuda.is_available():
            return torch.device("cuda")
        print("batchd.torch: BATCHD_DEVICE=cuda but torch sees no CUDA device; running on CPU",
              file=sys.stderr, flush=True)
    return torch.device("cpu")


def setup(trial: Optional[Trial] = None) -> Tuple[Trial, Any]:
    """Read the trial from the environment (unless given), seed Python's and
    torch's generators with BATCHD_SEED, and return (trial, device)."""
    trial = trial or Trial()
    torch = _torch()
    random.seed(trial.seed)
    torch.manual_seed(trial.seed)
    return trial, device_for(trial)


class TorchBackend:
    """The torch side of the loop: device moves, autocast, GradScaler, norms."""

    def __init__(self, device: Any) -> None:
        self.torch = _torch()
        self.device = self.torch.device(device)

    def prepare(self, model: Any) -> None:
        model.to(self.device)

    def to_device(self, batch: Any) -> Any:
        torch = self.torch
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, dict):
            return {k: self.to_device(v) for k, v in batch.items()}
        if isinstance(batch, (tuple, list)):
            return type(batch)(self.to_device(v) for v in batch)
        return batch

    def autocast(self, dtype: Optional[str]) -> ContextManager[Any]:
        if dtype is None:
            return contextlib.nullcontext()
        return self.torch.autocast(self.device.type, dtype=getattr(self.torch, dtype))

    def grad_scaler(self) -> Any:
        amp = getattr(self.torch, "amp", None)
        if amp is not None and hasattr(amp, "GradScaler"):
            return amp.GradScaler(self.device.type)
        return self.torch.cuda.amp.GradScaler()  # torch < 2.3

    def grad_norm_sq(self, model: Any) -> Any:
        """|g|^2 of all the model's gradients as a 0-d f64 tensor on the
        device: no transfer, so no wait (`to_floats` makes it a number)."""
        torch = self.torch
        grads = [p.grad.detach() for p in model.parameters() if p.grad is not None]
        if not grads:
            return torch.zeros((), dtype=torch.float64, device=self.device)
        # A dot product per tensor in f32 (no squared copy of the model:
        # g.pow(2) took 30-70 ms a call at 21M parameters on 2 CPU cores,
        # this 2-8 ms), summed in f64 on the device. Measured there against
        # f64: relative error 1.3e-4, where torch._foreach_norm and
        # get_total_norm (as fast) are 1e-3 off, which the noise scale's
        # difference of two norms would magnify. Gradients in f16/bf16 are
        # reduced by vector_norm in f32 (no f32 copy of the tensor).
        parts = []
        for g in grads:
            if g.dtype in (torch.float32, torch.float64):
                flat = g.reshape(-1)
                parts.append(torch.dot(flat, flat).double())
            else:
                parts.append(torch.linalg.vector_norm(g, dtype=torch.float32).double().square())
        return torch.stack(parts).sum()

    def preconditioned_norm_sq(self, model: Any, optimizer: Any) -> Any:
        """|g / (sqrt(v_hat) + eps)|^2 over the model's gradients, with v the
        optimizer's `exp_avg_sq` (Adam, AdamW and kin) bias-corrected by its
        step count, as a 0-d f64 device tensor: the gradient in the
        coordinates Adam steps in (AdaptDL's AdamGradientNoiseScale). None
        when any parameter with a gradient has no such state yet (the first
        step, or an optimizer without a second moment)."""
        torch = self.torch
        parts = []
        for group in getattr(optimizer, "param_groups", []):
            betas = group.get("betas")
            eps = group.get("eps")
            if not betas or eps is None:
                return None
            beta2 = float(betas[1])
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = optimizer.state.get(p, {})
                v = state.get("exp_avg_sq")
                step = state.get("step")
                if v is None or step is None:
                    return None
                correction = 1.0 - beta2 ** float(step)
                if correction <= 0.0:
                    return None
                scale = (v.detach().float() / correction).sqrt_().add_(float(eps))
                g = p.grad.detach().float() / scale
                flat = g.reshape(-1)
                parts.append(torch.dot(flat, flat).double())
        if not parts:
            return None
        return torch.stack(parts).sum()

    def to_floats(self, values: Iterable[Any]) -> List[float]:
        """Several device scalars as Python floats, with one transfer (one
        wait for the device)."""
        torch = self.torch
        values = list(values)
        tensors = [v for v in values if isinstance(v, torch.Tensor)]
        if not tensors:
            return [float(v) for v in values]
        device = tensors[0].device
        stacked = torch.stack([
            (v.detach().reshape(()) if isinstance(v, torch.Tensor) else torch.tensor(float(v)))
            .to(device=device, dtype=torch.float64)
            for v in values
        ])
        return [float(v) for v in stacked.tolist()]

    def no_grad(self) -> ContextManager[Any]:
        return self.torch.no_grad()

    def count_parameters(self, model: Any) -> int:
        return int(sum(p.numel() for p in model.parameters()))

    def is_oom(self, error: BaseException) -> bool:
        torch = self.torch
        kinds = tuple(
            k for k in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)) if k
        )
        if kinds and isinstance(error, kinds):
            return True
        if isinstance(error, MemoryError):
            return True
        text = str(error).lower()
        return isinstance(error, RuntimeError) and (
            "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text
        )


def train(
    model: Any,
    optimizer: Any,
    loss_fn: Optional[Callable[..., Any]],
    batches: BatchSource,
    *,
    validation: Optional[Union[Callable[[], Any], Iterable[Any]]] = None,
    trial: Optional[Trial] = None,
    forward: Optional[Callable[[Any, Any], Any]] = None,
    train_samples: Optional[int] = None,
    device: Any = None,
    backend: Optional[Backend] = None,
    exit_on_oom: bool = True,
) -> TrainResult:
    """Train for trial.steps steps at trial.batch_size, reporting each step.

    batches: `batches(n)` returning a batch of n samples, or an iterable of
        batches (a DataLoader built with batch_size=trial.batch_size), restarted
        when it runs out. A batch is (inputs, targets), or anything `forward` takes.
    validation: `validation()` returning the held-out loss or a batch, or an
        iterable of batches (sample-weighted mean). Without it, the loss of a
        fresh batch from `batches` (unseen in this trial).
    forward: `(model, batch) -> loss`, instead of loss_fn(model(inputs), targets).
    train_samples: the training set's size, for batchd's report.
    device: where to train (default: device_for(trial)); backend: a stand-in
        for TorchBackend (tests).
    exit_on_oom: print "CUDA out of memory ..." to stderr and exit with
        OOM_EXIT_CODE on an out-of-memory error (batchd reads it as such).
    """
    trial = trial or Trial()
    if backend is None:
        backend = TorchBackend(device if device is not None else device_for(trial))
    return run(
        trial,
        backend,
        model,
        optimizer,
        loss_fn,
        batches,
        validation=validation,
        forward=forward,
        train_samples=train_samples,
        exit_on_oom=exit_on_oom,
    )


# --- persistent trials (batchd._serve calls these when torch is imported) ---


def _cuda_ready() -> Any:
    """torch, when CUDA is available and initialized in this process; else None."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    cuda = getattr(torch, "cuda", None)
    # is_initialized first: it never starts CUDA, is_available may load the driver.
    if cuda is None or not cuda.is_initialized() or not cuda.is_available():
        return None
    return torch


def _cuda_reset_peaks() -> None:
    """At a trial's start: the CUDA peaks count from here."""
    torch = _cuda_ready()
    if torch is not None:
        torch.cuda.reset_peak_memory_stats()


def _cuda_clean_up() -> Optional[Dict[str, int]]:
    """After a trial (its objects collected): the trial's peaks, then the
    caching allocator's free blocks given back to the device, and what
    stays reserved; None without CUDA."""
    torch = _cuda_ready()
    if torch is None:
        return None
    torch.cuda.synchronize()
    figures = {
        "max_reserved": int(torch.cuda.max_memory_reserved()),
        "max_allocated": int(torch.cuda.max_memory_allocated()),
    }
    torch.cuda.empty_cache()
    figures["reserved_idle"] = int(torch.cuda.memory_reserved())
    return figures
