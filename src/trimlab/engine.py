"""What a run and the training methods share: a trainer, fitting for N epochs, fine-tuning, evaluation, side-by-side timing.

Methods import this, never :mod:`trimlab.run` (the orchestrator), so the
orchestration can use the methods without an import cycle.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import TQDMProgressBar
from omegaconf import DictConfig
from torch import Tensor, nn

from trimlab.data.augment import batch_mixer, train_transform, transforms_images
from trimlab.measure.flops import mean_flops_per_example
from trimlab.measure.latency import LatencyResult, compare_latency, measure_latency
from trimlab.measure.size import count_params, model_size_bytes
from trimlab.models.placement import batch_for, model_device
from trimlab.results.record import RunRecord
from trimlab.resumable import ResumableTraining, saved_step
from trimlab.results.tracking import Tracker
from trimlab.training import ClassifierModule, steps_for

log = logging.getLogger(__name__)


def fit(
    module: pl.LightningModule,
    model: nn.Module,
    datamodule: Any,
    epochs: float,
    trainer_cfg: Any,
    make_trainer: Any,
    resume: Path | None = None,
    label: str = "training",
    keep_final: bool = True,
) -> int:
    """Train ``module`` (which wraps ``model``) for ``epochs`` (fractional allowed) of the training split; returns the steps.

    The model is put in train mode first (Lightning keeps the mode it finds;
    a measurement leaves it in eval mode) and left in eval mode. With ``resume``
    the training state is saved to that file as it goes (see :mod:`trimlab.resumable`;
    with ``keep_final`` at the end too, so a later attempt skips this training)
    and a state an earlier attempt saved there is continued; the log calls it ``label``.
    """
    steps = steps_for(epochs, len(datamodule.train_dataloader()), trainer_cfg)
    callbacks, ckpt_path = [], None
    if resume is not None:
        callbacks.append(ResumableTraining(resume, trainer_cfg.checkpoint_every_n_steps, keep_final))
        if resume.exists():
            ckpt_path = resume
            log.info("resuming %s at step %d of %d from %s", label, saved_step(resume), steps, resume)
    model.train()
    make_trainer(max_steps=steps, max_epochs=-1, callbacks=callbacks).fit(
        module,
        train_dataloaders=datamodule.train_dataloader(),
        val_dataloaders=datamodule.val_dataloader(),
        ckpt_path=ckpt_path,
        weights_only=True,
    )
    model.eval()
    return steps


LOG_FILE_REFRESH_STEPS = 10
"""Steps between progress updates when the output is a file (a background run, a multirun's log): Lightning's
default bar (Rich, when installed) draws only its final state there, so an hour-long fine-tune would show nothing."""


def build_trainer(cfg: DictConfig, tracker: Tracker, run_dir: Path, **overrides: Any) -> pl.Trainer:
    """A Trainer with the run's hardware settings; the run's tracker is its logger."""
    t = cfg.trainer
    kwargs: dict[str, Any] = dict(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_eval_batches,
        limit_test_batches=t.limit_eval_batches,
        enable_progress_bar=t.progress_bar,
        enable_checkpointing=False,
        enable_model_summary=False,
        deterministic=t.deterministic,
        log_every_n_steps=t.log_every_n_steps,
        gradient_clip_val=t.gradient_clip_val or None,
        accumulate_grad_batches=t.accumulate_grad_batches,
        logger=tracker.logger if tracker.logger is not None else False,
        default_root_dir=str(run_dir),
    )
    callbacks = list(overrides.pop("callbacks", []))
    if t.progress_bar and not sys.stderr.isatty():
        callbacks.append(TQDMProgressBar(refresh_rate=LOG_FILE_REFRESH_STEPS))
    kwargs.update(overrides, callbacks=callbacks)
    return pl.Trainer(**kwargs)


def finetune(cfg: DictConfig, model: nn.Module, datamodule: Any, make_trainer: Any, resume: Path | None = None) -> None:
    """Fine-tune (or train from scratch) the dense model with the ``finetune`` recipe; ``resume``: where its state is kept."""
    ft = cfg.finetune
    aug = ft.augment
    module = ClassifierModule(
        model,
        datamodule.num_labels,
        datamodule.metric,
        lr=ft.lr,
        weight_decay=ft.weight_decay,
        warmup_ratio=ft.warmup_ratio,
        label_smoothing=ft.label_smoothing,
        freeze_embeddings=ft.freeze_embeddings,
        schedule=ft.schedule,
        mixer=batch_mixer(aug.mixup, aug.cutmix, ft.label_smoothing, datamodule.num_labels),
    )
    if transforms_images(aug.rand_augment, aug.crop_scale, aug.hflip, aug.random_erasing):
        transform = train_transform(
            datamodule.image_size, datamodule.mean, datamodule.std, aug.rand_augment, aug.crop_scale, aug.hflip, aug.random_erasing
        )
        datamodule = datamodule.augmented(transform)
    log.info("fine-tuning %s on %s for %.2g epochs", cfg.model.name, cfg.dataset.name, ft.epochs)
    fit(module, model, datamodule, ft.epochs, cfg.trainer, make_trainer, resume, "fine-tuning", keep_final=False)
    for p in model.parameters():
        p.requires_grad_(True)


def evaluate(model: nn.Module, datamodule: Any, make_trainer: Any, reference: nn.Module, flops_batches: int) -> dict[str, Any]:
    """Task metric on the test split, FLOPs per example (over ``flops_batches`` test batches), parameters and size."""
    return evaluate_predicting(model, datamodule, make_trainer, reference, flops_batches)[0]


def evaluate_predicting(
    model: nn.Module,
    datamodule: Any,
    make_trainer: Any,
    reference: nn.Module,
    flops_batches: int,
    reference_preds: np.ndarray | None = None,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """:func:`evaluate`'s metrics, and the targets and predictions of each test example (in dataset order) they come from.

    ``reference_preds``: ``reference``'s test predictions when already computed (a run's dense evaluation), so the
    agreement metric does not run ``reference`` again.
    """
    preds = None if reference_preds is None else torch.from_numpy(reference_preds)
    module = ClassifierModule(model, datamodule.num_labels, datamodule.metric, reference=reference, reference_preds=preds)
    # Under DDP every process tests every example: exact metrics, no padded shards.
    results = make_trainer(logger=False, use_distributed_sampler=False).test(module, dataloaders=datamodule.test_dataloader(), verbose=False)
    metric = float(results[0][f"test/{datamodule.metric}"])
    flops = mean_flops_per_example(model, datamodule.test_dataloader(), max_batches=flops_batches)
    metrics = {
        "metric": metric,
        "metric_name": datamodule.metric,
        "flops": float(flops),
        "params": count_params(model),
        "size_mb": model_size_bytes(model) / 2**20,
    }
    targets, preds = module.test_predictions()
    return metrics, targets.numpy(), preds.numpy()


def compare(
    cfg: DictConfig, dense: nn.Module, compressed: nn.Module, kernel: nn.Module | None, datamodule: Any, record: RunRecord
) -> dict[str, float]:
    """Latency side by side (interleaved, same inputs, same process) and the compressed/dense ratios.

    ``kernel``: the compressed model through int8 kernels (:func:`~trimlab.measure.int8_kernel.int8_kernel_model`), timed too.
    """
    ratios = {
        "flops": record.compressed["flops"] / record.dense["flops"],
        "params": record.compressed["params"] / record.dense["params"],
        "size": stored_size_mb(record.compressed) / record.dense["size_mb"],
        "metric_delta": record.compressed["metric"] - record.dense["metric"],
    }
    m = cfg.measure
    for batch_size in m.latency_batch_sizes:
        batch = first_examples(datamodule.test_dataloader(), batch_size)
        with placed_on(torch.device(m.device), dense, compressed):
            placed = batch_for(dense, batch)
            if compressed is dense:
                a = measure_latency(dense, placed, warmup=m.warmup, repeats=m.repeats, threads=m.threads)
                b = a
            else:
                a, b = compare_latency(dense, compressed, placed, warmup=m.warmup, repeats=m.repeats, threads=m.threads)
        _store_latency(record.dense, a)
        _store_latency(record.compressed, b)
        ratios[f"speedup_b{a.batch_size}"] = a.median_s / b.median_s
        # the share of the physical limit (1 / FLOPs ratio) the speedup reaches: 1.0 = the FLOPs saving fully turned into speed
        ratios[f"limit_fraction_b{a.batch_size}"] = ratios[f"speedup_b{a.batch_size}"] * ratios["flops"]
        if kernel is not None:  # the same weights through int8 kernels, which run on the CPU only: what quantization buys on this CPU
            d, c = compare_latency(dense, kernel, batch, warmup=m.warmup, repeats=m.repeats, threads=m.threads)
            record.compressed[f"latency_ms_b{c.batch_size}_int8_kernel"] = c.median_s * 1e3
            ratios[f"speedup_b{c.batch_size}_int8_kernel"] = d.median_s / c.median_s
    return ratios


def stored_size_mb(metrics: dict[str, Any]) -> float:
    """The model's size as stored: a quantized model's saved files (``size_mb_quantized``), else its fp32 parameters."""
    return float(metrics.get("size_mb_quantized", metrics["size_mb"]))


def _store_latency(metrics: dict[str, Any], result: LatencyResult) -> None:
    b = result.batch_size
    metrics[f"latency_ms_b{b}"] = result.median_s * 1e3
    metrics[f"throughput_b{b}"] = result.throughput
    metrics["threads"] = result.threads
    metrics["latency_device"] = result.device


@contextmanager
def placed_on(device: torch.device, *models: nn.Module) -> Iterator[None]:
    """The models on ``device`` for the block, then back where each was (a run's models sit on the CPU between trainers)."""
    before = [model_device(m) for m in models]
    try:
        for m in models:
            m.to(device)
        yield
    finally:
        for m, where in zip(models, before):
            m.to(where)


def first_examples(loader: Iterable[Mapping[str, Tensor]], n: int) -> dict[str, Tensor]:
    """The first ``n`` examples of a loader as one batch (right-padding sequence tensors to a common length)."""
    parts: list[Mapping[str, Tensor]] = []
    count = 0
    for batch in loader:
        parts.append(batch)
        count += len(next(iter(batch.values())))
        if count >= n:
            break
    out: dict[str, Tensor] = {}
    for key in parts[0]:
        tensors = [p[key] for p in parts]
        if tensors[0].ndim == 2 and key != "pixel_values":
            length = max(t.shape[1] for t in tensors)
            tensors = [F.pad(t, (0, length - t.shape[1])) for t in tensors]
        out[key] = torch.cat(tensors)[:n]
    if "attention_mask" in out:
        length = int(out["attention_mask"].sum(1).max())
        out = {k: v[:, :length] if v.ndim == 2 and k != "labels" else v for k, v in out.items()}
    return out
