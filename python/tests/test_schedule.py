"""batchd.schedule / batchd.trial.schedule_lr against hand-computed values of
Rust's LrSchedule::lr_at, and the standalone helper against the package."""
import json
import math
import subprocess
import sys

import pytest
from conftest import REPO

from batchd.schedule import schedule_lr, warmup_cosine_lr
from batchd.trial import schedule_lr as trial_schedule_lr

WC = {"kind": "warmup_cosine", "lr": 0.1, "warmup_steps": 5, "final_fraction": 0.1}


def test_trial_module_exports_the_same_function():
    assert trial_schedule_lr is schedule_lr


@pytest.mark.parametrize("step", [0, 1, 7, 1000])
def test_constant(step):
    assert schedule_lr({"kind": "constant", "lr": 0.3}, step, 10) == 0.3


@pytest.mark.parametrize(
    "step, expected",
    [(0, 0.05), (1, 0.1), (2, 0.15), (3, 0.2), (4, 0.2), (50, 0.2)],
)
def test_warmup(step, expected):
    s = {"kind": "warmup", "lr": 0.2, "warmup_steps": 4}
    assert schedule_lr(s, step, 10) == pytest.approx(expected, rel=1e-15)


def test_warmup_of_zero_steps_is_constant():
    assert schedule_lr({"kind": "warmup", "lr": 0.2, "warmup_steps": 0}, 0, 10) == 0.2


@pytest.mark.parametrize(
    "step, steps, expected",
    [(0, 7, 1e-6), (3, 7, 1e-3), (6, 7, 1.0), (2, 5, 1e-3), (0, 1, 1e-6), (0, 0, 1e-6)],
)
def test_exponential_sweep(step, steps, expected):
    s = {"kind": "exponential_sweep", "min_lr": 1e-6, "max_lr": 1.0}
    assert schedule_lr(s, step, steps) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.02),  # warm-up: lr * (step + 1) / warmup
        (4, 0.1),
        (5, 0.1),  # decay starts at the peak: progress 0
        (52, 0.055),  # progress 47/94 = 0.5: cosine 0.5 -> lr * (0.1 + 0.9 * 0.5)
        (99, 0.01),  # last step: lr * final_fraction
        (150, 0.01),  # past the end: held at the floor
    ],
)
def test_warmup_cosine(step, expected):
    assert schedule_lr(WC, step, 100) == pytest.approx(expected, rel=1e-12, abs=1e-17)


def test_warmup_cosine_matches_rusts_operation_order_bit_for_bit():
    # Step 30 of 100: progress = 25 / 94, written as the Rust expression.
    progress = (30 - 5) / (95 - 1)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    assert schedule_lr(WC, 30, 100) == 0.1 * (0.1 + (1.0 - 0.1) * cosine)
    assert warmup_cosine_lr(0.1, 5, 0.1, 30, 100) == schedule_lr(WC, 30, 100)


def test_warmup_cosine_with_one_decay_step_ends_at_the_floor():
    # Rust: decay_steps = max(steps - warmup, 1) = 1, so progress = 1.0 (the
    # helper before 0.2 gave the peak here).
    assert schedule_lr(WC, 5, 6) == pytest.approx(0.01, rel=1e-12)
    # No decay steps at all (steps <= warmup): still the floor after warm-up.
    assert schedule_lr(WC, 5, 5) == pytest.approx(0.01, rel=1e-12)
    assert schedule_lr(WC, 7, 3) == pytest.approx(0.01, rel=1e-12)


def test_warmup_cosine_without_warmup():
    s = dict(WC, warmup_steps=0)
    assert schedule_lr(s, 0, 11) == 0.1
    assert schedule_lr(s, 10, 11) == pytest.approx(0.01, rel=1e-12)
    assert schedule_lr(s, 5, 11) == pytest.approx(0.055, rel=1e-12)


def test_unknown_kind_and_negative_step_are_errors():
    with pytest.raises(ValueError, match="unknown LR schedule kind"):
        schedule_lr({"kind": "step_decay", "lr": 0.1}, 0, 10)
    with pytest.raises(ValueError):
        schedule_lr(WC, -1, 10)


def test_standalone_helper_gives_the_same_floats_as_the_package():
    """examples/python/batchd_trial.py without the package installed must
    compute every schedule exactly as the package does."""
    schedules = [
        {"kind": "constant", "lr": 0.3},
        {"kind": "warmup", "lr": 0.2, "warmup_steps": 4},
        {"kind": "exponential_sweep", "min_lr": 1e-6, "max_lr": 3.0},
        WC,
        dict(WC, warmup_steps=0, final_fraction=0.05),
    ]
    grid = [(step, steps) for steps in (1, 2, 6, 37, 100) for step in range(0, steps + 2, 3)]
    code = (
        "import json, sys\n"
        "sys.modules['batchd'] = None  # as if the package were not installed\n"
        f"sys.path.insert(0, {str(REPO / 'examples' / 'python')!r})\n"
        "import batchd_trial\n"
        "assert batchd_trial.STANDALONE\n"
        "schedules, grid = json.load(sys.stdin)\n"
        "print(json.dumps([[batchd_trial.schedule_lr(s, a, b) for a, b in grid] for s in schedules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps([schedules, grid]),
        capture_output=True, text=True, check=True,
    ).stdout
    standalone = json.loads(out)
    package = [[schedule_lr(s, a, b) for a, b in grid] for s in schedules]
    assert standalone == package  # exact: JSON round-trips floats
