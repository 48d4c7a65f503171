"""A quantized run's QDQ export in ONNX Runtime beside the dense model's float graph and ONNX Runtime's dynamic int8 of it.

The dense model is the one the run started from (trimlab's checkpoint cache
under ``--output-dir``); its dynamic int8 form (``onnxruntime.quantization.quantize_dynamic``,
int8 weights per channel) is what a deployer would ship without trimlab.
Prints one JSON line: for each graph, its prediction agreement with the
PyTorch dense and simulated quantized models and its accuracy on the run's test split, the
integer nodes ONNX Runtime's optimizer leaves in it, and its median latency
at each batch size (one intra-op thread, the graphs timed interleaved).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic

from common import add_overrides_argument, compose_config, dense_model  # benchmarks/common.py
from trimlab.export import export_model, model_logits
from trimlab.saved_model import model_folder, read_model

INTEGER_OPS = ("MatMulIntegerToFloat", "MatMulInteger", "QLinearMatMul", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "QuantizeLinear")


def session(path: Path, optimized: Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def integer_nodes(path: Path, folder: Path) -> dict[str, int]:
    optimized = folder / f"{path.stem}.optimized.onnx"
    session(path, optimized)
    ops = [n.op_type for n in onnx.load(str(optimized)).graph.node]
    return {op: ops.count(op) for op in INTEGER_OPS if op in ops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", help="a completed quantized run folder")
    parser.add_argument("--output-dir", default="outputs")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=20)
    add_overrides_argument(parser, "the run's Hydra overrides (for its test split)")
    args = parser.parse_args()
    cfg = compose_config(args.output_dir, *args.overrides)
    model = read_model(model_folder(args.run)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        dense, dm, _ = dense_model(cfg, folder)
        test = list(dm.test_dataloader())
        paths = {
            "float": export_model(dense, test[0], folder / "float.onnx", "onnx"),
            "qdq": export_model(model, test[0], folder / "qdq.onnx", "onnx"),
        }
        paths["dynamic_int8"] = folder / "dynamic_int8.onnx"
        quantize_dynamic(str(paths["float"]), str(paths["dynamic_int8"]), per_channel=True, weight_type=QuantType.QInt8)
        result: dict[str, dict] = {}
        sessions = {name: session(path) for name, path in paths.items()}
        reference = torch.cat([model_logits(model, b).argmax(-1) for b in test])
        dense_reference = torch.cat([model_logits(dense, b).argmax(-1) for b in test])
        labels = torch.cat([b["labels"] for b in test])
        for name, sess in sessions.items():
            names = [i.name for i in sess.get_inputs()]
            predictions = torch.cat(
                [torch.from_numpy(sess.run(["logits"], {n: b[n].numpy() for n in names})[0]).argmax(-1) for b in test]
            )
            result[name] = {
                "agreement_with_simulated": float((predictions == reference).float().mean()),
                "agreement_with_dense": float((predictions == dense_reference).float().mean()),
                "accuracy": float((predictions == labels).float().mean()),
                "integer_nodes": integer_nodes(paths[name], folder),
                "size_mb": paths[name].stat().st_size / 2**20,
            }
        result["pytorch"] = {
            "simulated_accuracy": float((reference == labels).float().mean()),
            "dense_accuracy": float((dense_reference == labels).float().mean()),
            "examples": len(labels),
        }
        repeats = -(-max(args.batch_sizes) // len(test[0]["labels"]))  # the first test batch, repeated to the largest size
        examples = {k: v.repeat(repeats, *[1] * (v.ndim - 1)) for k, v in test[0].items() if k != "labels"}
        for size in args.batch_sizes:
            feed = {k: v[:size].numpy() for k, v in examples.items()}
            times: dict[str, list[float]] = {name: [] for name in sessions}
            for name, sess in sessions.items():  # warm-up
                sess.run(["logits"], {i.name: feed[i.name] for i in sess.get_inputs()})
            for _ in range(args.repeats):
                for name, sess in sessions.items():
                    inputs = {i.name: feed[i.name] for i in sess.get_inputs()}
                    start = time.perf_counter()
                    sess.run(["logits"], inputs)
                    times[name].append(time.perf_counter() - start)
            for name in sessions:
                result[name][f"latency_ms_batch{size}"] = 1000 * statistics.median(times[name])
        result["sequence_length"] = int(np.shape(examples["input_ids"])[1])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
