"""The run pipeline, method-agnostic.

compose → validate → build model, data, method → dense model (fine-tuned, cached
by config hash) → measure → method → measure the result in the same process →
``record.json``, both models' test predictions (``predictions.npz``) and the
compressed model itself (``model/``, see :mod:`trimlab.saved_model`) (+ W&B).
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from trimlab.checkpoints import dense_checkpoint_path, load_checkpoint, save_checkpoint
from trimlab.config import ConfigError, validate
from trimlab.data import build_datamodule
from trimlab.distributed import is_primary
from trimlab.files import check_free_space, check_writable
from trimlab.interrupt import RunInterrupted, signals_raise
from trimlab.measure.flops import mean_flops_per_example
from trimlab.measure.int8_kernel import int8_kernel_model
from trimlab.measure.latency import LatencyResult, compare_latency, measure_latency
from trimlab.measure.size import count_params, model_size_bytes
from trimlab.methods import MethodContext, build_method
from trimlab.models.build import build_model
from trimlab.results.predictions import PREDICTIONS_KEY, Predictions, write_predictions
from trimlab.results.record import RECORD_FILE, RunRecord, environment, locations, now, run_id
from trimlab.results.run_folder import RunFolder
from trimlab.results.summary import print_summary
from trimlab.results.tracking import Tracker, open_tracker, wandb_logged_in
from trimlab.saved_model import MODEL_DIR, save_model
from trimlab.training import ClassifierModule, steps_for

log = logging.getLogger(__name__)

def run(cfg: DictConfig, run_dir: Path | None = None) -> RunRecord:
    """Run one experiment; a completed run with the same config is returned without rerunning.

    The run folder is owned for the whole run (a second process on the same
    config is refused); a forced rerun keeps the completed record until it
    completes itself (see :mod:`trimlab.results.run_folder`). SIGTERM and SIGINT
    record ``interrupted`` and raise :class:`~trimlab.interrupt.RunInterrupted`.
    Under DDP the other processes run this too, taking part in each fit and
    evaluation but writing only to a scratch folder (see :mod:`trimlab.distributed`).
    """
    validate(cfg)
    rid = run_id(cfg)
    run_dir = run_dir or Path(cfg.paths.output_dir) / "runs" / rid
    if not is_primary():
        with tempfile.TemporaryDirectory(prefix=f"trimlab-{rid}-") as scratch:
            return _run_alongside(cfg, rid, Path(scratch))
    folder = RunFolder(run_dir)
    done = None if cfg.force else folder.completed()
    if done is None:
        preflight(cfg)
        built = _build(cfg)
        with folder.own():
            done = None if cfg.force else folder.completed()  # another process may have finished it meanwhile
            if done is None:
                return _run_owned(cfg, rid, folder, *built)
    log.info("run %s already completed (%s); skipping. Pass force=true to run it again.", rid, run_dir / RECORD_FILE)
    print_summary(done)
    return done


def record_refused(cfg: DictConfig, message: str) -> Path | None:
    """Record a run that failed its checks (a multirun goes on past it); None when another process owns its folder."""
    rid = run_id(cfg)
    try:
        record = _new_record(cfg, rid)
        record.status, record.error, record.stage, record.finished_at = "failed", message, "checks", now()
        with RunFolder(Path(cfg.paths.output_dir) / "runs" / rid).own() as folder:
            return folder.finish(record)
    except (ConfigError, OSError) as err:
        log.warning("could not record the failed run %s: %s", rid, err)
        return None


def preflight(cfg: DictConfig) -> None:
    """What would otherwise fail after the expensive work: folders that cannot be written, a W&B login missing."""
    check_writable(Path(cfg.paths.output_dir), "paths.output_dir")
    check_writable(Path(cfg.paths.cache_dir), "paths.cache_dir")
    if cfg.logger.kind == "wandb" and cfg.logger.mode == "online" and not wandb_logged_in():
        raise ConfigError(
            "logger.mode=online needs a W&B login: run `wandb login` (or set WANDB_API_KEY), "
            "or keep logger.mode=offline and `wandb sync` the run folder later"
        )


def _run_owned(cfg: DictConfig, rid: str, folder: RunFolder, model: nn.Module, datamodule: Any, method: Any, checkpoint: Path) -> RunRecord:
    record = _new_record(cfg, rid)
    folder.write(record)

    def enter(stage: str) -> None:
        record.stage = stage
        folder.write(record)

    tracker = Tracker(None)
    with signals_raise():
        try:
            tracker = open_tracker(cfg, rid, folder.path)
            record.wandb_run_id = tracker.run_id
            _execute(cfg, record, model, datamodule, method, checkpoint, tracker, folder.path, enter)
            record.status, record.stage = "completed", ""
            record.finished_at = now()
            folder.finish(record)
            tracker.log_record(record, folder.path)
        except RunInterrupted as err:
            record.status, record.error = "interrupted", f"{err} during {record.stage or 'start-up'}"
            record.finished_at = now()
            err.record_path, err.stage = folder.finish(record), record.stage
            raise
        except BaseException:
            record.status, record.error = "failed", traceback.format_exc()
            record.finished_at = now()
            folder.finish(record)
            raise
        finally:
            tracker.finish("success" if record.status == "completed" else "failed")
    print_summary(record)
    return record


def _run_alongside(cfg: DictConfig, rid: str, scratch: Path) -> RunRecord:
    """A non-primary DDP process: the same steps in the same order, its writes going to ``scratch``."""
    model, datamodule, method, checkpoint = _build(cfg)
    record = _new_record(cfg, rid)
    _execute(cfg, record, model, datamodule, method, checkpoint, Tracker(None), scratch, lambda stage: None)
    return record


def _build(cfg: DictConfig) -> tuple[nn.Module, Any, Any, Path]:
    """Seeded model (dense weights loaded when cached), data and method, the method's checks passed."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.trainer.num_threads > 0:
        torch.set_num_threads(cfg.trainer.num_threads)
    built = build_model(cfg.model, num_labels=cfg.dataset.num_labels)
    datamodule = build_datamodule(cfg.dataset, built, cfg.seed)
    method = build_method(cfg)
    method.check(cfg, built.model, datamodule)
    checkpoint = dense_checkpoint_path(cfg)
    if cfg.finetune.enabled and checkpoint.exists():
        load_checkpoint(built.model, checkpoint)
    elif cfg.finetune.enabled and is_primary():  # the fine-tuned weights will be saved: room for them and a temporary copy
        check_free_space(Path(cfg.paths.cache_dir), 2 * model_size_bytes(built.model), "paths.cache_dir")
    return built.model, datamodule, method, checkpoint


