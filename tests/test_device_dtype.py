"""Every post-training method computes in the model's dtype and returns the model in it: the CPU stand-in for devices.

A tensor a method creates without the model's dtype fails on a float64 or
bfloat16 model the way one created without its device fails on a GPU, so these
runs exercise the device paths without one (``tests/test_gpu.py`` runs them on CUDA).
A float64 run must also choose what the float32 run chooses.
"""

from __future__ import annotations

import sys

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from trimlab.api import compress
from trimlab.models.convert import to_trimlab

VOCAB, LENGTH, LABELS = 50, 12, 3

METHODS = {
    "fisher_prune": dict(budget=0.6, options={"tune": True}),
    "pwlq": dict(budget=4, options={"act_bits": 8, "output_bias_correction": True}),
    "uniform_ptq": dict(budget=4, options={"act_bits": 8}),
}


def tiny_bert(dtype: torch.dtype) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=LENGTH + 2, num_labels=LABELS,
    )
    return BertForSequenceClassification(config).to(dtype).eval()


def text_batches(n: int = 3) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(n):
        ids = torch.randint(1, VOCAB, (4, LENGTH), generator=gen)
        mask = (torch.arange(LENGTH)[None] < torch.randint(4, LENGTH + 1, (4, 1), generator=gen)).long()
        batches.append({"input_ids": ids * mask, "attention_mask": mask, "labels": torch.randint(0, LABELS, (4,), generator=gen)})
    return batches


def compressed(method: str, dtype: torch.dtype):
    """``method`` on a trimlab model in ``dtype`` (a converted model is converted in its dtype: see the last test)."""
    return compress(to_trimlab(tiny_bert(torch.float32)).to(dtype), method, data=text_batches(), **METHODS[method])


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["float64", "bfloat16"])
@pytest.mark.parametrize("method", list(METHODS))
def test_method_returns_the_model_in_its_dtype(method: str, dtype: torch.dtype) -> None:
    model, report = compressed(method, dtype)
    assert {p.dtype for p in model.parameters()} == {dtype}
    with torch.no_grad():
        logits = model(text_batches(1)[0]).logits
    assert logits.dtype == dtype and bool(torch.isfinite(logits).all())
    if method == "fisher_prune":
        assert report.flops_ratio < 1.0 and report.stats["tuned_layers"] > 0
    else:
        assert report.stats["weight_bits"] == 4


def test_float64_fisher_prunes_as_float32_does() -> None:
    """The same heads and neurons kept, the same layers tuned, and the tuned model's outputs alike."""
    model32, report32 = compressed("fisher_prune", torch.float32)
    model64, report64 = compressed("fisher_prune", torch.float64)
    for key in ("heads_per_layer", "neurons_per_layer", "tuned_layers"):
        assert report64.stats[key] == report32.stats[key], key
    batch = text_batches(1)[0]
    with torch.no_grad():
        torch.testing.assert_close(model64(batch).logits.float(), model32(batch).logits, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("method", ["pwlq", "uniform_ptq"])
def test_float64_quantizes_as_float32_does(method: str) -> None:
    """Every weight gets the float32 run's code but for a value on a rounding boundary, which may go to the next code.

    The symmetric grid puts a row's extreme value at ±7.5 steps: float32 and float64 may round it apart.
    """
    model32, _ = compressed(method, torch.float32)
    model64, _ = compressed(method, torch.float64)
    layers32 = {n: m for n, m in model32.named_modules() if hasattr(m, "quantized_weight")}
    layers64 = {n: m for n, m in model64.named_modules() if hasattr(m, "quantized_weight")}
    assert layers32.keys() == layers64.keys() and layers32
    differ = 0
    for name, m in layers32.items():
        codes32, codes64 = m.quantized_weight.codes.long(), layers64[name].quantized_weight.codes.long()
        assert int((codes64 - codes32).abs().max()) <= 1 and int((codes64 != codes32).sum(1).max()) <= 1, name
        same = (codes64 == codes32).view(m.weight.shape)
        differ += int((~same).sum())
        torch.testing.assert_close(layers64[name].weight[same].float(), m.weight[same], atol=1e-6, rtol=1e-5)
        assert layers64[name].input_quantizer.bits == 8
    assert differ <= 0.01 * sum(m.weight.numel() for m in layers32.values())


def test_a_bfloat16_transformers_bert_comes_back_in_bfloat16() -> None:
    model, _ = compress(tiny_bert(torch.bfloat16), "pwlq", budget=8, data=text_batches())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


FACTORIES = {torch.zeros, torch.ones, torch.full, torch.empty, torch.arange, torch.linspace, torch.eye, torch.tensor, torch.as_tensor,
             torch.rand, torch.randn, torch.randint}


class UnplacedTensors(torch.overrides.TorchFunctionMode):
    """Records where trimlab's method and model code creates a tensor without naming its device (it lands on the CPU).

    On a GPU model that tensor meets CUDA tensors and fails; this finds it on the CPU. A seeded draw
    (``generator=``) is exempt: a CPU generator draws on the CPU, and the caller moves the draw.
    """

    def __init__(self) -> None:
        super().__init__()
        self.places: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None and "generator" not in kwargs:
            frame = sys._getframe(1)
            while frame is not None and "trimlab" not in frame.f_code.co_filename:
                frame = frame.f_back
            if frame is not None and any(f"trimlab/{part}/" in frame.f_code.co_filename for part in ("methods", "models")):
                self.places.append(f"{frame.f_code.co_filename.split('trimlab/')[-1]}:{frame.f_lineno} {func.__name__}")
        return func(*args, **kwargs)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_tensor_a_method_creates_is_placed_on_the_model_device(method: str) -> None:
    model = to_trimlab(tiny_bert(torch.float32))
    with UnplacedTensors() as audit:
        compress(model, method, data=text_batches(), **METHODS[method])
    assert audit.places == []
