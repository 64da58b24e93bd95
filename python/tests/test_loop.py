"""batchd.torch.train's loop against pure-Python stand-ins for torch: these
run everywhere, so CI always exercises the loop's logic."""
import contextlib
import json
import random
import time

import pytest
from conftest import read_report

import batchd.torch
from batchd._loop import OOM_EXIT_CODE, batch_len, head
from batchd.schedule import schedule_lr
from batchd.trial import Trial

DIM = 3
SCALE = 1024.0


class Param:
    def __init__(self, values):
        self.values = list(values)
        self.grad = None


class Loss:
    """Mean squared error of a linear model, with its own backward."""

    def __init__(self, model, xs, ys, weights):
        self.model, self.xs, self.ys, self.weights = model, xs, ys, weights
        errors = [sum(w * x for w, x in zip(weights, row)) - y for row, y in zip(xs, ys)]
        self.errors = errors
        self.value = sum(e * e for e in errors) / len(errors)

    def gradient(self):
        n = len(self.xs)
        return [sum(2 * e * row[i] for e, row in zip(self.errors, self.xs)) / n for i in range(DIM)]

    def backward(self, factor=1.0):
        param = self.model.param
        grad = [factor * g for g in self.gradient()]
        param.grad = grad if param.grad is None else [a + b for a, b in zip(param.grad, grad)]

    def __float__(self):
        return self.value


class Model:
    def __init__(self):
        self.param = Param([0.0] * DIM)
        self.training = True
        self.forwards = []  # (samples, weights, training) per forward
        self.moved = False

    def train(self, mode=True):
        self.training = mode

    def __call__(self, xs):
        self.forwards.append((len(xs), tuple(self.param.values), self.training))
        return (self, xs)


def mse(output, ys):
    model, xs = output
    return Loss(model, xs, ys, list(model.param.values))


class Optimizer:
    def __init__(self, model, lr=123.0):
        self.param = model.param
        self.param_groups = [{"lr": lr, "params": [model.param]}, {"lr": lr, "params": []}]
        self.steps = []  # the LR of each group at each step

    def zero_grad(self, set_to_none=True):
        self.param.grad = None

    def step(self):
        self.steps.append([g["lr"] for g in self.param_groups])
        lr = self.param_groups[0]["lr"]
        self.param.values = [w - lr * g for w, g in zip(self.param.values, self.param.grad)]


class ScaledLoss:
    def __init__(self, loss, scaler):
        self.loss, self.scaler = loss, scaler

    def backward(self):
        self.loss.backward(SCALE)


class Scaler:
    def __init__(self):
        self.scaled = self.steps = self.updates = 0

    def scale(self, loss):
        self.scaled += 1
        return ScaledLoss(loss, self)

    def get_scale(self):
        return SCALE

    def step(self, optimizer):
        self.steps += 1
        optimizer.param.grad = [g / SCALE for g in optimizer.param.grad]
        optimizer.step()

    def update(self):
        self.updates += 1


class DeviceScalar:
    """A norm still "on the device": float() of it waits (a sync), counted."""

    def __init__(self, value, backend):
        self.value, self.backend = value, backend

    def __float__(self):
        self.backend.syncs += 1
        return float(self.value)


class Backend:
    def __init__(self):
        self.autocasts = []
        self.scalers = []
        self.moved = []
        self.no_grad_depth = 0
        self.prepared = None
        self.syncs = 0  # waits for the "device": to_floats calls and float() of a norm
        self.conversions = []  # how many values each to_floats call converted

    def prepare(self, model):
        self.prepared = model

    def to_device(self, batch):
        self.moved.append(batch_len(batch))
        return batch

    @contextlib.contextmanager
    def autocast(self, dtype):
        self.autocasts.append(dtype)
        yield

    def grad_scaler(self):
        self.scalers.append(Scaler())
        return self.scalers[-1]

    def grad_norm_sq(self, model):
        return DeviceScalar(sum(g * g for g in model.param.grad), self)

    def to_floats(self, values):
        values = list(values)
        self.conversions.append(len(values))
        self.syncs += 1
        return [v.value if isinstance(v, DeviceScalar) else float(v) for v in values]

    @contextlib.contextmanager
    def no_grad(self):
        self.no_grad_depth += 1
        yield
        self.no_grad_depth -= 1

    def count_parameters(self, model):
        return len(model.param.values)

    def is_oom(self, error):
        return isinstance(error, RuntimeError) and "out of memory" in str(error)


TEACHER = [0.5, -1.0, 2.0]


def make_batches(seed=0):
    rng = random.Random(seed)

    def batches(n):
        xs = [[rng.gauss(0, 1) for _ in range(DIM)] for _ in range(n)]
        return xs, [sum(t * x for t, x in zip(TEACHER, row)) for row in xs]

    return batches


