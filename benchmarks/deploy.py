"""What a deployer reads: trimlab's compressed models on real engines against the dense model and its ONNX Runtime int8 form.

Variants (``--variants`` picks some; one JSON line per variant and batch size, then a Markdown table):

- ``dense``: the fine-tuned dense model, PyTorch FP32.
- ``dense_ort``: its float ONNX graph in ONNX Runtime.
- ``dense_ort_int8``: ONNX Runtime's dynamic int8 of that graph
  (``quantize_dynamic``, int8 weights per channel): what a user ships without
  trimlab, **the peer**.
- ``fisher``: Fisher pruning to ``--fisher-target`` of the FLOPs, physically
  pruned, ONNX Runtime float.
- ``fisher_w8a8``: that model, uniform W8A8 calibrated by trimlab (static
  per-tensor input scales, weights per output channel), QDQ ONNX.
- ``fisher_ltp_w8a8``: the same with LTP token pruning. With ``--ltp-epochs E``
  (the paper's method), LTP is *trained* on the Fisher model: its soft and hard
  stages, E epochs each over the training split, the budget ``--ltp-target`` of the
  Fisher model's FLOPs (``trimlab.compress(fisher, "ltp", ...)``), then uniform W8A8
  calibrated on the trained model. Without it the thresholds are *searched*
  (one ``final_threshold`` bisected to ``--ltp-target`` on the calibration
  examples, weights untouched): quick, not LTP. Batch 1 runs the graph that gathers the
  kept tokens; a larger batch runs the masked graph (every token computed):
  gathering a batch freezes its kept count at export.
- ``pwlq_w8_int``: PWLQ W8A8 of the dense model executed as two int8 GEMMs per
  Linear, centre and tail stacked in one QDQ MatMul (:mod:`trimlab.qdq`), ONNX
  Runtime; its row also holds simulated PWLQ's accuracy. (The same branches in
  PyTorch's oneDNN kernel: ``benchmarks/pwlq_integer.py``.)

Compression goes through trimlab's Python API (``trimlab.compress``) on the
training split's sample batches. Accuracy (with a 95% bootstrap interval) is
each engine's own predictions on the first ``--examples`` test examples;
``pytorch_accuracy`` is the PyTorch model's the engine deploys (simulated
quantization for the quantized ones) and ``agreement`` the fraction of
predictions equal to it.
FLOPs ratios are trimlab's analytic count (unpadded lengths, kept tokens),
precision left out. Latency: one process, every engine warmed, threads pinned
(``torch.set_num_threads`` and ONNX Runtime's intra/inter-op threads =
``--threads``); the first ``--timed`` test examples at each batch size (batch 1:
each example unpadded; batch b: b examples padded to the longest), the variants
taking turns on each input; per input the median over ``--repeats``, summed.
``size_mb``: the file an ONNX engine loads, or the PyTorch model's state dict.
``--int8-weights`` writes the QDQ graphs' weight codes as int8 (engines ``…_s8``):
on a CPU with VNNI ONNX Runtime's uint8 × int8 kernel is exact and much faster
than the default uint8 × uint8 one; on AVX2 without VNNI it saturates (see the
agreement column).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

import trimlab
from trimlab.export import export_model
from trimlab.measure.flops import mean_flops_per_example
from trimlab.methods.ltp.selectors import LearnedThresholds
from trimlab.results.intervals import metric_interval

from common import add_overrides_argument, compose_config, dense_model  # benchmarks/common.py

VARIANTS = ("dense", "dense_ort", "dense_ort_int8", "fisher", "fisher_w8a8", "fisher_ltp_w8a8", "pwlq_w8_int")
PEER = "dense_ort_int8"
ROW_KEYS = (
    "model", "dataset", "variant", "engine", "batch", "accuracy", "accuracy_ci", "dense_accuracy", "pytorch_accuracy", "agreement",
    "flops_ratio", "size_mb", "latency_ms", "throughput_per_s", "speedup_vs_dense", "speedup_vs_peer", "threads", "note",
)  # fmt: skip


@dataclass
class Engine:
    """One way a variant runs: the engine's name, its logits for a batch, the bytes it loads, the largest batch it takes."""

    name: str
    logits: Callable[[Mapping[str, Tensor]], Tensor]
    size_mb: float
    max_batch: int | None = None
    note: str = ""
    path: Path | None = None
    """The file an ONNX Runtime engine loads (None for a PyTorch model)."""


