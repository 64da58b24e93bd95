"""batchd.torch with real torch, on CPU (skipped where torch does not import)."""
import os
import subprocess
import sys

import pytest
from conftest import PYTHON_DIR, REPO, read_report

torch = pytest.importorskip("torch")

import batchd.torch  # noqa: E402
from batchd._loop import OOM_EXIT_CODE  # noqa: E402
from batchd.schedule import schedule_lr  # noqa: E402
from batchd.trial import Trial  # noqa: E402

SCHEDULE = {"kind": "warmup_cosine", "lr": 0.01, "warmup_steps": 2, "final_fraction": 0.1}


def setup_mlp(env):
    trial, device = batchd.torch.setup(Trial(env))
    assert device == torch.device("cpu")
    teacher = torch.nn.Linear(8, 3)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.0, weight_decay=0.01)
    generator = torch.Generator().manual_seed(trial.seed)

    def batch(n):
        x = torch.randn(n, 8, generator=generator)
        with torch.no_grad():
            return x, teacher(x).argmax(dim=1)

    return trial, model, optimizer, batch


def test_trains_and_reports_on_cpu(trial_env):
    env = trial_env(BATCHD_LR_SCHEDULE=SCHEDULE, BATCHD_STEPS="30", BATCHD_WARMUP_STEPS="2",
                    BATCHD_GRAD_NOISE_SMALL_BATCH="4", BATCHD_VALIDATE="1")
    trial, model, optimizer, batch = setup_mlp(env)
    result = batchd.torch.train(model, optimizer, torch.nn.CrossEntropyLoss(), batch,
                                validation=lambda: batch(256), trial=trial)
    lines = read_report(env)
    assert [line["step"] for line in lines] == list(range(30))
    assert [line["lr"] for line in lines] == [schedule_lr(SCHEDULE, s, 30) for s in range(30)]
    assert optimizer.param_groups[0]["lr"] == schedule_lr(SCHEDULE, 29, 30)
    assert all(line["parameters"] == 8 * 32 + 32 + 32 * 3 + 3 for line in lines)
    noise = [line for line in lines if "grad_norm_sq" in line]
    assert [line["step"] for line in noise] == list(range(2, 30))
    # The small batch's |g|^2 carries more noise: on average, larger.
    mean_big = sum(line["grad_norm_sq"] for line in noise) / len(noise)
    mean_small = sum(line["grad_norm_sq_small"] for line in noise) / len(noise)
    assert 0 < mean_big < mean_small
    assert "val_loss" in lines[-1] and all("val_loss" not in line for line in lines[:-1])
    assert 0 < result.val_loss < 5
    assert sum(result.losses[-5:]) < sum(result.losses[:5])


def test_noise_norm_is_the_gradient_of_the_first_samples(trial_env):
    """grad_norm_sq_small is |g|^2 of the first `small` samples, taken at the
    parameters before the step's update."""
    env = trial_env(BATCHD_STEPS="1", BATCHD_WARMUP_STEPS="0", BATCHD_GRAD_NOISE_SMALL_BATCH="4")
    trial, model, optimizer, batch = setup_mlp(env)
    x, y = batch(16)
    before = [p.detach().clone() for p in model.parameters()]
    batchd.torch.train(model, optimizer, torch.nn.CrossEntropyLoss(), [(x, y)], trial=trial)
    reference = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    with torch.no_grad():
        for p, value in zip(reference.parameters(), before):
            p.copy_(value)

    def norm(n):
        reference.zero_grad()
        torch.nn.functional.cross_entropy(reference(x[:n]), y[:n]).backward()
        return float(sum(p.grad.pow(2).sum() for p in reference.parameters()))

    (line,) = read_report(env)
    assert line["grad_norm_sq_small"] == pytest.approx(norm(4), rel=1e-5)
    assert line["grad_norm_sq"] == pytest.approx(norm(16), rel=1e-5)


def test_adam_noise_norms_are_also_given_preconditioned(trial_env):
    """For AdamW, each measured step also reports both norms divided by Adam's
    sqrt(v_hat) + eps, with v the optimizer's state before that step's
    update; the first step (no state yet) reports raw norms only."""
    env = trial_env(BATCHD_STEPS="3", BATCHD_WARMUP_STEPS="0", BATCHD_GRAD_NOISE_SMALL_BATCH="4")
    trial, model, optimizer, batch = setup_mlp(env)
    data = [batch(16) for _ in range(3)]
    reference = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    reference.load_state_dict(model.state_dict())
    shadow = torch.optim.AdamW(reference.parameters(), lr=1.0, weight_decay=0.01)
    expected = []
    for step, (x, y) in enumerate(data):
        lr = trial.lr(step)
        for group in shadow.param_groups:
            group["lr"] = lr

        def norms(n):
            reference.zero_grad()
            torch.nn.functional.cross_entropy(reference(x[:n]), y[:n]).backward()
            if not shadow.state:
                return None
            total = 0.0
            for p in reference.parameters():
                state = shadow.state[p]
                v_hat = state["exp_avg_sq"] / (1 - 0.999 ** float(state["step"]))
                total += float(((p.grad / (v_hat.sqrt() + 1e-8)) ** 2).sum())
            return total

        small = norms(4)
        big = norms(16)
        expected.append((small, big))
        shadow.step()
    batchd.torch.train(model, optimizer, torch.nn.CrossEntropyLoss(), data, trial=trial)
    lines = read_report(env)
    assert "grad_norm_sq_pre" not in lines[0] and "grad_norm_sq" in lines[0]
    for line, (small, big) in zip(lines[1:], expected[1:]):
        assert line["grad_norm_sq_small_pre"] == pytest.approx(small, rel=1e-4)
        assert line["grad_norm_sq_pre"] == pytest.approx(big, rel=1e-4)
        # Adam's coordinates scale each gradient entry to about one.
        assert line["grad_norm_sq_pre"] > line["grad_norm_sq"]