def expected_norm(xs, ys, weights, n):
    loss = Loss(Model(), xs[:n], ys[:n], list(weights))
    return sum(g * g for g in loss.gradient())


def run(env, **kwargs):
    model = Model()
    optimizer = Optimizer(model)
    backend = Backend()
    kwargs.setdefault("batches", make_batches())
    result = batchd.torch.train(model, optimizer, mse, trial=Trial(env), backend=backend, **kwargs)
    return result, model, optimizer, backend


SCHEDULE = {"kind": "warmup_cosine", "lr": 0.05, "warmup_steps": 2, "final_fraction": 0.1}


def test_lr_applied_to_every_param_group_each_step(trial_env):
    env = trial_env(BATCHD_LR_SCHEDULE=SCHEDULE, BATCHD_STEPS="8")
    result, model, optimizer, backend = run(env)
    expected = [schedule_lr(SCHEDULE, s, 8) for s in range(8)]
    assert optimizer.steps == [[lr, lr] for lr in expected]
    lines = read_report(env)
    assert [line["step"] for line in lines] == list(range(8))
    assert [line["lr"] for line in lines] == expected
    assert [line["loss"] for line in lines] == result.losses
    assert result.losses[-1] < result.losses[0]  # it trains
    assert all(line["parameters"] == DIM and line["samples"] == 16 for line in lines)
    assert backend.prepared is model and backend.scalers == [] and set(backend.autocasts) == {None}


RAMP = [
    {"from_sample": 0, "batch_size": 16, "lr_factor": 1.0},
    {"from_sample": 32, "batch_size": 32, "lr_factor": 1.5},
    {"from_sample": 96, "batch_size": 64, "lr_factor": 2.0},
]


def test_a_batch_schedule_grows_the_batch_and_scales_the_lr_by_samples_seen(trial_env):
    env = trial_env(BATCHD_BATCH_SCHEDULE=RAMP, BATCHD_LR_SCHEDULE=SCHEDULE, BATCHD_STEPS="6")
    result, model, optimizer, _ = run(env)
    lines = read_report(env)
    # 16, 16 reach 32; 32, 32 reach 96; then 64s.
    assert [line["samples"] for line in lines] == [16, 16, 32, 32, 64, 64]
    assert [n for n, _, _ in model.forwards] == [16, 16, 32, 32, 64, 64]
    factors = [1.0, 1.0, 1.5, 1.5, 2.0, 2.0]
    expected = [schedule_lr(SCHEDULE, s, 6) * f for s, f in enumerate(factors)]
    assert [line["lr"] for line in lines] == expected
    assert optimizer.steps == [[lr, lr] for lr in expected]


def test_a_batch_schedule_needs_a_batch_source_that_takes_a_size(trial_env):
    env = trial_env(BATCHD_BATCH_SCHEDULE=RAMP)
    source = make_batches()
    with pytest.raises(ValueError, match="callable"):
        run(env, batches=[source(16)])


def test_a_malformed_batch_schedule_is_refused_naming_the_phase(trial_env):
    bad = [{"from_sample": 0, "batch_size": 16, "lr_factor": 1.0},
           {"from_sample": 0, "batch_size": 32, "lr_factor": 1.0}]
    with pytest.raises(ValueError, match="phase 1"):
        Trial(trial_env(BATCHD_BATCH_SCHEDULE=bad))


def test_noise_norms_after_warmup_on_the_first_samples_at_the_same_parameters(trial_env):
    env = trial_env(BATCHD_GRAD_NOISE_SMALL_BATCH="4", BATCHD_WARMUP_STEPS="3", BATCHD_STEPS="6")
    recorded = []
    source = make_batches(1)

    def batches(n):
        batch = source(n)
        recorded.append(batch)
        return batch

    result, model, optimizer, backend = run(env, batches=batches)
    lines = read_report(env)
    for step, line in enumerate(lines):
        assert ("grad_norm_sq" in line) == (step >= 3) == ("grad_norm_sq_small" in line)
    # Forwards: one full batch per warm-up step, then small + full.
    assert [n for n, _, _ in model.forwards] == [16, 16, 16, 4, 16, 4, 16, 4, 16]
    for step in (3, 4, 5):
        index = 3 + 2 * (step - 3)
        (_, w_small, _), (_, w_big, _) = model.forwards[index], model.forwards[index + 1]
        assert w_small == w_big  # the same parameters, before the update
        xs, ys = recorded[step]
        assert lines[step]["grad_norm_sq_small"] == pytest.approx(expected_norm(xs, ys, w_small, 4), rel=1e-12)
        assert lines[step]["grad_norm_sq"] == pytest.approx(expected_norm(xs, ys, w_big, 16), rel=1e-12)
    # The update uses the full batch's gradient only (the small pass's is cleared).
    assert [n["step"] for n in result.noise] == [3, 4, 5]


