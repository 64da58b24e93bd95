"""batchd.trial.Trial: the environment in, the report out."""
import json
import math
import os
import subprocess
import sys
import time

import pytest
from conftest import PYTHON_DIR, REPO, read_report

from batchd.schedule import schedule_lr
from batchd.trial import Trial


class Scalar:
    """A tensor-like 0-d value: only __float__."""

    def __init__(self, value):
        self.value = value

    def __float__(self):
        return float(self.value)


def test_reads_every_variable(trial_env):
    env = trial_env(
        BATCHD_WARMUP_STEPS="3", BATCHD_DEVICE="cuda", BATCHD_PRECISION="bf16", BATCHD_VALIDATE="1",
        BATCHD_GRAD_NOISE_SMALL_BATCH="4", BATCHD_SEED="11",
        BATCHD_LR_SCHEDULE={"kind": "warmup", "lr": 0.4, "warmup_steps": 2},
    )
    trial = Trial(env)
    assert (trial.batch_size, trial.steps, trial.warmup_steps, trial.seed) == (16, 6, 3, 11)
    assert (trial.device, trial.precision, trial.validate) == ("cuda", "bf16", True)
    assert trial.grad_noise_small_batch == 4
    assert trial.schedule == {"kind": "warmup", "lr": 0.4, "warmup_steps": 2}
    assert [trial.lr(s) for s in range(3)] == [0.2, 0.4, 0.4]


def test_defaults(trial_env):
    env = trial_env(BATCHD_WARMUP_STEPS=None, BATCHD_SEED=None, BATCHD_DEVICE=None, BATCHD_PRECISION=None)
    trial = Trial(env)
    assert (trial.warmup_steps, trial.seed, trial.device, trial.precision) == (0, 0, "cpu", "f32")
    assert trial.validate is False
    assert trial.grad_noise_small_batch is None
    assert not trial.measure_noise(0)


def test_missing_required_variable_is_a_key_error(trial_env):
    with pytest.raises(KeyError):
        Trial(trial_env(BATCHD_STEPS=None))


def test_measure_noise_only_after_warmup(trial_env):
    trial = Trial(trial_env(BATCHD_GRAD_NOISE_SMALL_BATCH="4", BATCHD_WARMUP_STEPS="2"))
    assert [trial.measure_noise(s) for s in range(4)] == [False, False, True, True]


def test_measure_noise_on_the_last_steps_batchd_asks_for(trial_env):
    env = trial_env(
        BATCHD_GRAD_NOISE_SMALL_BATCH="4",
        BATCHD_GRAD_NOISE_MEASUREMENTS="3",
        BATCHD_WARMUP_STEPS="2",
        BATCHD_STEPS="10",
    )
    trial = Trial(env)
    assert [s for s in range(10) if trial.measure_noise(s)] == [7, 8, 9]
    # Never inside the warm-up, even when more are asked for than remain.
    trial = Trial(dict(env, BATCHD_GRAD_NOISE_MEASUREMENTS="9"))
    assert [s for s in range(10) if trial.measure_noise(s)] == list(range(2, 10))


def test_lr_follows_the_schedule_over_the_trials_steps(trial_env):
    schedule = {"kind": "warmup_cosine", "lr": 0.1, "warmup_steps": 2, "final_fraction": 0.1}
    trial = Trial(trial_env(BATCHD_LR_SCHEDULE=schedule, BATCHD_STEPS="9"))
    assert [trial.lr(s) for s in range(9)] == [schedule_lr(schedule, s, 9) for s in range(9)]
    assert trial.lr(8) == pytest.approx(0.01)


def test_report_lines(trial_env):
    env = trial_env()
    trial = Trial(env)
    before = time.monotonic()
    trial.report(0, 2.5)
    trial.report(1, Scalar(2.25), samples=12, grad_norm_sq=Scalar(0.5), grad_norm_sq_small=2.0,
                 val_loss=None, parameters=1234)
    assert read_report(env) == []  # buffered (written every second and at the last step)
    trial.flush()
    lines = read_report(env)  # read while the trial still holds the file
    assert len(lines) == 2
    first, second = lines
    assert first["step"] == 0 and first["loss"] == 2.5 and first["samples"] == 16 and first["lr"] == 0.05
    assert set(first) == {"step", "loss", "samples", "time", "lr"}
    assert before <= first["time"] <= second["time"] <= time.monotonic()
    assert second["samples"] == 12 and second["loss"] == 2.25
    assert second["grad_norm_sq"] == 0.5 and second["grad_norm_sq_small"] == 2.0
    assert second["parameters"] == 1234 and isinstance(second["parameters"], int)
    assert "val_loss" not in second