@dataclass
class Variant:
    name: str
    engine: Engine
    reference: nn.Module
    """The PyTorch model the engines deploy (its predictions give the agreement)."""
    flops_ratio: float
    note: str = ""
    single: Engine | None = None
    """Another engine for batch 1, where one runs single examples only (LTP's gathered graph)."""

    def engine_at(self, batch: int) -> Engine:
        return self.single if batch == 1 and self.single is not None else self.engine

    def engines(self) -> list[Engine]:
        return [e for e in (self.single, self.engine) if e is not None]


def pytorch_engine(model: nn.Module, name: str = "pytorch") -> Engine:
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, Tensor)) / 2**20

    @torch.inference_mode()
    def logits(batch: Mapping[str, Tensor]) -> Tensor:
        return model(dict(batch)).logits.float()

    return Engine(name, logits, size)


def ort_engine(path: Path, name: str, threads: int, max_batch: int | None = None, note: str = "") -> Engine:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def logits(batch: Mapping[str, Tensor]) -> Tensor:
        return torch.from_numpy(session.run(["logits"], {n: batch[n].numpy() for n in names})[0])

    return Engine(name, logits, path.stat().st_size / 2**20, max_batch, note, path)


def searched_thresholds(model: nn.Module, batches: Sequence[Mapping[str, Tensor]], target: float, steps: int = 12) -> float:
    """LTP's ``final_threshold`` bisected so that ``model`` with it keeps ``target`` of its FLOPs on ``batches``."""
    layers = len(model.encoder.layers)
    base = mean_flops_per_example(model, batches, max_batches=len(batches))
    low, high = 0.0, 1.0
    for _ in range(steps):
        mid = (low + high) / 2
        model.encoder.token_selector = LearnedThresholds(layers, mid).eval()
        ratio = mean_flops_per_example(model, batches, max_batches=len(batches)) / base
        low, high = (mid, high) if ratio > target else (low, mid)
    model.encoder.token_selector = None
    return high


