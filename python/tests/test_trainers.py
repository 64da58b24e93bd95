"""The advice in Hugging Face transformers and Lightning (each skipped where
it does not import)."""
import pytest

from batchd import Recommendation

torch = pytest.importorskip("torch")


@pytest.fixture
def rec(recommendation_data):
    return Recommendation.from_dict(recommendation_data)


def hf_lrs(rec, total):
    transformers = pytest.importorskip("transformers")
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=rec.learning_rate)
    kwargs = rec.hf_training_arguments(total_steps=total)
    scheduler = transformers.get_scheduler(
        kwargs["lr_scheduler_type"], optimizer, num_warmup_steps=kwargs["warmup_steps"],
        num_training_steps=kwargs["max_steps"], scheduler_specific_kwargs=kwargs["lr_scheduler_kwargs"])
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_hf_schedule_is_close_to_batchds_and_the_difference_is_as_documented(rec):
    """docs/python.md: HF's warm-up starts at 0 (batchd's at peak/warmup), so
    it lags by peak/warmup_steps; after warm-up they differ by under 0.03% of
    the peak over the recommended 4,100 updates."""
    total = rec.total_updates
    hf = hf_lrs(rec, total)
    ours = [rec.lr_at(step) for step in range(total)]
    peak, warmup = rec.learning_rate, rec.warmup_steps
    assert hf[0] == 0.0 and ours[0] == pytest.approx(peak / warmup)
    warm = max(abs(a - b) for a, b in zip(hf[:warmup], ours[:warmup])) / peak
    decay = max(abs(a - b) for a, b in zip(hf[warmup:], ours[warmup:])) / peak
    assert warm == pytest.approx(1 / warmup, rel=1e-6)
    assert 0 < decay < 3e-4
    assert hf[-1] == pytest.approx(peak * 0.1, rel=1e-5) and hf[warmup] == pytest.approx(peak)


def test_training_arguments_accept_the_kwargs(rec, tmp_path):
    transformers = pytest.importorskip("transformers")
    try:
        args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[],
                                              **rec.hf_training_arguments())
    except ImportError as error:  # e.g. accelerate missing
        pytest.skip(f"TrainingArguments unavailable: {error}")
    assert args.per_device_train_batch_size == rec.batch_size
    assert args.gradient_accumulation_steps == rec.gradient_accumulation_steps
    assert args.learning_rate == rec.learning_rate and args.warmup_steps == rec.warmup_steps
    assert args.max_steps == rec.total_updates
    assert getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type) == "cosine_with_min_lr"
    assert args.lr_scheduler_kwargs == {"min_lr_rate": rec.final_lr_fraction}


def test_lightning_recipe_gives_lr_at_every_step(rec):
    lightning = pytest.importorskip("lightning")
    seen = []
    total = 30

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, _):
            seen.append(self.optimizers().param_groups[0]["lr"])
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self):
            optimizer = torch.optim.AdamW(self.parameters())
            return {"optimizer": optimizer, "lr_scheduler": rec.lightning_lr_scheduler(optimizer, total_steps=total)}

    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    trainer = lightning.Trainer(**rec.lightning_trainer_kwargs(total_steps=total), accelerator="cpu",
                                logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False)
    trainer.fit(Module(), loader)
    assert seen == pytest.approx([rec.lr_at(step, total) for step in range(total)], rel=1e-12)