def _new_record(cfg: DictConfig, rid: str) -> RunRecord:
    return RunRecord(
        run_id=rid,
        status="running",
        model=cfg.model.name,
        dataset=cfg.dataset.name,
        method=cfg.method.name,
        budget=OmegaConf.to_container(cfg.budget, resolve=True),
        seed=cfg.seed,
        config=OmegaConf.to_container(cfg, resolve=True),
        environment=environment(),
        started_at=now(),
        locations=locations(cfg),
    )


def _execute(cfg, record, model, datamodule, method, checkpoint, tracker, run_dir, enter: Callable[[str], None]) -> None:
    datamodule.setup("fit")

    def make_trainer(**overrides: Any) -> pl.Trainer:
        return build_trainer(cfg, tracker, run_dir, **overrides)

    start = time.perf_counter()
    if cfg.finetune.enabled and not checkpoint.exists():
        enter("finetune")
        finetune(cfg, model, datamodule, make_trainer)
        if is_primary():
            _cache_dense(model, checkpoint)
    record.stages["finetune"] = time.perf_counter() - start

    enter("measure_dense")
    dense = copy.deepcopy(model).eval()
    start = time.perf_counter()
    record.dense, labels, dense_preds = evaluate_predicting(cfg, dense, datamodule, make_trainer, reference=dense)
    record.stages["measure_dense"] = time.perf_counter() - start

    enter("method")
    start = time.perf_counter()
    result = method.apply(model, MethodContext(cfg, datamodule, run_dir, make_trainer))
    record.method_cost_s = time.perf_counter() - start
    record.stages.update(result.stages)
    record.artifacts.update(result.artifacts)

    enter("measure_compressed")
    if cfg.method.name == "dense":
        compressed, compressed_preds = dense, dense_preds
        record.compressed = dict(record.dense)
    else:
        compressed = result.model.eval()
        start = time.perf_counter()
        record.compressed, _, compressed_preds = evaluate_predicting(cfg, compressed, datamodule, make_trainer, reference=dense)
        record.stages["measure_compressed"] = time.perf_counter() - start
    record.compressed.update(result.stats)
    if is_primary():
        predictions = Predictions(datamodule.metric, labels, dense_preds, compressed_preds)
        record.artifacts[PREDICTIONS_KEY] = write_predictions(run_dir, predictions)
        saved = save_model(compressed, run_dir / MODEL_DIR, cfg.model, cfg.dataset.num_labels)
        record.artifacts[MODEL_DIR] = MODEL_DIR
        if saved.quantized:  # the size a quantizer claims is the size of what was stored
            record.compressed["size_mb_quantized"] = saved.size_mb
    record.ratios = compare(cfg, dense, compressed, datamodule, record)


