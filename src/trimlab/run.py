"""The run pipeline, method-agnostic.

compose → validate → build model, data, method → dense model (fine-tuned, cached
by config hash) → measure → method → measure the result in the same process
(a quantized one also as deployed, on an integer engine: :mod:`trimlab.measure.deployed`) →
``record.json``, both models' test predictions (``predictions.npz``) and the
compressed model itself (``model/``, see :mod:`trimlab.saved_model`) (+ W&B),
written into a staging folder that becomes the run folder when the run completes.
"""

from __future__ import annotations

import copy
import functools
import logging
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from trimlab.checkpoints import dense_checkpoint_path, load_checkpoint, resume_folder, save_checkpoint, trained_checkpoint_path
from trimlab.config import Budget, ConfigError, FinetuneConfig, MeasureConfig, TrainerConfig, model_kind, process_count, validate
from trimlab.data import build_datamodule, num_labels_of
from trimlab.dense_evaluation import DENSE_EVALUATIONS, Evaluation, evaluation_key, load_evaluation, save_evaluation
from trimlab.distributed import is_primary
from trimlab.files import check_free_space, check_writable
from trimlab.interrupt import RunInterrupted, signals_raise
from trimlab.engine import build_trainer, compare, evaluate_predicting, finetune
from trimlab.measure.deployed import check_disagreement, measure_deployed, quantized_layers
from trimlab.measure.int8_kernel import int8_kernel_model
from trimlab.measure.size import model_size_bytes
from trimlab.methods import MethodContext, build_method, method_label
from trimlab.methods.context import RunContext
from trimlab.models.build import build_model
from trimlab.models.text import hub_commit
from trimlab.results.predictions import PREDICTIONS_KEY, Predictions, write_predictions
from trimlab.results.record import RECORD_FILE, RunRecord, environment, input_fingerprints, locations, now, run_id
from trimlab.resumable import discard
from trimlab.results.run_folder import RunFolder, resume_dir
from trimlab.results.summary import print_summary
from trimlab.results.tracking import Tracker, open_tracker, wandb_logged_in
from trimlab.saved_model import MODEL_DIR, save_model

log = logging.getLogger(__name__)

def run(cfg: DictConfig, run_dir: Path | None = None, hydra_job: Path | None = None) -> RunRecord:
    """Run one experiment; a completed run with the same config is returned without rerunning.

    The run folder is owned for the whole run (a second process on the same
    config is refused); every attempt writes its files into a staging folder
    that replaces the run folder only when it completes, so a forced rerun
    keeps the completed result until it completes itself (see
    :mod:`trimlab.results.run_folder`). SIGTERM and SIGINT
    record ``interrupted`` and raise :class:`~trimlab.interrupt.RunInterrupted`.
    Under DDP the other processes run this too, taking part in each fit and
    evaluation but writing only to a scratch folder (see :mod:`trimlab.distributed`).
    """
    validate(cfg)
    cfg.dataset.num_labels = num_labels_of(cfg.dataset)  # dataset=hf: its classes, counted in the data
    rid = run_id(cfg)
    run_dir = run_dir or Path(cfg.paths.output_dir) / "runs" / rid
    if not is_primary():
        with tempfile.TemporaryDirectory(prefix=f"trimlab-{rid}-") as scratch:
            return _run_alongside(cfg, rid, Path(scratch), resume_dir(run_dir))
    folder = RunFolder(run_dir, hydra_job)
    inputs = input_fingerprints(locations(cfg))
    done = None if cfg.force else _reusable(folder, inputs)
    if done is None:
        preflight(cfg)
        built = _build(cfg)
        with folder.own():
            done = None if cfg.force else _reusable(folder, inputs)  # another process may have finished it meanwhile
            if done is None:
                return _run_owned(cfg, rid, folder, *built)
    log.info("run %s already completed (%s); skipping. Pass force=true to run it again.", rid, run_dir / RECORD_FILE)
    print_summary(done)
    return done


def _reusable(folder: RunFolder, inputs: dict[str, str]) -> RunRecord | None:
    """The folder's completed record if it was computed from the same local inputs as this run."""
    done = folder.completed()
    if done is not None and input_fingerprints(done.locations) != inputs:
        log.warning("run %s completed on other local weights or data (recorded %s, now %s); running it again",
                    folder.path.name, input_fingerprints(done.locations), inputs)
        return None
    return done


def record_refused(cfg: DictConfig, message: str, hydra_job: Path | None = None) -> Path | None:
    """Record a run that failed its checks (a multirun goes on past it); None when another process owns its folder."""
    rid = run_id(cfg)
    try:
        record = _new_record(cfg, rid)
        record.status, record.error, record.stage, record.finished_at = "failed", message, "checks", now()
        with RunFolder(Path(cfg.paths.output_dir) / "runs" / rid, hydra_job).own() as folder:
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
            tracker = open_tracker(cfg, rid, folder.staging)
            record.wandb_run_id = tracker.run_id
            _execute(cfg, record, model, datamodule, method, checkpoint, tracker, folder.staging, resume_dir(folder.path), enter)
            record.status, record.stage = "completed", ""
            record.finished_at = now()
            tracker.log_record(record, folder.staging)
            tracker.finish("success")  # its files are closed before they move with the staging folder
            folder.finish(record)
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


