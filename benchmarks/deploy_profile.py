"""Where deploy.py's ``fisher_w8a8`` and the peer ``dense_ort_int8`` spend their time: ORT's profile per op type.

Builds only those two variants with deploy.py's ``build_variants`` (same dense
weights, Fisher pruning, uniform W8A8 calibration, ``quantize_dynamic``), runs each graph with
``SessionOptions.enable_profiling`` on the same first ``--timed`` test examples
at each batch size (warm-up pass left out of the sums), and prints per op type
the kernel time (ms per input, share of the graph's kernel time) and the
number of nodes ONNX Runtime ran (after its graph optimizations); then the
kernels' sum and the whole ``model_run`` (kernels plus the executor's per-node
overhead, which profiling itself inflates).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from common import add_overrides_argument, compose_config, dense_model  # benchmarks/common.py
from deploy import PEER, build_variants, padded, singles  # benchmarks/deploy.py

PROFILED = (PEER, "fisher_w8a8")


def op_profile(
    path: Path, inputs: Sequence[Mapping[str, Tensor]], repeats: int, prefix: Path
) -> tuple[dict[str, float], dict[str, int], float]:
    """Kernel µs per op type over ``repeats`` passes over ``inputs`` (warm-up left out), nodes per op type, run µs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(prefix)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for _ in range(1 + repeats):
        for batch in inputs:
            session.run(["logits"], {n: batch[n].numpy() for n in names})
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    warm_end = runs[len(inputs) - 1]["ts"] + runs[len(inputs) - 1]["dur"]
    micros: dict[str, float] = defaultdict(float)
    nodes: dict[str, set[str]] = defaultdict(set)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"]["op_name"]
            nodes[op].add(e["name"])
            if e["ts"] >= warm_end:
                micros[op] += e["dur"]
    run_micros = sum(r["dur"] for r in runs[len(inputs) :])
    return dict(micros), {op: len(n) for op, n in nodes.items()}, run_micros


def table(profiles: Mapping[str, tuple[dict[str, float], dict[str, int], float]], per_input: int) -> str:
    """Markdown: per op type, each graph's ms per input, share of kernel time, node count; then the whole run's ms."""
    graphs = list(profiles)
    ops = sorted({op for micros, _, _ in profiles.values() for op in micros},
                 key=lambda op: -max(profiles[g][0].get(op, 0) for g in graphs))  # fmt: skip
    head = ["op type"] + [f"{g} {c}" for g in graphs for c in ("ms", "share", "nodes")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    totals = {g: sum(profiles[g][0].values()) for g in graphs}
    for op in ops + ["kernels", "model_run"]:
        cells = [op]
        for g in graphs:
            micros, nodes, run = profiles[g]
            us = {"kernels": totals[g], "model_run": run}.get(op, micros.get(op, 0.0))
            count = sum(nodes.values()) if op in ("kernels", "model_run") else nodes.get(op, 0)
            cells += [f"{us / 1000 / per_input:.2f}", f"{us / totals[g]:.1%}", str(count)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm_l6")
    parser.add_argument("--dataset", default="tweets")
    parser.add_argument("--dense-checkpoint", type=Path, default=None, help="fine-tuned dense weights (safetensors)")
    parser.add_argument("--timed", type=int, default=64, help="first test examples profiled at each batch size")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=3, help="profiled passes over the timed examples")
    parser.add_argument("--calibration-examples", type=int, default=512)
    parser.add_argument("--fisher-target", type=float, default=0.5)
    parser.add_argument("--output-dir", default="outputs", help="where the ONNX Runtime profiles (JSON) are written")
    add_overrides_argument(parser, "extra Hydra overrides, e.g. dataset.sample_size=512")
    args = parser.parse_args()
    if min(args.timed, args.repeats, args.calibration_examples, *args.batch_sizes) < 1:
        parser.error("--timed, --repeats, --calibration-examples and --batch-sizes: give positive numbers")
    if not 0 < args.fisher_target <= 1:
        parser.error(f"--fisher-target {args.fisher_target}: give a FLOPs ratio in (0, 1]")
    torch.set_num_threads(1)
    cfg = compose_config(args.output_dir, f"model={args.model}", f"dataset={args.dataset}", "method=fisher_prune", *args.overrides)
    out = Path(args.output_dir) / "benchmarks" / "deploy_profile" / f"{cfg.model.name}-{cfg.dataset.name}"
    out.mkdir(parents=True, exist_ok=True)
    dense, dm, _ = dense_model(cfg, out, args.dense_checkpoint)
    samples = list(dm.sample_dataloader(batch_size=cfg.method.batch_size))
    calibration = samples[: -(-args.calibration_examples // cfg.method.batch_size)]
    examples = singles(list(dm.test_dataloader()), args.timed)
    with tempfile.TemporaryDirectory() as tmp:
        variants = build_variants(dense, samples, calibration, padded(examples, 32), Path(tmp), 1, args.fisher_target, variants=PROFILED)
        graphs = {v.name: v.engine.path for v in variants}
        for batch in args.batch_sizes:
            inputs = padded(examples, batch)
            profiles = {g: op_profile(path, inputs, args.repeats, out / f"{g}-b{batch}") for g, path in graphs.items()}
            print(f"\nbatch {batch}: kernel ms per input ({len(inputs)} inputs × {args.repeats} passes), 1 thread\n")
            print(table(profiles, len(inputs) * args.repeats), flush=True)


if __name__ == "__main__":
    main()