def build_variants(
    dense: nn.Module,
    samples: Sequence[Mapping[str, Tensor]],
    calibration: Sequence[Mapping[str, Tensor]],
    test: Sequence[Mapping[str, Tensor]],
    folder: Path,
    threads: int,
    fisher_target: float = 0.5,
    ltp_target: float = 0.8,
    variants: Sequence[str] = VARIANTS,
    ltp_train: Sequence[Mapping[str, Tensor]] | None = None,
    ltp_epochs: float = 1.0,
    int8_weights: bool = False,
) -> list[Variant]:
    """The ``variants`` of ``dense`` (a trimlab text classifier; names from :data:`VARIANTS`, built in its order), ONNX files under ``folder``.

    ``samples``: Fisher's labelled sample batches; ``calibration``: the quantizers'
    batches (and LTP's threshold search); ``test``: batches the FLOPs are counted on.
    ``ltp_train``: labelled batches LTP trains on for ``ltp_epochs`` per stage
    (validating on ``calibration``); None: its thresholds are searched instead.
    ``int8_weights``: the QDQ graphs' weight codes as int8 (engine names end ``_s8``), not uint8.
    Each model is built once, and only when a variant asked for needs it.
    """
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise ValueError(f"variants {', '.join(unknown)}: not among {', '.join(VARIANTS)}")
    dense = dense.eval()
    example = dict(test[0])
    base = mean_flops_per_example(dense, test, max_batches=len(test))
    w8a8_options = {"act_bits": 8}
    unchecked = {"check_deployed": False}  # the rows measure each engine's agreement on the test examples themselves

    def ratio(model: nn.Module) -> float:
        return mean_flops_per_example(model, test, max_batches=len(test)) / base

    def onnx(model: nn.Module, name: str, **kw: bool) -> Path:
        return export_model(model, example, folder / f"{name}.onnx", "onnx", **kw)

    def qdq(model: nn.Module, name: str, **kw: bool) -> Path:
        return onnx(model, name, int8_weights=int8_weights, **kw)

    s8 = "_s8" if int8_weights else ""

    @functools.cache
    def dense_path() -> Path:
        return onnx(dense, "dense")

    @functools.cache
    def fisher() -> nn.Module:
        return trimlab.compress(dense, "fisher_prune", budget=fisher_target, data=list(samples))[0]

    @functools.cache
    def fisher_ratio() -> float:
        return ratio(fisher())

    @functools.cache
    def fisher_w8a8() -> nn.Module:
        return trimlab.compress(fisher(), "uniform_ptq", bits=8, data=list(calibration), options=w8a8_options, **unchecked)[0]

    def peer_variant() -> Variant:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        path = folder / f"{PEER}.onnx"
        quantize_dynamic(str(dense_path()), str(path), per_channel=True, weight_type=QuantType.QInt8)
        return Variant(PEER, ort_engine(path, "onnxruntime_int8_dynamic", threads), dense, 1.0,
                       "the peer: ORT quantize_dynamic, int8 weights per channel")  # fmt: skip

    def fisher_variant() -> Variant:
        engine = ort_engine(onnx(fisher(), "fisher"), "onnxruntime", threads)
        return Variant("fisher", engine, fisher(), fisher_ratio(), f"Fisher {fisher_target:g} of FLOPs, physically pruned")

    def fisher_w8a8_variant() -> Variant:
        engine = ort_engine(qdq(fisher_w8a8(), "fisher_w8a8"), f"onnxruntime_qdq{s8}", threads)
        note = "static W8A8, trimlab's calibrated per-tensor input scales; embeddings float"
        return Variant("fisher_w8a8", engine, fisher_w8a8(), fisher_ratio(), note)

    def fisher_ltp_w8a8_variant() -> Variant:
        if ltp_train is None:
            threshold = searched_thresholds(fisher(), calibration, ltp_target)
            model = copy.deepcopy(fisher_w8a8())
            model.encoder.token_selector = LearnedThresholds(len(model.encoder.layers), threshold).eval()
            ltp_float = copy.deepcopy(fisher())
            ltp_float.encoder.token_selector = model.encoder.token_selector
            note = f"LTP thresholds searched (final_threshold {threshold:.4g} to {ltp_target:g} of Fisher's FLOPs), not trained"
        else:
            ltp_float = trimlab.compress(fisher(), "ltp", budget=ltp_target, train_data=list(ltp_train),
                                         eval_data=list(calibration), epochs=ltp_epochs, seed=0)[0].eval()  # fmt: skip
            model = trimlab.compress(ltp_float, "uniform_ptq", bits=8, data=list(calibration), options=w8a8_options, **unchecked)[0]
            note = f"LTP trained on the Fisher model ({ltp_epochs:g} epoch soft + {ltp_epochs:g} hard, {ltp_target:g} of its FLOPs)"
        gathered = ort_engine(qdq(model, "fisher_ltp_w8a8_gathered", gather_tokens=True), f"onnxruntime_qdq{s8}_gathered", threads, 1,
                              "kept tokens gathered")  # fmt: skip
        masked = ort_engine(qdq(model, "fisher_ltp_w8a8_masked"), f"onnxruntime_qdq{s8}_masked", threads, None,
                            "batch > 1: dropped tokens masked, not removed (every token computed)")  # fmt: skip
        return Variant("fisher_ltp_w8a8", masked, model, ratio(ltp_float), note, single=gathered)

    def pwlq_variant() -> Variant:
        model = trimlab.compress(dense, "pwlq", bits=8, data=list(calibration), options=w8a8_options, **unchecked)[0]
        engine = ort_engine(qdq(model, "pwlq_w8_int"), f"onnxruntime_qdq{s8}_two_branch", threads)
        return Variant("pwlq_w8_int", engine, model, 1.0, "PWLQ W8A8: centre and tail int8 branches in one QDQ MatMul per Linear")

    builders: dict[str, Callable[[], Variant]] = {
        "dense": lambda: Variant("dense", pytorch_engine(dense), dense, 1.0),
        "dense_ort": lambda: Variant("dense_ort", ort_engine(dense_path(), "onnxruntime", threads), dense, 1.0),
        PEER: peer_variant,
        "fisher": fisher_variant,
        "fisher_w8a8": fisher_w8a8_variant,
        "fisher_ltp_w8a8": fisher_ltp_w8a8_variant,
        "pwlq_w8_int": pwlq_variant,
    }
    return [builders[name]() for name in VARIANTS if name in variants]


def singles(batches: Sequence[Mapping[str, Tensor]], count: int) -> list[dict[str, Tensor]]:
    """The first ``count`` examples of ``batches`` one by one, unpadded, labels kept apart under ``labels``."""
    out: list[dict[str, Tensor]] = []
    for batch in batches:
        for i in range(len(batch["attention_mask"])):
            length = int(batch["attention_mask"][i].sum())
            out.append({k: v[i : i + 1] if k == "labels" else v[i : i + 1, :length] for k, v in batch.items()})
            if len(out) == count:
                return out
    return out


