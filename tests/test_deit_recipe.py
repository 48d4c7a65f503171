"""The DeiT-style dense recipe (``finetune.augment``, ``finetune.schedule``): its keys validate, and it changes the training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from trimlab.checkpoints import dense_checkpoint_path
from trimlab.config import ConfigError, validate
from trimlab.data import build_datamodule
from trimlab.data.augment import batch_mixer, train_transform
from trimlab.engine import finetune
from trimlab.models.build import build_model
from trimlab.results.record import run_id
from trimlab.training import ClassifierModule, lr_factor

DEIT = ("model=vit_digits", "dataset=digits", "finetune=vit_deit_animal")


@pytest.mark.parametrize(
    "override, message",
    [
        ("finetune.schedule=step", r"finetune.schedule='step' is not one of linear, cosine"),
        ("finetune.augment.rand_augment=bogus", r"finetune.augment.rand_augment='bogus' is not a usable timm RandAugment spec"),
        ("finetune.augment.rand_augment=rand-w0", r"'rand-w0' is not a usable timm RandAugment spec: Unknown RandAugment config section"),
        ("finetune.augment.rand_augment=rand-m9x", r"'rand-m9x' is not a usable timm RandAugment spec: invalid literal"),
        ("finetune.augment.rand_augment=rand-m9-mstd0.5-inc1", r"PosterizeIncreasing can keep 0 bits at magnitude 10; cap the magnitude with -mmax9"),
        ("finetune.augment.mixup=-1", r"finetune.augment.mixup=-1.0 is out of range: must be ≥ 0"),
        ("finetune.augment.crop_scale=0", r"finetune.augment.crop_scale=0.0 is out of range: must be > 0 and ≤ 1"),
        ("finetune.augment.hflip=2", r"finetune.augment.hflip=2.0 is out of range"),
    ],
)
def test_a_bad_recipe_value_names_its_key(compose_cfg, override: str, message: str) -> None:
    validate(compose_cfg(*DEIT))
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg(*DEIT, override))


def test_augmenting_a_text_set_is_refused_naming_the_key(compose_cfg) -> None:
    with pytest.raises(ConfigError, match=r"finetune.augment applies to the grey image sets .* not dataset.source=tweets"):
        validate(compose_cfg("finetune.augment.mixup=0.8"))


def test_the_recipe_keys_at_their_defaults_keep_earlier_run_ids_and_change_them_when_set(compose_cfg) -> None:
    cfg = compose_cfg("model=vit_digits", "dataset=digits")
    before = OmegaConf.to_container(cfg, resolve=True)
    del before["finetune"]["schedule"], before["finetune"]["augment"]  # a config from before the recipe keys
    assert run_id(cfg) == run_id(OmegaConf.create(before))
    assert dense_checkpoint_path(cfg) == dense_checkpoint_path(OmegaConf.create(before))  # the cached dense weights too
    assert dense_checkpoint_path(compose_cfg(*DEIT)) != dense_checkpoint_path(cfg)
    assert run_id(compose_cfg("model=vit_digits", "dataset=digits", "finetune.schedule=cosine")) != run_id(cfg)
    assert run_id(compose_cfg("model=vit_digits", "dataset=digits", "finetune.augment.mixup=0.8")) != run_id(cfg)


def test_the_deit_recipe_augments_the_training_images_only(compose_cfg) -> None:
    cfg = compose_cfg(*DEIT)
    built = build_model(cfg.model, 10)
    dm = build_datamodule(cfg.dataset, built, seed=0)
    aug = cfg.finetune.augment
    transform = train_transform(dm.image_size, dm.mean, dm.std, aug.rand_augment, aug.crop_scale, aug.hflip, aug.random_erasing)
    augmented = dm.augmented(transform)
    plain, mixed = dm.train_set[0], augmented.train_set[0]
    assert mixed["pixel_values"].shape == plain["pixel_values"].shape
    assert torch.equal(mixed["labels"], plain["labels"])
    torch.manual_seed(0)
    draws = [augmented.train_set[0]["pixel_values"] for _ in range(4)]
    assert any(not torch.allclose(d, plain["pixel_values"]) for d in draws)
    for i in range(400):  # every op at every drawn magnitude works on the grey images (a 0-bit posterize would raise)
        augmented.train_set[i % 50]
    assert augmented.val_set is dm.val_set and dm.train_set[0]["pixel_values"].equal(plain["pixel_values"])


def test_a_mixer_trains_on_soft_targets_of_mixed_pairs(compose_cfg) -> None:
    cfg = compose_cfg("model=vit_digits", "dataset=digits")
    model = build_model(cfg.model, 10).model
    batch = {"pixel_values": torch.randn(5, cfg.model.in_chans, cfg.model.image_size, cfg.model.image_size), "labels": torch.arange(5)}
    plain = ClassifierModule(model, 10, "accuracy", label_smoothing=0.1)
    mixer = batch_mixer(0.8, 1.0, 0.1, 10)
    assert batch_mixer(0.0, 0.0, 0.1, 10) is None and mixer is not None
    module = ClassifierModule(model, 10, "accuracy", label_smoothing=0.1, mixer=mixer)
    np.random.seed(0)  # timm draws the mixing weight and mode from NumPy, the CutMix box too
    pixels, soft = batch_mixer(0.8, 1.0, 0.1, 10)(batch["pixel_values"][:4].clone(), batch["labels"][:4])  # type: ignore[misc]
    expected = torch.sum(-soft * torch.log_softmax(model({"pixel_values": pixels}).logits, -1), -1).mean()
    np.random.seed(0)
    loss = float(module.mixed_loss(batch).detach())  # 5 examples: the odd one left out
    assert loss == pytest.approx(float(expected.detach()), rel=1e-5)
    assert loss != pytest.approx(float(plain.task_loss(plain(batch), batch["labels"]).detach()), rel=1e-3)


def test_the_cosine_schedule_halves_the_rate_midway_where_the_linear_one_does_too_and_differs_between() -> None:
    assert lr_factor(4, 104, 5, "cosine") == pytest.approx(5 / 6)  # the warm-up is shared
    assert lr_factor(55, 105, 5, "cosine") == pytest.approx(0.5) and lr_factor(55, 105, 5, "linear") == pytest.approx(0.5)
    assert lr_factor(30, 105, 5, "cosine") == pytest.approx(0.5 * (1 + 2**-0.5))  # a quarter of the decay in: cos(π/4)
    assert lr_factor(30, 105, 5, "linear") == pytest.approx(0.75)
    assert lr_factor(105, 105, 5, "cosine") == 0.0


def test_the_dense_training_runs_under_the_deit_recipe(compose_cfg, tmp_path) -> None:
    import lightning.pytorch as pl

    cfg = compose_cfg(*DEIT, "finetune.epochs=1", "trainer.limit_train_batches=3")
    built = build_model(cfg.model, 10)
    dm = build_datamodule(cfg.dataset, built, seed=0)
    start = {k: v.clone() for k, v in built.model.state_dict().items()}

    def make_trainer(**kw):
        return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, limit_train_batches=3, limit_val_batches=0, default_root_dir=tmp_path, **kw)

    finetune(cfg, built.model, dm, make_trainer)
    assert any(not torch.equal(v, start[k]) for k, v in built.model.state_dict().items())
    assert dm.train_set[0]["pixel_values"].equal(dm.train_set[0]["pixel_values"])  # the run's own datamodule stays unaugmented
