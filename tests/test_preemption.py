"""Preemptible training: a run stopped mid-training (SIGTERM, or killed after a periodic save) resumes on its next
attempt and ends with the same weights as a run never stopped (same seed, same steps)."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import DictConfig
from safetensors.torch import load_file

from trimlab.checkpoints import dense_checkpoint_path, resume_folder
from trimlab.interrupt import RunInterrupted
from trimlab.methods.ltp.module import TokenPruningModule
from trimlab.methods.ltp.selectors import LearnedThresholds
from trimlab.methods.mait.module import MaskedAttentionModule
from trimlab.methods.sait.module import DenseSparseModule
from trimlab.results.record import RECORD_FILE, read_record
from trimlab.resumable import saved_step
from trimlab.run import run
from trimlab.results.run_folder import resume_dir
from trimlab.saved_model import load_model
from trimlab.training import ClassifierModule

BATCHES = ("dataset.max_train_examples=512", "finetune.epochs=2")
"""8 batches of 64 an epoch, 16 steps: room to stop mid-epoch and at an epoch's end."""


class Crash(Exception):
    """What a test raises for a process killed outright: no signal, nothing saved on the way out."""


def stop_at(
    monkeypatch: pytest.MonkeyPatch, module: type, step: int, stop: Callable[[], None], only: Callable[[Any], bool] = lambda m: True
) -> None:
    """``stop()`` once, when a training step of ``module`` (those ``only`` accepts) starts with ``step`` optimizer steps done."""
    train = module.training_step
    fired: list[int] = []

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        if self.trainer.global_step == step and only(self) and not fired:
            fired.append(step)
            stop()
        return train(self, batch, batch_idx)

    monkeypatch.setattr(module, "training_step", training_step)


def sigterm() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def crash() -> None:
    raise Crash("killed")


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture
def fine_tuning(compose_cfg: Callable[..., DictConfig], tiny_run: tuple[str, ...], tmp_path: Path) -> Callable[..., DictConfig]:
    """The tiny run with a longer fine-tune, its outputs in a folder of its own (``name``)."""
    return lambda name, *more: compose_cfg(*tiny_run, *BATCHES, f"paths.output_dir={tmp_path / name}", *more)


@pytest.mark.parametrize("step", [5, 7])  # mid-epoch; the epoch's last step (saved after its validation)
def test_fine_tuning_stopped_by_sigterm_resumes_to_the_weights_of_an_unstopped_run(
    fine_tuning: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, step: int
) -> None:
    whole = fine_tuning("whole")
    run(whole)

    cfg = fine_tuning("stopped")
    stop_at(monkeypatch, ClassifierModule, step, sigterm)
    with pytest.raises(RunInterrupted, match="SIGTERM"):
        run(cfg)
    state = resume_folder(dense_checkpoint_path(cfg)) / "finetune.ckpt"
    assert saved_step(state) == step + 1  # the step the signal came in was finished, then saved
    assert not dense_checkpoint_path(cfg).exists()
    monkeypatch.undo()

    with caplog.at_level(logging.INFO, logger="trimlab"):
        record = run(cfg)
    assert record.status == "completed"
    assert f"resuming fine-tuning at step {step + 1} of 16 from {state}" in caplog.text
    assert_same_weights(weights(dense_checkpoint_path(cfg)), weights(dense_checkpoint_path(whole)))
    assert not resume_folder(dense_checkpoint_path(cfg)).exists()  # the cache holds the result now


def test_a_run_killed_outright_resumes_from_its_last_periodic_state(
    fine_tuning: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    whole = fine_tuning("whole")
    run(whole)

    cfg = fine_tuning("killed", "trainer.checkpoint_every_n_steps=4")
    stop_at(monkeypatch, ClassifierModule, 6, crash)
    with pytest.raises(Crash):
        run(cfg)
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="trimlab"):
        run(cfg)
    assert "resuming fine-tuning at step 4 of 16" in caplog.text
    assert_same_weights(weights(dense_checkpoint_path(cfg)), weights(dense_checkpoint_path(whole)))