def padded(examples: Sequence[Mapping[str, Tensor]], size: int) -> list[dict[str, Tensor]]:
    """``examples`` in batches of ``size``, each padded (zeros, attention mask 0) to its longest example; labels left out."""
    out = []
    for start in range(0, len(examples), size):
        chunk = examples[start : start + size]
        length = max(e["input_ids"].shape[1] for e in chunk)
        out.append({
            k: torch.cat([torch.nn.functional.pad(e[k], (0, length - e[k].shape[1])) for e in chunk])
            for k in chunk[0] if k != "labels"
        })  # fmt: skip
    return out


def predictions(engine: Engine, examples: Sequence[Mapping[str, Tensor]], batch: int) -> np.ndarray:
    size = min(batch, engine.max_batch or batch)
    return torch.cat([engine.logits(b).argmax(-1) for b in padded(examples, size)]).numpy()


def interleaved_ms(engines: Mapping[str, Engine], inputs: Sequence[Mapping[str, Tensor]], repeats: int) -> dict[str, float]:
    """Mean ms per input of each engine: per input the median over ``repeats``, the engines taking turns on each input."""
    for engine in engines.values():  # warm-up: every shape family once, then the first input again
        for batch in (inputs[0], inputs[-1], inputs[0]):
            engine.logits(batch)
    times: dict[str, list[list[float]]] = {name: [[] for _ in inputs] for name in engines}
    for _ in range(repeats):
        for i, batch in enumerate(inputs):
            for name, engine in engines.items():
                start = time.perf_counter()
                engine.logits(batch)
                times[name][i].append(time.perf_counter() - start)
    return {name: 1000 * statistics.mean(statistics.median(t) for t in per_input) for name, per_input in times.items()}


def measure_rows(
    variants: Sequence[Variant],
    examples: Sequence[Mapping[str, Tensor]],
    timed: int,
    batch_sizes: Sequence[int],
    repeats: int,
    threads: int,
    model: str,
    dataset: str,
) -> list[dict]:
    """One row per variant and batch size (keys :data:`ROW_KEYS`): accuracy of each engine on ``examples``, latency on the first ``timed``.

    Without ``dense`` among the variants, ``dense_accuracy`` and ``speedup_vs_dense`` are None; without the peer, ``speedup_vs_peer``.
    """
    labels = torch.cat([e["labels"] for e in examples]).numpy()
    accuracy: dict[int, tuple[float, float, float, float, float]] = {}  # id(engine) → accuracy, low, high, PyTorch's, agreement
    reference = {}
    for variant in variants:
        if id(variant.reference) not in reference:
            reference[id(variant.reference)] = predictions(pytorch_engine(variant.reference), examples, 32)
        deployed = reference[id(variant.reference)]
        for engine in variant.engines():
            if id(engine) not in accuracy:
                predicted = predictions(engine, examples, 32)
                acc, low, high = metric_interval(labels, predicted, "accuracy")
                accuracy[id(engine)] = (acc, low, high, float((deployed == labels).mean()), float((predicted == deployed).mean()))
    dense_accuracy = next((round(accuracy[id(v.engine)][0], 4) for v in variants if v.name == "dense"), None)
    rows = []
    for batch in batch_sizes:
        engines = {v.name: v.engine_at(batch) for v in variants}
        ms = interleaved_ms(engines, padded(examples[:timed], batch), repeats)
        for variant in variants:
            engine = engines[variant.name]
            acc, low, high, pytorch_accuracy, agreement = accuracy[id(engine)]
            rows.append({
                "model": model, "dataset": dataset, "variant": variant.name, "engine": engine.name, "batch": batch,
                "accuracy": round(acc, 4), "accuracy_ci": [round(low, 4), round(high, 4)], "dense_accuracy": dense_accuracy,
                "pytorch_accuracy": round(pytorch_accuracy, 4), "agreement": round(agreement, 4),
                "flops_ratio": round(variant.flops_ratio, 4), "size_mb": round(engine.size_mb, 2),
                "latency_ms": round(ms[variant.name], 3), "throughput_per_s": round(1000 * batch / ms[variant.name], 1),
                "speedup_vs_dense": speedup("dense", ms, variant.name), "speedup_vs_peer": speedup(PEER, ms, variant.name),
                "threads": threads, "note": "; ".join(n for n in (variant.note, engine.note) if n),
            })  # fmt: skip
    return rows


def speedup(over: str, ms: Mapping[str, float], name: str) -> float | None:
    """How many times faster variant ``name`` ran than variant ``over`` (None when ``over`` was not built)."""
    return round(ms[over] / ms[name], 3) if over in ms else None