def _run_alongside(cfg: DictConfig, rid: str, scratch: Path, resume: Path) -> RunRecord:
    """A non-primary DDP process: the same steps in the same order, its writes going to ``scratch``."""
    model, datamodule, method, checkpoint = _build(cfg)
    record = _new_record(cfg, rid)
    _execute(cfg, record, model, datamodule, method, checkpoint, Tracker(None), scratch, resume, lambda stage: None)
    return record


def _build(cfg: DictConfig) -> tuple[nn.Module, Any, Any, Path]:
    """Seeded model (dense weights loaded when cached), data and method, the method's checks passed."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.trainer.num_threads > 0:
        torch.set_num_threads(cfg.trainer.num_threads)
    built = build_model(cfg.model, num_labels=cfg.dataset.num_labels)
    datamodule = build_datamodule(cfg.dataset, built, cfg.seed)
    method = build_method(cfg.method)
    method.check(run_context(cfg), Budget.of(cfg.budget), built.model, datamodule)
    checkpoint = dense_checkpoint_path(cfg)
    if cfg.finetune.enabled and checkpoint.exists():
        load_checkpoint(built.model, checkpoint)
    elif cfg.finetune.enabled and is_primary():  # the fine-tuned weights will be saved: room for them and a temporary copy
        check_free_space(Path(cfg.paths.cache_dir), 2 * model_size_bytes(built.model), "paths.cache_dir")
    return built.model, datamodule, method, checkpoint


def run_context(cfg: DictConfig) -> RunContext:
    """The run's settings a method reads, as values (methods never see the run config)."""
    weights = cfg.model.weights
    untrained = weights in ("random", "scratch", "embedded") or (weights != "hub" and cfg.dataset.num_labels > 0)

    def values(schema: type, node: DictConfig) -> Any:
        return schema(**{k: OmegaConf.to_object(v) if isinstance(v, (DictConfig, ListConfig)) else v for k, v in node.items()})

    return RunContext(
        cache_dir=Path(cfg.paths.cache_dir),
        seed=int(cfg.seed),
        model_name=str(cfg.model.name),
        model_weights=str(weights),
        dataset_name=str(cfg.dataset.name),
        task_trained=bool(cfg.finetune.enabled) or not untrained,
        trainer=values(TrainerConfig, cfg.trainer),
        measure=values(MeasureConfig, cfg.measure),
        recipe=values(FinetuneConfig, cfg.finetune),
    )


def method_context(cfg: DictConfig, datamodule: Any, run_dir: Path, make_trainer: Callable[..., Any], resume: Path | None = None) -> MethodContext:
    """What the run's method gets: the run's settings as values, its budget, data, folder and trainer, and the run's caches."""
    return MethodContext(
        run_context(cfg),
        Budget.of(cfg.budget),
        datamodule,
        run_dir,
        make_trainer,
        resume,
        trained_weights=functools.partial(trained_checkpoint_path, cfg),
        scratch_weights=functools.partial(_scratch_weights, cfg, datamodule.num_labels),
    )


def _scratch_weights(cfg: DictConfig, num_labels: int) -> dict[str, Any]:
    """The weights the run's model starts from before any training (seeded by the run's seed)."""
    torch.manual_seed(cfg.seed)
    return build_model(cfg.model, num_labels=num_labels).model.state_dict()


def _new_record(cfg: DictConfig, rid: str) -> RunRecord:
    return RunRecord(
        run_id=rid,
        status="running",
        model=cfg.model.name,
        dataset=cfg.dataset.name,
        method=method_label(cfg.method),
        budget=OmegaConf.to_container(cfg.budget, resolve=True),
        seed=cfg.seed,
        config=OmegaConf.to_container(cfg, resolve=True),
        environment=environment(),
        started_at=now(),
        locations=_hub_weights(cfg) | locations(cfg),
    )


def _hub_weights(cfg: DictConfig) -> dict[str, dict[str, str]]:
    """Which hub commit a text model's weights came from (from the local Hugging Face cache, where they were loaded)."""
    model = cfg.model
    if model_kind(model) != "text" or model.weights not in ("hub", "random") or Path(model.path).expanduser().exists():
        return {}
    return {"model.path": {"hub": model.path, "revision": hub_commit(model.path, model.get("revision", ""))}}