def test_no_noise_when_the_small_batch_is_not_smaller(trial_env):
    env = trial_env(BATCHD_GRAD_NOISE_SMALL_BATCH="16", BATCHD_WARMUP_STEPS="0", BATCHD_STEPS="3")
    run(env)
    assert all("grad_norm_sq" not in line for line in read_report(env))


def test_val_loss_only_on_the_last_step_and_in_eval_mode(trial_env):
    env = trial_env(BATCHD_VALIDATE="1", BATCHD_STEPS="5")
    held_out = make_batches(99)(64)
    result, model, _, backend = run(env, validation=lambda: held_out)
    lines = read_report(env)
    assert ["val_loss" in line for line in lines] == [False] * 4 + [True]
    n, weights, training = model.forwards[-1]
    assert (n, training) == (64, False)
    assert model.training is True  # back in training mode
    expected = Loss(Model(), held_out[0], held_out[1], list(weights)).value
    assert lines[-1]["val_loss"] == pytest.approx(expected) == result.val_loss


def test_reported_time_is_the_steps_end_not_after_validation(trial_env):
    env = trial_env(BATCHD_VALIDATE="1", BATCHD_STEPS="2")

    def slow_validation():
        time.sleep(0.3)
        return 1.0

    run(env, validation=slow_validation)
    assert time.monotonic() - read_report(env)[-1]["time"] >= 0.3


def test_no_val_loss_unless_asked(trial_env):
    env = trial_env(BATCHD_STEPS="3")
    run(env, validation=lambda: 1.0)
    assert all("val_loss" not in line for line in read_report(env))


def test_validation_forms(trial_env):
    env = trial_env(BATCHD_VALIDATE="1", BATCHD_STEPS="2")
    assert run(env, validation=lambda: 0.25)[0].val_loss == 0.25
    a, b = make_batches(5)(10), make_batches(6)(30)
    result, model, _, _ = run(trial_env(BATCHD_VALIDATE="1", BATCHD_STEPS="2"), validation=[a, b])
    weights = list(model.forwards[-1][1])
    mean = (Loss(Model(), *a, weights).value * 10 + Loss(Model(), *b, weights).value * 30) / 40
    assert result.val_loss == pytest.approx(mean)
    # Without a validation source: a fresh batch from the training source.
    result, model, _, _ = run(trial_env(BATCHD_VALIDATE="1", BATCHD_STEPS="2"))
    assert model.forwards[-1][0] == 16 and model.forwards[-1][2] is False
    assert result.val_loss is not None


def test_f16_uses_a_grad_scaler_and_unscaled_norms(trial_env):
    common = dict(BATCHD_GRAD_NOISE_SMALL_BATCH="4", BATCHD_WARMUP_STEPS="1", BATCHD_STEPS="4")
    env32 = trial_env(**common)
    run(env32)
    f32 = read_report(env32)
    env16 = trial_env(BATCHD_PRECISION="f16", **common)
    _, _, optimizer, backend = run(env16)
    f16 = read_report(env16)
    (scaler,) = backend.scalers
    assert scaler.steps == scaler.updates == 4 and scaler.scaled == 4 + 3
    assert set(backend.autocasts) == {"float16"}
    for a, b in zip(f32, f16):
        assert a["loss"] == b["loss"]
        assert ("grad_norm_sq" in a) == ("grad_norm_sq" in b) == (a["step"] >= 1)
        if a["step"] >= 1:
            assert a["grad_norm_sq"] == pytest.approx(b["grad_norm_sq"], rel=1e-12)
            assert a["grad_norm_sq_small"] == pytest.approx(b["grad_norm_sq_small"], rel=1e-12)


def test_bf16_autocasts_without_a_scaler(trial_env):
    env = trial_env(BATCHD_PRECISION="bf16", BATCHD_STEPS="2")
    _, _, _, backend = run(env)
    assert set(backend.autocasts) == {"bfloat16"} and backend.scalers == []


def test_out_of_memory_prints_and_exits_nonzero(trial_env, capsys):
    env = trial_env(BATCHD_STEPS="5", BATCHD_DEVICE="cuda")
    calls = []

    def forward(model, batch):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return mse(model(batch[0]), batch[1])

    with pytest.raises(SystemExit) as caught:
        run(env, forward=forward)
    assert caught.value.code == OOM_EXIT_CODE != 0
    err = capsys.readouterr().err
    assert "CUDA out of memory" in err and "batch size 16" in err and "Tried to allocate 2.00 GiB" in err
    assert len(read_report(env)) == 2