def markdown(rows: Sequence[Mapping]) -> str:
    head = ["variant", "engine", "batch", "accuracy [95% CI]", "FLOPs", "MB", "ms", "ex/s", "× dense", "× peer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lo, hi = r["accuracy_ci"]
        cells = [r["variant"], r["engine"], r["batch"], f"{r['accuracy']:.4f} [{lo:.3f}, {hi:.3f}]", f"{r['flops_ratio']:.3f}",
                 f"{r['size_mb']:.1f}", f"{r['latency_ms']:.2f}", f"{r['throughput_per_s']:.1f}",
                 *("–" if r[k] is None else f"{r[k]:.2f}" for k in ("speedup_vs_dense", "speedup_vs_peer"))]  # fmt: skip
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm_l6", help="a conf/model option (mpnet_base for MPNet)")
    parser.add_argument("--dataset", default="tweets", help="a conf/dataset option (rotten_tomatoes)")
    parser.add_argument("--dense-checkpoint", type=Path, default=None,
                        help="the fine-tuned dense weights (safetensors); default: trimlab's dense cache under --output-dir, fine-tuned on a miss")  # fmt: skip
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), metavar="VARIANT",
                        help=f"the variants built and measured, of {', '.join(VARIANTS)} (default: all); the speedup columns need dense and {PEER}")  # fmt: skip
    parser.add_argument("--examples", type=int, default=512, help="first test examples scored")
    parser.add_argument("--timed", type=int, default=128, help="first test examples timed at each batch size")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=5, help="timed passes over the timed examples")
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads")
    parser.add_argument("--calibration-examples", type=int, default=512, help="training examples the quantizers calibrate on")
    parser.add_argument("--fisher-target", type=float, default=0.5, help="Fisher's FLOPs ratio")
    parser.add_argument("--ltp-target", type=float, default=0.8, help="LTP's FLOPs ratio of the Fisher model")
    parser.add_argument("--ltp-epochs", type=float, default=None,
                        help="train LTP on the Fisher model, this many epochs per stage over the training split (default: thresholds searched, not trained)")  # fmt: skip
    parser.add_argument("--int8-weights", action="store_true",
                        help="QDQ weight codes as int8: ONNX Runtime's fast kernel on CPUs with VNNI (it saturates without); default uint8")  # fmt: skip
    parser.add_argument("--output-dir", default="outputs")
    add_overrides_argument(parser, "extra Hydra overrides, e.g. dataset.sample_size=512")
    args = parser.parse_args()
    for name in ("examples", "timed", "repeats", "threads", "calibration_examples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: give a positive number")
    for name in ("fisher_target", "ltp_target"):
        if not 0 < getattr(args, name) <= 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: give a FLOPs ratio in (0, 1]")
    if args.ltp_epochs is not None and args.ltp_epochs <= 0:
        parser.error(f"--ltp-epochs {args.ltp_epochs}: give a positive number of epochs")
    if min(args.batch_sizes) < 1:
        parser.error(f"--batch-sizes {args.batch_sizes}: give positive batch sizes")
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)
    cfg = compose_config(args.output_dir, f"model={args.model}", f"dataset={args.dataset}", "method=fisher_prune", *args.overrides)
    run_dir = Path(args.output_dir) / "benchmarks" / "deploy" / f"{cfg.model.name}-{cfg.dataset.name}"
    dense, dm, _ = dense_model(cfg, run_dir, args.dense_checkpoint)
    samples = list(dm.sample_dataloader(batch_size=cfg.method.batch_size))
    calibration = samples[: -(-args.calibration_examples // cfg.method.batch_size)]
    examples = singles(list(dm.test_dataloader()), args.examples)
    test = padded(examples, 32)
    with tempfile.TemporaryDirectory() as tmp:
        variants = build_variants(
            dense, samples, calibration, test, Path(tmp), args.threads, args.fisher_target, args.ltp_target, args.variants,
            None if args.ltp_epochs is None else list(dm.train_dataloader()), args.ltp_epochs or 1.0, args.int8_weights,
        )
        rows = measure_rows(variants, examples, args.timed, args.batch_sizes, args.repeats, args.threads, cfg.model.name, cfg.dataset.name)
    for row in rows:
        print(json.dumps(row), flush=True)
    print(f"\n{cfg.model.name} × {cfg.dataset.name}, {len(examples)} test examples, {min(args.timed, len(examples))} timed, "
          f"{args.threads} thread(s), {args.repeats} repeats\n")  # fmt: skip
    print(markdown(rows), flush=True)


if __name__ == "__main__":
    main()
