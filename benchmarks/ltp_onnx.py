"""LTP exported to ONNX Runtime, batch 1: dense graph vs LTP with dropped tokens masked vs LTP with kept tokens gathered.

MiniLM-L6 on BBC News test articles, one article per call (no padding), one
ORT thread, the three graphs timed interleaved over the same articles. LTP's
thresholds are set, not trained (``final_threshold`` chosen on a few training
articles to reach the FLOPs target): this measures what the export does with
the tokens LTP drops, not LTP's accuracy. Prints one JSON line: FLOPs ratio
(PyTorch, test articles), mean per-article ms of each graph, speedups over
the dense graph, the limit fraction (speedup × FLOPs ratio) and the gathered
graph's prediction agreement with the PyTorch model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime
import torch

from trimlab.export import export_model
from trimlab.measure.flops import count_flops
from trimlab.methods.ltp.selectors import LearnedThresholds

from common import add_overrides_argument, compose_config, dense_model  # benchmarks/common.py


def articles(dm, count: int, split: str) -> list[dict[str, torch.Tensor]]:
    """``count`` single articles of ``split`` without padding or labels."""
    loader = dm.test_dataloader() if split == "test" else dm.train_dataloader()
    out = []
    for batch in loader:
        for i in range(batch["input_ids"].shape[0]):
            length = int(batch["attention_mask"][i].sum())
            out.append({k: v[i : i + 1, :length] for k, v in batch.items() if k != "labels"})
            if len(out) == count:
                return out
    return out


def flops_ratio(model, dense_flops: list[int], inputs) -> float:
    with torch.no_grad():
        return sum(count_flops(model, b) for b in inputs) / sum(dense_flops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=0.5, help="FLOPs ratio LTP's thresholds are set to")
    parser.add_argument("--examples", type=int, default=100, help="test articles timed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output-dir", default="outputs")
    add_overrides_argument(parser, "extra Hydra overrides")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = compose_config(args.output_dir, "model=minilm_l6", "dataset=bbc_news", "finetune.enabled=false", *args.overrides)
    model, dm, _ = dense_model(cfg, Path(args.output_dir))
    calibration, test = articles(dm, 16, "train"), articles(dm, args.examples, "test")
    with torch.no_grad():
        dense_cal = [count_flops(model, b) for b in calibration]
        dense_test = [count_flops(model, b) for b in test]
    layers = len(model.encoder.layers)
    low, high = 0.0, 1.0  # bisect final_threshold to the target on the calibration articles
    for _ in range(12):
        mid = (low + high) / 2
        model.encoder.token_selector = LearnedThresholds(layers, mid).eval()
        low, high = (mid, high) if flops_ratio(model, dense_cal, calibration) > args.target else (low, mid)
    model.encoder.token_selector = LearnedThresholds(layers, high).eval()
    ratio = flops_ratio(model, dense_test, test)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        selector, model.encoder.token_selector = model.encoder.token_selector, None
        paths = {"dense": export_model(model, calibration[0], Path(tmp) / "dense.onnx", "onnx")}
        model.encoder.token_selector = selector
        paths["masked"] = export_model(model, calibration[0], Path(tmp) / "masked.onnx", "onnx")
        paths["gathered"] = export_model(model, calibration[0], Path(tmp) / "gathered.onnx", "onnx", gather_tokens=True)
        sessions = {k: onnxruntime.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    feeds = [{k: v.numpy() for k, v in b.items()} for b in test]
    times = {k: [] for k in sessions}
    agree = 0
    for name, session in sessions.items():  # warm-up
        session.run(["logits"], feeds[0])
    for _ in range(args.repeats):
        for feed in feeds:
            for name, session in sessions.items():
                start = time.perf_counter()
                session.run(["logits"], feed)
                times[name].append(time.perf_counter() - start)
    with torch.no_grad():
        for b, feed in zip(test, feeds):
            agree += int(sessions["gathered"].run(["logits"], feed)[0].argmax() == int(model(b).logits.argmax()))
    ms = {k: 1000 * sum(v) / len(v) for k, v in times.items()}
    speedup = {k: ms["dense"] / ms[k] for k in ("masked", "gathered")}
    print(json.dumps({
        "final_threshold": round(high, 5), "flops_ratio": round(ratio, 4), "articles": len(test),
        "mean_tokens": statistics.mean(b["input_ids"].shape[1] for b in test),
        "ms_per_article": {k: round(v, 2) for k, v in ms.items()},
        "speedup": {k: round(v, 3) for k, v in speedup.items()},
        "limit_fraction": {k: round(v * ratio, 3) for k, v in speedup.items()},
        "agreement_gathered_vs_pytorch": agree / len(test),
    }), flush=True)


if __name__ == "__main__":
    main()