def test_non_finite_values_are_written_as_null(trial_env):
    env = trial_env()
    trial = Trial(env)
    trial.report(0, float("nan"), val_loss=float("inf"))
    trial.report(1, Scalar(float("-inf")))
    trial.close()
    raw = open(env["BATCHD_REPORT"]).read()
    assert "NaN" not in raw and "Infinity" not in raw
    first, second = read_report(env)
    assert first["loss"] is None and first["val_loss"] is None and second["loss"] is None


def test_time_can_be_given(trial_env):
    env = trial_env()
    trial = Trial(env)
    trial.report(0, 1.0, time=12.5)
    trial.close()
    assert read_report(env)[0]["time"] == 12.5


def test_appends_and_each_line_is_one_json_object(trial_env):
    env = trial_env()
    with open(env["BATCHD_REPORT"], "w") as f:
        f.write('{"step": 0, "loss": 1.0, "time": 1.0}\n')
    with Trial(env) as trial:
        trial.report(1, 0.5)
    text = open(env["BATCHD_REPORT"]).read()
    assert text.endswith("\n")
    assert [json.loads(line)["step"] for line in text.splitlines()] == [0, 1]


def test_a_script_killed_after_reporting_leaves_complete_lines(trial_env):
    """Lines reach the file at the last step and at least every second, so
    os._exit (which skips every flush) loses at most the last second's."""
    env = trial_env()
    code = (
        f"import sys, os, time; sys.path.insert(0, {str(PYTHON_DIR)!r})\n"
        "from batchd.trial import Trial\n"
        "t = Trial()\n"
        "for s in range(6): t.report(s, 1.0 / (s + 1))\n"
        "t = Trial()\n"
        "t.report(0, 1.0); t.report(1, 0.5)\n"
        "time.sleep(1.05)\n"
        "t.report(2, 0.25); t.report(3, 0.2)\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env), check=True)
    assert [line["step"] for line in read_report(env)] == list(range(6)) + [0, 1, 2]


def test_buffered_lines_are_written_at_exit_and_before_a_traceback(trial_env):
    env = trial_env()
    head = (
        f"import sys; sys.path.insert(0, {str(PYTHON_DIR)!r})\n"
        "from batchd.trial import Trial\n"
        "t = Trial()\n"
        "t.report(0, 1.0); t.report(1, 0.5)\n"
    )
    subprocess.run([sys.executable, "-c", head + "sys.exit(0)\n"], env=dict(os.environ, **env), check=True)
    assert [line["step"] for line in read_report(env)] == [0, 1]
    open(env["BATCHD_REPORT"], "w").close()
    hook = (
        "import os\n"
        "def check(*exc):\n"
        "    with open(os.environ['BATCHD_REPORT']) as f: print('lines', len(f.readlines()), file=sys.stderr)\n"
        "    os._exit(5)\n"
        "sys.excepthook = check\n"
    )
    # Trial() wraps the hook set before it: the lines are written before it runs.
    code = head.split("t = Trial()")[0] + hook + "t = Trial()\nt.report(0, 1.0); t.report(1, 0.5)\nraise ValueError\n"
    done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env), capture_output=True, text=True)
    assert done.returncode == 5 and "lines 2" in done.stderr, done.stderr


def test_close_is_idempotent_and_flushes(trial_env):
    env = trial_env()
    trial = Trial(env)
    trial.report(0, 1.0)
    trial.close()
    trial.close()
    with trial:
        pass
    assert [line["step"] for line in read_report(env)] == [0]


def test_shim_reexports_the_package_when_importable():
    code = (
        f"import sys; sys.path[:0] = [{str(REPO / 'examples' / 'python')!r}, {str(PYTHON_DIR)!r}]\n"
        "import batchd_trial, batchd.trial\n"
        "assert not batchd_trial.STANDALONE\n"
        "assert batchd_trial.Trial is batchd.trial.Trial\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_shim_standalone_writes_the_same_lines(trial_env):
    env = trial_env(BATCHD_LR_SCHEDULE={"kind": "warmup_cosine", "lr": 0.1, "warmup_steps": 2, "final_fraction": 0.1})
    code = (
        "import sys\n"
        "sys.modules['batchd'] = None\n"
        f"sys.path.insert(0, {str(REPO / 'examples' / 'python')!r})\n"
        "import batchd_trial\n"
        "assert batchd_trial.STANDALONE\n"
        "t = batchd_trial.Trial()\n"
        "t.report(0, 1.5, time=1.0)\n"
        "t.report(1, float('nan'), samples=3, grad_norm_sq=0.5, grad_norm_sq_small=1.5, time=2.0)\n"
        "assert t.measure_noise(2) is False\n"
    )
    subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env), check=True)
    standalone = read_report(env)
    open(env["BATCHD_REPORT"], "w").close()
    t = Trial(env)
    t.report(0, 1.5, time=1.0)
    t.report(1, float("nan"), samples=3, grad_norm_sq=0.5, grad_norm_sq_small=1.5, time=2.0)
    t.close()
    assert read_report(env) == standalone
    assert not math.isnan(standalone[0]["lr"])
