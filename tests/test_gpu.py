"""The GPU suite: every method end to end on CUDA, and ``compress()`` on a CUDA model (``pytest -m gpu``; skipped without CUDA).

The CPU suite runs the same code paths on float64 and bfloat16 models
(``tests/test_device_dtype.py``); these check what only a GPU shows: that a
method computes on the trainer's device, leaves the model there, and that the
run's timings say where they were taken.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_device_dtype import text_batches, tiny_bert  # the CPU stand-ins' model and batches
from trimlab.api import compress
from trimlab.models.convert import to_trimlab
from trimlab.results.record import RECORD_FILE, read_record

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")

COMPRESS = {
    "fisher_prune": dict(budget=0.6, options={"tune": True}),
    "pwlq": dict(budget=4, options={"act_bits": 8, "output_bias_correction": True}),
    "uniform_ptq": dict(budget=8, options={"act_bits": 8}),
    "fisher_prune_pwlq": dict(budget=0.6, bits=4),
}
"""compress() arguments of every post-training method (and their pipeline) on a tiny BERT."""

SMALL_VIT = ("experiment=smoke", "model=vit_digits", "dataset=digits", "trainer=gpu", "measure.device=cuda")
CLI_RUNS = {
    "dense": ("method=dense", "budget=none"),
    "fisher_prune": ("method=fisher_prune", "budget=flops_60"),
    "pwlq": ("method=pwlq", "budget=bits_4", "method.act_bits=8"),
    "uniform_ptq": ("method=uniform_ptq", "budget=bits_8"),
    "fisher_prune_pwlq": ("method=fisher_prune_pwlq", "budget=flops_60", "method.steps.quantize.bits=4"),
    "ltp": ("method=ltp", "budget.kind=tokens", "budget.target=0.7", "method.soft_epochs=1", "method.hard_epochs=1",
            "method.calibration_examples=64"),
    "sait": ("method=sait", "budget=flops_60", "method.epochs=1", "method.calibration_examples=64",
             "method.eval_densities=[dense,'0.7']"),
    "mait": ("method=mait", "budget=none"),
}
"""One smoke-size CLI run per method on the GPU (the smoke experiment's sizes, a small ViT on digits)."""
POST_TRAINING = {"fisher_prune", "pwlq", "uniform_ptq", "fisher_prune_pwlq"}


@pytest.mark.parametrize("method", list(COMPRESS))
def test_compress_on_a_cuda_model_computes_there_and_returns_it_there(method: str) -> None:
    model, report = compress(to_trimlab(tiny_bert()).to(CUDA), method, data=text_batches(), **COMPRESS[method])
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    batch = {k: v.to(CUDA) for k, v in text_batches(1)[0].items()}
    with torch.no_grad():
        logits = model(batch).logits
    assert logits.is_cuda and bool(torch.isfinite(logits).all())
    if "fisher" in method:
        assert report.flops_ratio < 1.0


@pytest.mark.parametrize("method", list(COMPRESS))
def test_compress_on_a_cuda_model_decides_as_on_the_cpu(method: str) -> None:
    """The same heads and neurons kept (Fisher), and nearly the same weights (quantizers), as the same call on the CPU."""
    cpu, cpu_report = compress(to_trimlab(tiny_bert()), method, data=text_batches(), **COMPRESS[method])
    gpu, gpu_report = compress(to_trimlab(tiny_bert()).to(CUDA), method, data=text_batches(), **COMPRESS[method])
    for key in ("heads_per_layer", "neurons_per_layer", "prune/heads_per_layer", "prune/neurons_per_layer"):
        assert gpu_report.stats.get(key) == cpu_report.stats.get(key), key
    batch = text_batches(1)[0]
    with torch.no_grad():
        expected = cpu(batch).logits
        got = gpu({k: v.to(CUDA) for k, v in batch.items()}).logits.cpu()
    torch.testing.assert_close(got, expected, atol=0.05, rtol=0.05)  # a quantizer may round a boundary weight apart


def test_a_bfloat16_cuda_bert_comes_back_in_bfloat16_on_cuda() -> None:
    model, _ = compress(tiny_bert(torch.bfloat16).to(CUDA), "pwlq", budget=8, data=text_batches())
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("cuda", torch.bfloat16)}


@pytest.mark.parametrize("method", list(CLI_RUNS))
def test_a_gpu_smoke_run_of_each_method_completes_on_the_gpu(method: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trimlab.cli", *SMALL_VIT, *CLI_RUNS[method]], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = [p for p in (tmp_path / "outputs" / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")]
    record = read_record(run_dir / RECORD_FILE)
    assert record.status == "completed"
    assert record.dense["latency_device"] == record.compressed["latency_device"] == "cuda"
    assert 0.0 <= record.compressed["metric"] <= 1.0
    if method in POST_TRAINING:  # the method computed on the trainer's GPU, not before Lightning moved the model
        where = {v for k, v in record.compressed.items() if k.endswith("compressed_on")}
        assert where == {"cuda"}
