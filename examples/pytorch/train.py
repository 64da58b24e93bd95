"""A PyTorch training script tuned by batchd (runner = "command").

An MLP learns a random teacher network's labels (synthetic data, so it runs
anywhere, offline). Everything batchd controls comes from the BATCHD_*
variables through the helper in ../python/batchd_trial.py; the rest is an
ordinary PyTorch loop. Out-of-memory is left to PyTorch: batchd recognizes
"CUDA out of memory" on stderr and NVML's per-process peak.
"""
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from batchd_trial import Trial  # noqa: E402

INPUT, HIDDEN, CLASSES = 1024, int(os.environ.get("HIDDEN", "4096")), 10

trial = Trial()
torch.manual_seed(trial.seed)
device = torch.device("cuda" if trial.device == "cuda" and torch.cuda.is_available() else "cpu")
dtype = {"bf16": torch.bfloat16, "f16": torch.float16}.get(trial.precision)

teacher = nn.Sequential(nn.Linear(INPUT, 64), nn.Tanh(), nn.Linear(64, CLASSES)).to(device)
model = nn.Sequential(
    nn.Linear(INPUT, HIDDEN), nn.ReLU(),
    nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
    nn.Linear(HIDDEN, CLASSES),
).to(device)
optimizer = torch.optim.AdamW(model.parameters(), lr=trial.lr(0), weight_decay=0.01)
scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
loss_fn = nn.CrossEntropyLoss()


def batch(n):
    x = torch.randn(n, INPUT, device=device)
    with torch.no_grad():
        y = teacher(x).argmax(dim=1)
    return x, y


def loss_of(x, y):
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        return loss_fn(model(x), y)


def grad_norm_sq():
    return sum(float(p.grad.float().pow(2).sum()) for p in model.parameters() if p.grad is not None)


parameters = sum(p.numel() for p in model.parameters())
for step in range(trial.steps):
    for group in optimizer.param_groups:
        group["lr"] = trial.lr(step)
    x, y = batch(trial.batch_size)
    extra = {}
    if trial.measure_noise(step):
        # |g|^2 at the small batch, at the same parameters, before the update.
        small = trial.grad_noise_small_batch
        optimizer.zero_grad(set_to_none=True)
        loss_of(x[:small], y[:small]).backward()
        extra["grad_norm_sq_small"] = grad_norm_sq()
    optimizer.zero_grad(set_to_none=True)
    loss = loss_of(x, y)
    scaler.scale(loss).backward()
    if "grad_norm_sq_small" in extra:
        extra["grad_norm_sq"] = grad_norm_sq() / scaler.get_scale() ** 2
    scaler.step(optimizer)
    scaler.update()
    if trial.validate and step == trial.steps - 1:
        with torch.no_grad():
            extra["val_loss"] = float(loss_of(*batch(4096)))
    # float() waits for the GPU, so the reported time is the step's end.
    trial.report(step, float(loss), parameters=parameters, **extra)
