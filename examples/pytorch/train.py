"""A PyTorch training script tuned by batchd (runner = "command").

An MLP learns a random teacher network's labels (synthetic data, so it runs
anywhere, offline). The model, optimizer, loss and data are ordinary
PyTorch; the batchd glue is the marked block at the bottom: `batchd.torch`
reads the BATCHD_* variables, sets the LR each step, measures the gradient
noise norms, reports each step and the validation loss, applies
BATCHD_PRECISION (autocast, and a GradScaler for f16) and reports CUDA
out-of-memory as such. The `batchd` package comes from `pip install ./python`,
or from PYTHONPATH as pytorch-mlp.toml sets it.

batchd may run many trials in one process, running this module's code again
for each (docs/python.md, "Persistent trials"). Nothing here needs caching:
the teacher is drawn from the trial's seed, and the data comes from it. A
script that reads a dataset at module level would wrap the reading in
`@batchd.cache`, so that it is read once per process.
"""
import os

import torch
from torch import nn

import batchd.torch

INPUT, HIDDEN, CLASSES = 1024, int(os.environ.get("HIDDEN", "4096")), 10


def make_model():
    return nn.Sequential(
        nn.Linear(INPUT, HIDDEN), nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
        nn.Linear(HIDDEN, CLASSES),
    )


# --- batchd glue -----------------------------------------------------------
trial, device = batchd.torch.setup()  # BATCHD_* variables, seeds, device
teacher = nn.Sequential(nn.Linear(INPUT, 64), nn.Tanh(), nn.Linear(64, CLASSES)).to(device)
model = make_model().to(device)
optimizer = torch.optim.AdamW(model.parameters(), lr=trial.lr(0), weight_decay=0.01)


def batch(n):
    x = torch.randn(n, INPUT, device=device)
    with torch.no_grad():
        return x, teacher(x).argmax(dim=1)


batchd.torch.train(model, optimizer, nn.CrossEntropyLoss(), batch,
                   validation=lambda: batch(4096), trial=trial)
