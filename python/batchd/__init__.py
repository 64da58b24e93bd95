"""batchd's Python side.

- `batchd.trial.Trial`: the command-runner protocol (BATCHD_* in, report out).
- `batchd.torch.train`: a PyTorch loop run under that protocol (torch optional).
- `batchd.Client`: the daemon's HTTP API.
- `batchd.Recommendation`: the advice, and the schedule to train with it.
- `batchd.cache`: memoize data loading across the trials of a persistent
  trial process (a plain call otherwise).

Only the standard library is needed, except by `batchd.torch`.
"""
from ._serve import cache
from .client import BatchdError, Client, DaemonUnreachable, JobFailed, ProblemError, TokenError
from .recommendation import RampBatchSampler, Recommendation
from .schedule import schedule_lr, warmup_cosine_lr
from .trial import Trial

__version__ = "0.2.0"

__all__ = [
    "BatchdError",
    "Client",
    "DaemonUnreachable",
    "JobFailed",
    "ProblemError",
    "RampBatchSampler",
    "Recommendation",
    "TokenError",
    "Trial",
    "cache",
    "schedule_lr",
    "warmup_cosine_lr",
    "__version__",
]