def test_a_second_signal_stops_at_once_without_saving(fine_tuning: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = fine_tuning("impatient", "trainer.checkpoint_every_n_steps=0")

    def twice() -> None:
        sigterm()
        sigterm()

    stop_at(monkeypatch, ClassifierModule, 5, twice)
    with pytest.raises(RunInterrupted):
        run(cfg)
    assert not resume_folder(dense_checkpoint_path(cfg)).exists()
    record_path = next(Path(cfg.paths.output_dir, "runs").glob(f"*/{RECORD_FILE}"))
    assert read_record(record_path).status == "interrupted"


LTP = ("experiment=smoke", "model=vit_digits", "dataset=digits", "method=ltp", "budget.kind=tokens", "budget.target=0.7",
       "method.soft_epochs=2", "method.hard_epochs=2", "method.calibration_examples=64")
"""Two stages of 8 steps each (4 batches an epoch), a transformer with dropout."""


def soft_stage(module: TokenPruningModule) -> bool:
    return isinstance(module.selector, LearnedThresholds) and not module.selector.hard


@pytest.mark.parametrize(("stage", "step"), [("soft", 5), ("hard", 2)])
def test_ltp_stopped_in_either_stage_resumes_to_the_model_of_an_unstopped_run(
    compose_cfg: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path,
    stage: str, step: int,
) -> None:
    whole = run(compose_cfg(*LTP, f"paths.output_dir={tmp_path / 'whole'}"))

    cfg = compose_cfg(*LTP, f"paths.output_dir={tmp_path / 'stopped'}")
    stop_at(monkeypatch, TokenPruningModule, step, sigterm, only=lambda m: soft_stage(m) == (stage == "soft"))
    with pytest.raises(RunInterrupted):
        run(cfg)
    monkeypatch.undo()
    states = resume_dir(Path(cfg.paths.output_dir) / "runs" / whole.run_id)
    assert saved_step(states / f"ltp-{stage}.ckpt") == step + 1

    with caplog.at_level(logging.INFO, logger="trimlab"):
        record = run(cfg)
    assert f"resuming LTP's {stage} stage at step {step + 1} of 8" in caplog.text
    if stage == "hard":
        assert "resuming LTP's soft stage at step 8 of 8" in caplog.text  # kept whole: not trained again
    assert record.compressed["thresholds"] == whole.compressed["thresholds"]
    runs = Path(cfg.paths.output_dir) / "runs"
    assert_same_weights(load_model(runs / record.run_id).state_dict(), load_model(tmp_path / "whole" / "runs" / whole.run_id).state_dict())
    assert not states.exists()  # the completed run holds the result


@pytest.mark.parametrize(
    ("overrides", "module", "label"),
    [
        (("method=sait", "budget=none", "method.density=0.8", "method.eval_densities=[0.8]", "method.epochs=2"), DenseSparseModule, "SaiT training"),
        (("method=mait", "budget=none", "finetune.epochs=2"), MaskedAttentionModule, "MaiT training"),
    ],
)
def test_sait_and_mait_stopped_mid_training_resume_to_the_model_of_an_unstopped_run(
    compose_cfg: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path,
    overrides: tuple[str, ...], module: type, label: str,
) -> None:
    common = ("experiment=smoke", "model=vit_digits", "dataset=digits", *overrides)
    whole = run(compose_cfg(*common, f"paths.output_dir={tmp_path / 'whole'}"))
    cfg = compose_cfg(*common, f"paths.output_dir={tmp_path / 'stopped'}")
    stop_at(monkeypatch, module, 5, sigterm)
    with pytest.raises(RunInterrupted):
        run(cfg)
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="trimlab"):
        record = run(cfg)
    assert f"resuming {label} at step 6 of 8" in caplog.text
    runs = Path(cfg.paths.output_dir) / "runs"
    assert_same_weights(load_model(runs / record.run_id).state_dict(), load_model(tmp_path / "whole" / "runs" / whole.run_id).state_dict())


def test_a_signal_inside_an_accumulation_of_gradients_saves_after_its_optimizer_step(
    fine_tuning: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    whole = fine_tuning("whole", "trainer.accumulate_grad_batches=2")
    run(whole)
    cfg = fine_tuning("stopped", "trainer.accumulate_grad_batches=2")
    stop_at(monkeypatch, ClassifierModule, 3, sigterm)  # the first of the two batches of step 4
    with pytest.raises(RunInterrupted):
        run(cfg)
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="trimlab"):
        run(cfg)
    assert "resuming fine-tuning at step 4 of 8" in caplog.text
    assert_same_weights(weights(dense_checkpoint_path(cfg)), weights(dense_checkpoint_path(whole)))