def test_sgd_reports_raw_noise_norms_only(trial_env):
    env = trial_env(BATCHD_STEPS="3", BATCHD_WARMUP_STEPS="0", BATCHD_GRAD_NOISE_SMALL_BATCH="4")
    trial, model, _, batch = setup_mlp(env)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    batchd.torch.train(model, optimizer, torch.nn.CrossEntropyLoss(), [batch(16) for _ in range(3)],
                       trial=trial)
    lines = read_report(env)
    assert all("grad_norm_sq" in line and "grad_norm_sq_pre" not in line for line in lines)


@pytest.mark.parametrize("precision", ["bf16", "f16"])
def test_mixed_precision_on_cpu(trial_env, precision):
    env = trial_env(BATCHD_PRECISION=precision, BATCHD_STEPS="6", BATCHD_WARMUP_STEPS="1",
                    BATCHD_GRAD_NOISE_SMALL_BATCH="4", BATCHD_LR_SCHEDULE=SCHEDULE)
    trial, model, optimizer, batch = setup_mlp(env)
    seen = []
    loss_fn = torch.nn.CrossEntropyLoss()

    def forward(model, b):
        out = model(b[0])
        seen.append(out.dtype)
        return loss_fn(out, b[1])

    backend = batchd.torch.TorchBackend("cpu")
    scalers = []
    make_scaler = backend.grad_scaler
    backend.grad_scaler = lambda: scalers.append(make_scaler()) or scalers[-1]
    batchd.torch.train(model, optimizer, None, batch, forward=forward, trial=trial, backend=backend)
    expected = {"bf16": torch.bfloat16, "f16": torch.float16}[precision]
    assert set(seen) == {expected}  # the forward ran under autocast
    assert len(scalers) == (1 if precision == "f16" else 0)
    if scalers:
        assert scalers[0].get_scale() > 1  # the loss was scaled
    lines = read_report(env)
    assert len(lines) == 6
    for line in lines[1:]:
        # Unscaled: a gradient norm of a small MLP's loss, not 65536^2 times it.
        assert 1e-8 < line["grad_norm_sq"] < 100 and 1e-8 < line["grad_norm_sq_small"] < 100


def test_out_of_memory_error_exits_with_the_message(trial_env, capsys):
    env = trial_env(BATCHD_STEPS="3")
    trial, model, optimizer, batch = setup_mlp(env)

    def forward(model, b):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    with pytest.raises(SystemExit) as caught:
        batchd.torch.train(model, optimizer, None, batch, forward=forward, trial=trial)
    assert caught.value.code == OOM_EXIT_CODE
    assert "CUDA out of memory" in capsys.readouterr().err


def test_backend_recognizes_memory_errors():
    backend = batchd.torch.TorchBackend("cpu")
    assert backend.is_oom(torch.cuda.OutOfMemoryError("x"))
    assert backend.is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 GB"))
    assert backend.is_oom(MemoryError())
    assert not backend.is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not backend.is_oom(ValueError("out of memory"))


def test_cuda_asked_but_absent_falls_back_to_cpu_with_a_warning(trial_env, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    trial = Trial(trial_env(BATCHD_DEVICE="cuda"))
    assert batchd.torch.device_for(trial) == torch.device("cpu")
    assert "no CUDA device" in capsys.readouterr().err


def test_the_example_script_runs_under_the_protocol(trial_env):
    """examples/pytorch/train.py, as batchd runs it: cwd the spec's folder,
    PYTHONPATH=../../python as the spec's environment sets it."""
    env = trial_env(BATCHD_BATCH_SIZE="32", BATCHD_STEPS="5", BATCHD_WARMUP_STEPS="1",
                    BATCHD_GRAD_NOISE_SMALL_BATCH="8", BATCHD_VALIDATE="1", BATCHD_PRECISION="bf16",
                    BATCHD_LR_SCHEDULE=SCHEDULE)
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHD_")}
    run_env.update(env, HIDDEN="64", PYTHONPATH="../../python")
    folder = REPO / "examples" / "pytorch"
    done = subprocess.run([sys.executable, "train.py"], cwd=folder, env=run_env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = read_report(env)
    assert [line["step"] for line in lines] == list(range(5))
    assert all(line["samples"] == 32 for line in lines)
    assert [line["step"] for line in lines if "grad_norm_sq_small" in line] == [1, 2, 3, 4]
    assert "val_loss" in lines[-1]
    assert lines[0]["parameters"] == 1024 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10
    assert str(PYTHON_DIR)  # the package came from the checkout, not an install