def test_other_errors_propagate(trial_env):
    def forward(model, batch):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run(trial_env(), forward=forward)
    with pytest.raises(RuntimeError, match="out of memory"):
        run(trial_env(), forward=lambda m, b: (_ for _ in ()).throw(RuntimeError("out of memory")),
            exit_on_oom=False)


def test_an_iterable_source_is_restarted_and_short_batches_counted(trial_env):
    env = trial_env(BATCHD_STEPS="5")
    full = make_batches(2)(16)
    short = make_batches(3)(7)
    run(env, batches=[full, short])
    assert [line["samples"] for line in read_report(env)] == [16, 7, 16, 7, 16]


def test_train_samples_reported(trial_env):
    env = trial_env(BATCHD_STEPS="2")
    run(env, train_samples=50000)
    assert [line["train_samples"] for line in read_report(env)] == [50000, 50000]


def test_non_finite_noise_pairs_are_left_out(trial_env):
    env = trial_env(BATCHD_GRAD_NOISE_SMALL_BATCH="4", BATCHD_WARMUP_STEPS="0", BATCHD_STEPS="2")

    class Overflowing(Backend):
        def grad_norm_sq(self, model):
            return float("inf")

    model = Model()
    batchd.torch.train(model, Optimizer(model), mse, make_batches(), trial=Trial(env), backend=Overflowing())
    lines = read_report(env)
    assert all("grad_norm_sq" not in line and "grad_norm_sq_small" not in line for line in lines)
    assert json.dumps(lines)  # and the lines are still valid


def test_head_and_batch_len():
    xs = [[1, 2], [3, 4], [5, 6]]
    assert head((xs, [7, 8, 9]), 2) == ([[1, 2], [3, 4]], [7, 8])
    assert head({"a": xs, "b": [1, 2, 3]}, 1) == {"a": [[1, 2]], "b": [1]}
    assert batch_len((xs, [7, 8, 9])) == 3 and batch_len({"a": xs}) == 3 and batch_len(xs) == 3


def test_one_conversion_per_measured_step(trial_env):
    """Both norms reach the host together: one to_floats (one device wait)
    per measured step, and no float() of a norm anywhere else."""
    env = trial_env(BATCHD_GRAD_NOISE_SMALL_BATCH="4", BATCHD_GRAD_NOISE_MEASUREMENTS="3",
                    BATCHD_WARMUP_STEPS="1", BATCHD_STEPS="10")
    result, _, _, backend = run(env)
    assert [n["step"] for n in result.noise] == [7, 8, 9]
    assert backend.conversions == [2, 2, 2]
    assert backend.syncs == 3
    for f16 in (False, True):
        env = trial_env(BATCHD_GRAD_NOISE_SMALL_BATCH="4", BATCHD_WARMUP_STEPS="1", BATCHD_STEPS="4",
                        BATCHD_PRECISION="f16" if f16 else "f32")
        _, _, _, backend = run(env)
        assert backend.syncs == len(backend.conversions) == 3


def test_measured_steps_spread_from_the_step_batchd_gives(trial_env):
    env = trial_env(BATCHD_GRAD_NOISE_SMALL_BATCH="4", BATCHD_GRAD_NOISE_MEASUREMENTS="4",
                    BATCHD_GRAD_NOISE_FROM="10", BATCHD_WARMUP_STEPS="2", BATCHD_STEPS="30")
    result, model, _, backend = run(env)
    # 10 + floor((i + 1/2) * 20 / 4): 12, 17, 22, 27.
    assert [n["step"] for n in result.noise] == [12, 17, 22, 27]
    lines = read_report(env)
    assert [line["step"] for line in lines if "grad_norm_sq" in line] == [12, 17, 22, 27]
    assert [line["step"] for line in lines if "grad_norm_sq_small" in line] == [12, 17, 22, 27]
    assert backend.conversions == [2] * 4
    assert sum(1 for n, _, _ in model.forwards if n == 4) == 4  # a small pass only where measured


def test_a_backend_without_to_floats_still_works(trial_env):
    """A stand-in written before to_floats: its norms are floats."""
    env = trial_env(BATCHD_GRAD_NOISE_SMALL_BATCH="4", BATCHD_WARMUP_STEPS="4", BATCHD_STEPS="6")

    class Old(Backend):
        to_floats = None

        def grad_norm_sq(self, model):
            return sum(g * g for g in model.param.grad)

    model = Model()
    result = batchd.torch.train(model, Optimizer(model), mse, make_batches(), trial=Trial(env), backend=Old())
    assert [n["step"] for n in result.noise] == [4, 5]
