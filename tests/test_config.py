"""Every config option composes against its schema; bad input fails early with a message naming the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException

from trimlab.config import ConfigError, validate
from trimlab.results.record import run_id

CONF = Path(__file__).parents[1] / "conf"
GROUPS = ("model", "dataset", "method", "finetune", "budget", "trainer", "logger", "experiment")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(compose_cfg, group, option):
    cfg = compose_cfg(f"{group}={option}")
    if group in ("model", "dataset", "method", "logger"):
        assert cfg[group].name == option if "name" in cfg[group] else True


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), f"config group {group} has no options"


def test_default_is_the_embedded_experiment(compose_cfg):
    cfg = compose_cfg()
    assert (cfg.model.name, cfg.dataset.name, cfg.method.name, cfg.budget.kind) == ("minilm_l6", "tweets", "fisher_prune", "flops")
    assert cfg.budget.target == pytest.approx(0.6)
    assert cfg.logger.kind == "wandb" and cfg.logger.mode == "offline"
    validate(cfg)


def test_model_option_picks_its_finetune_recipe(compose_cfg):
    assert compose_cfg("model=vit_digits", "dataset=digits").finetune.lr == pytest.approx(1e-3)
    assert compose_cfg("model=efficientnet_lite0", "dataset=photos").finetune.enabled is False
    assert compose_cfg("model=vit_digits", "dataset=digits", "finetune.epochs=3").finetune.epochs == 3
    assert compose_cfg("model=vit_digits", "dataset=digits", "finetune=text").finetune.lr == pytest.approx(5e-5)


def test_unknown_key_fails_at_composition_naming_it(compose_cfg):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg("model.hiden_size=3")
    assert "hiden_size" in str(err.value.__cause__ or err.value)


def test_wrong_type_fails_at_composition_naming_it(compose_cfg):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg("trainer.num_threads=many")
    assert "num_threads" in str(err.value.__cause__ or err.value)


def test_method_that_cannot_take_the_budget(compose_cfg):
    with pytest.raises(ConfigError, match="method=dense cannot take a 'flops' budget; it accepts none"):
        validate(compose_cfg("method=dense", "budget=flops_60"))


@pytest.mark.parametrize("override,match", [
    ("budget.target=1.5", r"must be a ratio in \(0, 1\]"),
    ("budget.kind=speed", "budget.kind='speed' is not one of"),
])
def test_infeasible_budget_values(compose_cfg, override, match):
    cfg = compose_cfg("budget=flops_60", override)
    cfg.method.budgets = ["flops"]
    with pytest.raises(ConfigError, match=match):
        validate(cfg)


def test_bits_must_be_whole(compose_cfg):
    cfg = compose_cfg("budget=bits_4", "budget.target=4.5")
    cfg.method.budgets = ["bits"]
    with pytest.raises(ConfigError, match="whole number of bits"):
        validate(cfg)


def test_imagenet_without_a_folder_names_the_key(compose_cfg):
    with pytest.raises(ConfigError, match="dataset.path='' is not a folder; point dataset.path at an ImageFolder"):
        validate(compose_cfg("model=efficientnet_lite0", "dataset=imagenet"))


def test_image_folder_needs_its_class_count(compose_cfg, tmp_path):
    (tmp_path / "train").mkdir()
    cfg = compose_cfg("model=cnn_digits", "dataset=image_folder", f"dataset.path={tmp_path}")
    with pytest.raises(ConfigError, match="set dataset.num_labels to the number of folders in train/"):
        validate(cfg)
    cfg.dataset.num_labels = 3
    validate(cfg)


def test_a_metric_trimlab_does_not_measure_fails_before_work(compose_cfg):
    with pytest.raises(ConfigError, match="dataset.metric='abc' is not one of accuracy, f1, pearson, agreement"):
        validate(compose_cfg("dataset.metric=abc"))


def test_text_model_on_image_data_is_rejected(compose_cfg):
    with pytest.raises(ConfigError, match="dataset=digits is a image set but model=minilm_l6 is a text model"):
        validate(compose_cfg("dataset=digits"))


def test_missing_weights_file(compose_cfg):
    with pytest.raises(ConfigError, match="model.path='/nope.pt' does not exist"):
        validate(compose_cfg("model=deit_tiny", "dataset=digits", "model.weights=file", "model.path=/nope.pt"))


@pytest.mark.parametrize(
    "override,match",
    [
        ("+budget.targt=0.5", r"budget.targt is not a trimlab key; did you mean budget.target\?"),
        ("+methd=fisher_prune", r"methd is not a trimlab key; did you mean method\?"),
        ("+method.steps.prune.tun=false", "method.steps.prune.tun is not a trimlab key"),
    ],
)
def test_a_key_added_with_plus_that_the_schema_lacks_fails_naming_it(compose_cfg, override, match):
    extra = ["method=fisher_prune_pwlq"] if "steps" in override else []
    with pytest.raises(ConfigError, match=match):
        validate(compose_cfg(*extra, override))


@pytest.mark.parametrize(
    "override,match",
    [
        ("finetune.epochs=-5", r"finetune.epochs=-5.0 is out of range: must be > 0"),
        ("seed=-1", r"seed=-1 is out of range: must be ≥ 0"),
        ("trainer.devices=0", r"trainer.devices=0 is out of range"),
        ("measure.repeats=0", r"measure.repeats=0 is out of range: must be ≥ 1"),
        ("measure.latency_batch_sizes=[1,0]", r"measure.latency_batch_sizes=\[1, 0\] is out of range: each value must be ≥ 1"),
        ("dataset.batch_size=0", r"dataset.batch_size=0 is out of range"),
        ("finetune.warmup_ratio=1.5", r"finetune.warmup_ratio=1.5 is out of range: must be ≥ 0 and ≤ 1"),
    ],
)
def test_values_out_of_range_fail_before_work_naming_the_key(compose_cfg, override, match):
    with pytest.raises(ConfigError, match=match):
        validate(compose_cfg(override))


def test_latency_is_timed_on_a_device_the_run_has(compose_cfg):
    with pytest.raises(ConfigError, match="measure.device='tpu' is not one of cpu, cuda"):
        validate(compose_cfg("measure.device=tpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="measure.device=cuda but this machine has no CUDA device"):
            validate(compose_cfg("measure.device=cuda"))


def test_latency_is_timed_where_the_trainer_computes_unless_told(compose_cfg):
    """measure.device defaults to the trainer's device; an explicit value wins; the CPU default keeps run ids as they were."""
    assert compose_cfg().measure.device == "cpu"
    assert compose_cfg("trainer=gpu").measure.device == "cuda"
    assert compose_cfg("trainer=ddp").measure.device == "cuda"
    assert compose_cfg("trainer=ddp", "trainer.accelerator=cpu").measure.device == "cpu"
    assert compose_cfg("trainer=gpu", "measure.device=cpu").measure.device == "cpu"
    assert run_id(compose_cfg()) == run_id(compose_cfg("measure.device=cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="trainer.accelerator=gpu but this machine has no CUDA device; use trainer=cpu"):
            validate(compose_cfg("trainer=gpu"))


def test_lightning_trainer_options_are_schema_keys(compose_cfg):
    validate(compose_cfg("trainer.gradient_clip_val=0.5", "trainer.accumulate_grad_batches=2"))


@pytest.mark.parametrize("name", ["../../../x", "a/b", ".hidden", "x" * 65])
def test_names_that_would_escape_or_overflow_a_file_name_are_refused(compose_cfg, name):
    with pytest.raises(ConfigError, match="model.name=.* cannot be part of a file name"):
        validate(compose_cfg(f"model.name={name}"))
