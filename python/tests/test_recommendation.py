"""batchd.Recommendation on a real `batchd advise --json` answer."""
import copy
import math

import pytest
from conftest import torch_or_skip

from batchd import Recommendation
from batchd.schedule import warmup_cosine_lr

PEAK = 0.00030883968354684173  # lr.learning_rate of data/recommendation.json


@pytest.fixture
def rec(recommendation_data):
    return Recommendation.from_dict(recommendation_data)


def test_fields(rec, recommendation_data):
    assert rec.job == "mlp-synthetic"
    assert (rec.batch_size, rec.gradient_accumulation_steps, rec.effective_batch_size) == (72, 1, 72)
    assert rec.learning_rate == PEAK
    assert (rec.warmup_steps, rec.total_updates, rec.final_lr_fraction) == (205, 4100, 0.1)
    assert rec.raw == recommendation_data
    assert rec.raw["evidence"]["gradient_noise"]["value"] > 0


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, PEAK / 205),
        (101, PEAK * 102 / 205),
        (204, PEAK),
        (205, PEAK),  # decay starts at the peak
        (205 + 1947, PEAK * 0.55),  # progress 1947/3894 = 0.5: halfway down to 10%
        (4099, PEAK * 0.1),  # the last update
        (9999, PEAK * 0.1),
    ],
)
def test_lr_at_over_the_recommended_run(rec, step, expected):
    assert rec.lr_at(step) == pytest.approx(expected, rel=1e-12)


def test_lr_at_is_warmup_cosine_bit_for_bit(rec):
    for step in (0, 17, 205, 1000, 3333, 4099):
        assert rec.lr_at(step) == warmup_cosine_lr(PEAK, 205, 0.1, step, 4100)
    assert rec.lr_at(500, total_steps=1000) == warmup_cosine_lr(PEAK, 205, 0.1, 500, 1000)


def test_lr_at_with_a_shorter_run(rec):
    assert rec.lr_at(999, total_steps=1000) == pytest.approx(PEAK * 0.1, rel=1e-12)
    assert rec.lr_at(999) > PEAK * 0.9  # in the recommended run, step 999 is still near the peak


def test_lr_at_needs_a_length(recommendation_data):
    data = copy.deepcopy(recommendation_data)
    data["schedule"]["total_updates"] = None
    data["schedule"]["warmup_steps"] = None
    rec = Recommendation.from_dict(data)
    with pytest.raises(ValueError, match="total_steps"):
        rec.lr_at(3)
    assert rec.warmup_steps == 0
    assert rec.lr_at(0, total_steps=11) == PEAK  # no warm-up: starts at the peak
    assert rec.lr_at(10, total_steps=11) == pytest.approx(PEAK * 0.1, rel=1e-12)


def test_no_learning_rate_is_an_error(recommendation_data):
    data = copy.deepcopy(recommendation_data)
    data["lr"]["learning_rate"] = None
    data["lr"]["rule"] = None
    rec = Recommendation.from_dict(data)
    with pytest.raises(ValueError, match="no learning rate"):
        rec.lr_at(0)
    with pytest.raises(ValueError, match="no LR rule"):
        rec.lr_for(64)
    with pytest.raises(ValueError):
        rec.hf_training_arguments()


def test_lr_for_follows_the_rule(rec):
    # alpha 0.5 (AdamW, sqrt scaling) from 72 samples
    assert rec.lr_for(72) == PEAK
    assert rec.lr_for(288) == PEAK * 2.0
    assert rec.lr_for(18) == PEAK * 0.5
    assert rec.lr_for(100) == pytest.approx(PEAK * math.sqrt(100 / 72), rel=1e-12)
    with pytest.raises(ValueError):
        rec.lr_for(0)


def test_hf_training_arguments(rec):
    assert rec.hf_training_arguments() == {
        "per_device_train_batch_size": 72,
        "gradient_accumulation_steps": 1,
        "learning_rate": PEAK,
        "warmup_steps": 205,
        "lr_scheduler_type": "cosine_with_min_lr",
        "lr_scheduler_kwargs": {"min_lr_rate": 0.1},
        "max_steps": 4100,
    }
    custom = rec.hf_training_arguments(total_steps=500, output_dir="out", bf16=True)
    assert custom["max_steps"] == 500 and custom["output_dir"] == "out" and custom["bf16"] is True


def test_hf_training_arguments_without_a_known_length(recommendation_data):
    data = copy.deepcopy(recommendation_data)
    data["schedule"]["total_updates"] = None
    assert "max_steps" not in Recommendation.from_dict(data).hf_training_arguments()