def _execute(cfg, record, model, datamodule, method, checkpoint, tracker, run_dir, resume: Path, enter: Callable[[str], None]) -> None:
    datamodule.setup("fit")

    def make_trainer(**overrides: Any) -> pl.Trainer:
        return build_trainer(cfg, tracker, run_dir, **overrides)

    start = time.perf_counter()
    if cfg.finetune.enabled and not checkpoint.exists():
        enter("finetune")
        finetune(cfg, model, datamodule, make_trainer, resume_folder(checkpoint) / "finetune.ckpt")
        if is_primary():
            _cache_dense(model, checkpoint)
    record.stages["finetune"] = time.perf_counter() - start

    enter("measure_dense")
    dense = copy.deepcopy(model).eval()
    start = time.perf_counter()
    record.dense, labels, dense_preds = _evaluate_dense(cfg, dense, datamodule, make_trainer)
    record.stages["measure_dense"] = time.perf_counter() - start

    enter("method")
    start = time.perf_counter()
    result = method.apply(model, method_context(cfg, datamodule, run_dir, make_trainer, resume))
    record.method_cost_s = time.perf_counter() - start
    record.stages.update(result.stages)
    record.artifacts.update(result.artifacts)

    enter("measure_compressed")
    if result.unchanged:
        compressed, compressed_preds = dense, dense_preds
        record.compressed = dict(record.dense)
    else:
        compressed = result.model.eval()
        start = time.perf_counter()
        record.compressed, _, compressed_preds = evaluate_predicting(compressed, datamodule, make_trainer, dense, cfg.measure.flops_batches, dense_preds)
        record.stages["measure_compressed"] = time.perf_counter() - start
    record.compressed.update(result.stats)
    if is_primary():
        predictions = Predictions(datamodule.metric, labels, dense_preds, compressed_preds)
        record.artifacts[PREDICTIONS_KEY] = write_predictions(run_dir, predictions)
        saved = save_model(compressed, run_dir / MODEL_DIR, cfg.model, cfg.dataset.num_labels)
        record.artifacts[MODEL_DIR] = MODEL_DIR
        if saved.quantized:  # the size a quantizer claims is the size of what was stored
            record.compressed["size_mb_quantized"] = saved.size_mb
    kernel = int8_kernel_model(compressed)
    if kernel is not None:  # the same weights through PyTorch's int8 kernels: their accuracy beside the simulated model's
        kernel_metrics, _, kernel_preds = evaluate_predicting(kernel, datamodule, make_trainer, dense, cfg.measure.flops_batches, dense_preds)
        record.compressed["metric_int8_kernel"] = kernel_metrics["metric"]
        if datamodule.num_labels != 1:  # 0: the weights' own classes
            record.compressed["agreement_int8_kernel"] = float(np.mean(kernel_preds == compressed_preds))
    record.ratios = compare(cfg, dense, compressed, kernel, datamodule, record)
    if cfg.measure.deployed and quantized_layers(compressed):
        enter("measure_deployed")
        start = time.perf_counter()
        deployed = measure_deployed(
            compressed, datamodule.test_dataloader(), datamodule.metric, datamodule.num_labels, labels, compressed_preds
        )
        record.compressed.update(deployed)
        if deployed.get("deployed_reason"):
            log.info("no deployed model to check: %s", deployed["deployed_reason"])
        record.stages["measure_deployed"] = time.perf_counter() - start
        check_disagreement(deployed, len(compressed_preds))  # the record keeps what was measured, the run fails


def _evaluate_dense(cfg: DictConfig, dense: nn.Module, datamodule: Any, make_trainer: Callable[..., pl.Trainer]) -> Evaluation:
    """The dense model's test evaluation, from the cache when this model, test set and setting were evaluated before."""
    def evaluate() -> Evaluation:
        return evaluate_predicting(dense, datamodule, make_trainer, dense, cfg.measure.flops_batches)

    if process_count(cfg.trainer) > 1:  # every process takes part in each test: all evaluate, or none
        return evaluate()
    t = cfg.trainer
    settings = {
        "metric": datamodule.metric,
        "num_labels": datamodule.num_labels,
        "flops_batches": cfg.measure.flops_batches,
        "trainer": {k: t[k] for k in ("accelerator", "precision", "deterministic", "limit_eval_batches")},
    }
    key = evaluation_key(dense, datamodule.test_dataloader(), settings)
    folder = Path(cfg.paths.cache_dir) / DENSE_EVALUATIONS
    cached = load_evaluation(folder, key)
    if cached is not None:
        log.info("dense test evaluation taken from %s", folder / f"{key}.npz")
        return cached
    evaluation = evaluate()
    if is_primary():
        save_evaluation(folder, key, evaluation)
    return evaluation


def _cache_dense(model: nn.Module, checkpoint: Path) -> None:
    """Cache the fine-tuned weights; a disk that fails now costs the cache, not the run."""
    try:
        save_checkpoint(model, checkpoint)
        discard(resume_folder(checkpoint))
    except OSError as err:
        log.warning("could not cache the fine-tuned model at %s (%s); this run goes on, the next one fine-tunes again", checkpoint, err)