def _cache_dense(model: nn.Module, checkpoint: Path) -> None:
    """Cache the fine-tuned weights; a disk that fails now costs the cache, not the run."""
    try:
        save_checkpoint(model, checkpoint)
    except OSError as err:
        log.warning("could not cache the fine-tuned model at %s (%s); this run goes on, the next one fine-tunes again", checkpoint, err)


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
    kwargs.update(overrides)
    return pl.Trainer(**kwargs)


def finetune(cfg: DictConfig, model: nn.Module, datamodule: Any, make_trainer: Any) -> None:
    """Fine-tune (or train from scratch) the dense model with the ``finetune`` recipe."""
    ft = cfg.finetune
    module = ClassifierModule(
        model,
        datamodule.num_labels,
        datamodule.metric,
        lr=ft.lr,
        weight_decay=ft.weight_decay,
        warmup_ratio=ft.warmup_ratio,
        label_smoothing=ft.label_smoothing,
        freeze_embeddings=ft.freeze_embeddings,
    )
    steps = steps_for(ft.epochs, len(datamodule.train_dataloader()), cfg.trainer)
    trainer = make_trainer(max_steps=steps, max_epochs=-1)
    log.info("fine-tuning %s on %s for %.2g epochs (%d steps)", cfg.model.name, cfg.dataset.name, ft.epochs, trainer.max_steps)
    trainer.fit(module, train_dataloaders=datamodule.train_dataloader(), val_dataloaders=datamodule.val_dataloader())
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()


def evaluate(cfg: DictConfig, model: nn.Module, datamodule: Any, make_trainer: Any, reference: nn.Module) -> dict[str, Any]:
    """Task metric on the test split, FLOPs per example, parameters and size."""
    return evaluate_predicting(cfg, model, datamodule, make_trainer, reference)[0]


def evaluate_predicting(
    cfg: DictConfig, model: nn.Module, datamodule: Any, make_trainer: Any, reference: nn.Module
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """:func:`evaluate`'s metrics, and the targets and predictions of each test example (in dataset order) they come from."""
    module = ClassifierModule(model, datamodule.num_labels, datamodule.metric, reference=reference)
    # Under DDP every process tests every example: exact metrics, no padded shards.
    results = make_trainer(logger=False, use_distributed_sampler=False).test(module, dataloaders=datamodule.test_dataloader(), verbose=False)
    metric = float(results[0][f"test/{datamodule.metric}"])
    flops = mean_flops_per_example(model, datamodule.test_dataloader(), max_batches=cfg.measure.flops_batches)
    metrics = {
        "metric": metric,
        "metric_name": datamodule.metric,
        "flops": float(flops),
        "params": count_params(model),
        "size_mb": model_size_bytes(model) / 2**20,
    }
    targets, preds = module.test_predictions()
    return metrics, targets.numpy(), preds.numpy()


def compare(cfg: DictConfig, dense: nn.Module, compressed: nn.Module, datamodule: Any, record: RunRecord) -> dict[str, float]:
    """Latency side by side (interleaved, same inputs, same process) and the compressed/dense ratios."""
    ratios = {
        "flops": record.compressed["flops"] / record.dense["flops"],
        "params": record.compressed["params"] / record.dense["params"],
        "size": stored_size_mb(record.compressed) / record.dense["size_mb"],
        "metric_delta": record.compressed["metric"] - record.dense["metric"],
    }
    m = cfg.measure
    kernel = int8_kernel_model(compressed)
    for batch_size in m.latency_batch_sizes:
        batch = first_examples(datamodule.test_dataloader(), batch_size)
        if compressed is dense:
            a = measure_latency(dense, batch, warmup=m.warmup, repeats=m.repeats, threads=m.threads)
            b = a
        else:
            a, b = compare_latency(dense, compressed, batch, warmup=m.warmup, repeats=m.repeats, threads=m.threads)
        _store_latency(record.dense, a)
        _store_latency(record.compressed, b)
        ratios[f"speedup_b{a.batch_size}"] = a.median_s / b.median_s
        # the share of the physical limit (1 / FLOPs ratio) the speedup reaches: 1.0 = the FLOPs saving fully turned into speed
        ratios[f"limit_fraction_b{a.batch_size}"] = ratios[f"speedup_b{a.batch_size}"] * ratios["flops"]
        if kernel is not None:  # the same weights through int8 kernels: what quantization buys on this CPU
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
