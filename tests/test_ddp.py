"""``trainer=ddp``: Lightning's DDP on CPU with 2 processes stands in for a multi-GPU machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from trimlab.checkpoints import dense_checkpoint_path, load_checkpoint
from trimlab.config import ConfigError, process_count
from trimlab.data import build_datamodule
from trimlab.models.build import build_model
from trimlab.results.tracking import Tracker
from trimlab.engine import build_trainer, evaluate
from trimlab.training import steps_for

DDP_ON_CPU = ("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true")


def _tiny(tiny_run: tuple[str, ...], **groups: str) -> list[str]:
    """``tiny_run`` with some of its group choices replaced."""
    chosen = [o for o in tiny_run if o.split("=")[0] not in groups]
    return [*chosen, *(f"{k}={v}" for k, v in groups.items())]


def test_ddp_trains_in_two_processes_and_the_primary_alone_records_exact_metrics(
    tmp_path: Path, tiny_run: tuple[str, ...], compose_cfg
) -> None:
    overrides = [*DDP_ON_CPU, *_tiny(tiny_run, method="pwlq", budget="bits_4")]
    done = subprocess.run(
        [sys.executable, "-m", "trimlab.cli", *overrides, f"paths.output_dir={tmp_path}"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run_dirs = [p for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")]
    assert len(run_dirs) == 1
    assert (run_dirs[0] / "train_ddp_process_1.log").is_file()  # the second process ran the same job
    record = json.loads((run_dirs[0] / "record.json").read_text())
    assert record["status"] == "completed" and record["config"]["trainer"]["strategy"] == "ddp"
    assert record["ratios"]["speedup_b1"] > 0  # timed by the primary process

    # The metrics both processes agreed on are those of one process evaluating the saved weights.
    cfg = compose_cfg(*overrides)
    checkpoint = dense_checkpoint_path(cfg)
    assert [p.name for p in checkpoint.parent.iterdir()] == [checkpoint.name]  # written once, no temp files left
    built = build_model(cfg.model, num_labels=cfg.dataset.num_labels)
    load_checkpoint(built.model, checkpoint)
    datamodule = build_datamodule(cfg.dataset, built, cfg.seed)
    datamodule.setup("fit")
    single = OmegaConf.merge(cfg, {"trainer": {"strategy": "auto", "devices": 1}})

    def make_trainer(**kw):
        return build_trainer(single, Tracker(None), tmp_path, **kw)

    alone = evaluate(built.model.eval(), datamodule, make_trainer, built.model, single.measure.flops_batches)
    assert alone["metric"] == pytest.approx(record["dense"]["metric"], abs=1e-6)


def test_ddp_in_a_local_multirun_is_refused_before_any_work(tmp_path: Path, tiny_run: tuple[str, ...]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "trimlab.cli", "-m", *DDP_ON_CPU, *tiny_run, "seed=0,1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode != 0
    assert "submitit_slurm" in done.stderr and "trainer=ddp" in done.stderr
    assert not list((tmp_path / "outputs" / "runs").glob("*/record.json"))


def test_ddp_splits_each_epoch_across_processes(compose_cfg) -> None:
    one = compose_cfg().trainer
    two = compose_cfg(*DDP_ON_CPU).trainer
    assert (process_count(one), process_count(two)) == (1, 2)
    assert steps_for(2, 11, one) == 22
    assert steps_for(2, 11, two) == 12  # each process: ceil(11 / 2) batches an epoch
    with pytest.raises(ConfigError, match="trainer.devices"):
        process_count(compose_cfg(*DDP_ON_CPU[:2], "trainer.devices=auto").trainer)