def test_batch_split_over_processes(recommendation_data):
    data = copy.deepcopy(recommendation_data)
    data.update(batch_size=64, gradient_accumulation_steps=4, global_batch_size=64, effective_batch_size=256)
    rec = Recommendation.from_dict(data)
    assert rec.per_device_batch() == (64, 4)
    assert rec.per_device_batch(2) == (64, 2)
    assert rec.per_device_batch(8) == (32, 1)
    assert rec.per_device_batch(16) == (16, 1)
    hf = rec.hf_training_arguments(world_size=2)
    assert (hf["per_device_train_batch_size"], hf["gradient_accumulation_steps"]) == (64, 2)
    with pytest.raises(ValueError, match="does not split"):
        rec.per_device_batch(3)
    with pytest.raises(ValueError):
        rec.hf_training_arguments(world_size=0)
    # Recommended on 4 replicas of 64, run on one process: accumulate 4.
    data.update(world_size=4, global_batch_size=256, gradient_accumulation_steps=1, effective_batch_size=256)
    assert Recommendation.from_dict(data).per_device_batch(1) == (64, 4)


def test_lightning_trainer_kwargs(rec):
    assert rec.lightning_trainer_kwargs() == {"accumulate_grad_batches": 1, "max_steps": 4100}
    assert rec.lightning_trainer_kwargs(total_steps=10, precision="bf16-mixed") == {
        "accumulate_grad_batches": 1, "max_steps": 10, "precision": "bf16-mixed"}


def test_lr_lambda_is_lr_at_over_the_peak(rec):
    factor = rec.lr_lambda(total_steps=300)
    for step in (0, 100, 204, 205, 250, 299):
        assert factor(step) * PEAK == pytest.approx(rec.lr_at(step, 300), rel=1e-14)


def test_lambda_lr_gives_lr_at_at_every_step(rec):
    torch = torch_or_skip()
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.AdamW([param], lr=0.5)  # overwritten with the peak
    scheduler = rec.lambda_lr(optimizer, total_steps=400)
    seen = []
    for _ in range(400):
        seen.append(optimizer.param_groups[0]["lr"])
        param.grad = torch.ones(3)
        optimizer.step()
        scheduler.step()
    expected = [rec.lr_at(step, 400) for step in range(400)]
    assert seen == pytest.approx(expected, rel=1e-12)
    assert seen[0] == pytest.approx(PEAK / 205, rel=1e-12) and seen[-1] == pytest.approx(PEAK * 0.1, rel=1e-12)


def test_lightning_lr_scheduler(rec):
    torch = torch_or_skip()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    entry = rec.lightning_lr_scheduler(optimizer)
    assert entry["interval"] == "step" and entry["frequency"] == 1
    assert isinstance(entry["scheduler"], torch.optim.lr_scheduler.LambdaLR)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(rec.lr_at(0), rel=1e-12)


RAMP = {
    "recommended": True,
    "outcome": {"kind": "won"},
    "phases": [
        {"from_sample": 0, "batch_size": 64, "lr_factor": 1.0},
        {"from_sample": 256, "batch_size": 128, "lr_factor": 1.4142135623730951},
    ],
    "verdict": "the ramp won",
}


def test_no_batch_schedule_means_the_constant_batch(recommendation_data):
    rec = Recommendation.from_dict(recommendation_data)
    assert rec.batch_schedule is None
    assert rec.batch_size_at(10**9) == (rec.batch_size, 1.0)
    # Raced and lost: still the constant batch.
    data = copy.deepcopy(recommendation_data)
    data["batch_schedule"] = dict(RAMP, recommended=False, outcome={"kind": "lost"})
    assert Recommendation.from_dict(data).batch_schedule is None


def test_a_recommended_ramp_drives_the_batch_and_the_lr_factor(recommendation_data):
    data = copy.deepcopy(recommendation_data)
    data["batch_schedule"] = RAMP
    rec = Recommendation.from_dict(data)
    assert [p["batch_size"] for p in rec.batch_schedule] == [64, 128]
    assert rec.batch_size_at(0) == (64, 1.0)
    assert rec.batch_size_at(255) == (64, 1.0)
    assert rec.batch_size_at(256) == (128, math.sqrt(2))


def test_the_ramp_batch_sampler_grows_its_batches_across_epochs(recommendation_data):
    data = copy.deepcopy(recommendation_data)
    data["batch_schedule"] = RAMP
    sampler = Recommendation.from_dict(data).batch_sampler(200, seed=1)
    assert len(sampler) == 4  # 64, 64, 64, 8
    first = list(sampler)
    assert [len(b) for b in first] == [64, 64, 64, 8]
    assert sorted(i for b in first for i in b) == list(range(200))  # each sample once
    # 200 seen: 64 until 256, then 128.
    assert len(sampler) == 3
    assert [len(b) for b in sampler] == [64, 128, 8]
    assert sampler.samples_seen == 400
    assert sampler.batch_size() == (128, math.sqrt(2))
