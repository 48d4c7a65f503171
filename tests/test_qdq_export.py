"""QDQ ONNX export of uniform and PWLQ W8A8 models: trimlab's scales and codes in the graph, integer MatMuls in ONNX Runtime."""

from __future__ import annotations

import tempfile
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from test_export import LAYERS, text_batch, text_model, unfused_onnx_logits
from trimlab.export import export_model, exported_logits, model_logits
from trimlab.methods.pwlq.callback import PostTrainingQuantization
from trimlab.methods.pwlq.schema import QuantizeConfig
from trimlab.models.classifier import TransformerClassifier
from trimlab.qdq import CODES_SUFFIX, input_grid, integer_weight, quantized_linears, weight_codes

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402

TEST_INPUTS = [text_batch(50, 12, seed=100 + s) for s in range(4)]
"""200 examples of other sizes than the export's example."""


def quantized(bits: int = 8, act_bits: int = 8, **options: object) -> TransformerClassifier:
    model = text_model()
    cfg = OmegaConf.structured(QuantizeConfig(act_bits=act_bits, **options))
    with tempfile.TemporaryDirectory() as report_dir:
        PostTrainingQuantization(cfg, bits, [text_batch(4, 12, seed=s) for s in range(3)], Path(report_dir)).compress(model)
    return model


@cache
def w8a8(scheme: str) -> TransformerClassifier:
    return quantized(scheme=scheme)


@pytest.fixture(scope="module")
def qdq_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The uniform and the PWLQ W8A8 model, each as its QDQ file."""
    folder = tmp_path_factory.mktemp("qdq")
    return {scheme: export_model(w8a8(scheme), text_batch(2, 8, seed=1), folder / f"{scheme}.onnx", "onnx") for scheme in ("uniform", "pwlq")}


def fused_ops(path: Path, folder: Path) -> list[str]:
    """The op types of ``path``'s graph after ONNX Runtime's fusions (the optimised graph it writes)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(folder / f"{path.stem}.optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


def test_every_quantized_linear_reads_trimlabs_codes_through_a_dequantize(qdq_files: dict[str, Path]) -> None:
    graph = onnx.load(str(qdq_files["uniform"])).graph
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    dequantized = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    layers = quantized_linears(w8a8("uniform"))
    assert len(layers) == 4 * LAYERS + 2  # qkv, out, ffn in/out per layer; the pooler and the classifier
    for name, layer in layers.items():
        weight = f"model.{name}.weight_t{CODES_SUFFIX}"
        assert weight in dequantized
        assert initializers[weight].dtype == np.uint8
        np.testing.assert_array_equal(initializers[weight], weight_codes(layer.quantized_weight).T.numpy())
    assert not any(name.endswith(".weight_t") for name in initializers)  # no float copy of a quantized weight


def test_inputs_are_quantized_with_the_calibrated_scales(qdq_files: dict[str, Path]) -> None:
    graph = onnx.load(str(qdq_files["uniform"])).graph
    constants = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"}
    constants |= {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    scales = sorted(float(constants[n.input[1]]) for n in graph.node if n.op_type == "QuantizeLinear")
    expected = sorted(input_grid(layer.input_quantizer)[0] for layer in quantized_linears(w8a8("uniform")).values())
    np.testing.assert_allclose(scales, expected, rtol=1e-6)


@pytest.mark.parametrize("scheme", ["uniform", "pwlq"])
def test_onnx_runtime_fuses_each_quantized_linear_into_an_integer_matmul(scheme: str, qdq_files: dict[str, Path], tmp_path: Path) -> None:
    ops = fused_ops(qdq_files[scheme], tmp_path)
    assert ops.count("MatMulIntegerToFloat") == len(quantized_linears(w8a8(scheme)))
    assert "DequantizeLinear" not in ops


@pytest.mark.parametrize("scheme", ["uniform", "pwlq"])
def test_onnx_runtime_predicts_as_the_simulated_model(scheme: str, qdq_files: dict[str, Path]) -> None:
    model = w8a8(scheme)
    exported = torch.cat([exported_logits(qdq_files[scheme], b) for b in TEST_INPUTS])
    simulated = torch.cat([model_logits(model, b) for b in TEST_INPUTS])
    assert (exported.argmax(-1) == simulated.argmax(-1)).float().mean() >= 0.995
    assert (exported - simulated).abs().max() <= 0.025 * simulated.abs().max()  # 1.3% here: a boundary input may land one step away; saturating int16 sums gave 20%


@pytest.mark.parametrize("bits", [4, 8])
def test_a_pwlq_weights_two_branches_add_up_to_its_simulated_weight(bits: int) -> None:
    for layer in quantized_linears(quantized(bits=bits, scheme="pwlq")).values():
        q = layer.quantized_weight
        codes, scale, zero = integer_weight(q)
        rows = (codes.float() - zero) * scale[:, None]
        out = q.shape[0]
        assert codes.shape == (2 * out, rows.shape[1]) and zero == 128
        torch.testing.assert_close(rows[:out] + rows[out:], q.dequantize().reshape(out, -1), rtol=1e-6, atol=1e-7)


def test_a_pwlq_model_writes_its_two_branches_codes(qdq_files: dict[str, Path]) -> None:
    initializers = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(qdq_files["pwlq"])).graph.initializer}
    for name, layer in quantized_linears(w8a8("pwlq")).items():
        np.testing.assert_array_equal(
            initializers[f"model.{name}.weight_t{CODES_SUFFIX}"], integer_weight(layer.quantized_weight)[0].T.numpy()
        )


def test_int8_weights_hold_the_same_codes_signed_and_compute_the_same_graph(qdq_files: dict[str, Path], tmp_path: Path) -> None:
    """Unfused (each node as written, no integer kernel) the int8 file computes what the uint8 one does; the
    kernels themselves differ by CPU (VNNI or not), so their speed and exactness are benchmarks' business."""
    signed = export_model(w8a8("uniform"), text_batch(2, 8, seed=1), tmp_path / "int8.onnx", "onnx", int8_weights=True)
    initializers = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(signed)).graph.initializer}
    for name, layer in quantized_linears(w8a8("uniform")).items():
        codes = initializers[f"model.{name}.weight_t{CODES_SUFFIX}"]
        assert codes.dtype == np.int8
        np.testing.assert_array_equal(codes.astype(np.int16) + 2 ** (layer.quantized_weight.bits - 1), weight_codes(layer.quantized_weight).T.numpy())
    for batch in TEST_INPUTS[:2]:
        np.testing.assert_allclose(unfused_onnx_logits(signed, batch), unfused_onnx_logits(qdq_files["uniform"], batch), rtol=1e-6, atol=1e-6)
    assert fused_ops(signed, tmp_path).count("MatMulIntegerToFloat") == len(quantized_linears(w8a8("uniform")))


def test_int8_weights_are_refused_where_no_integer_weights_are_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only a quantized model's onnx"):
        export_model(text_model(), text_batch(2, 8, seed=1), tmp_path / "model.onnx", "onnx", int8_weights=True)
    with pytest.raises(ValueError, match="only a quantized model's onnx"):
        export_model(w8a8("uniform"), text_batch(2, 8, seed=1), tmp_path / "model.onnx", "onnx_float", int8_weights=True)


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: quantized(scheme="pwlq", bias_correction=True), "bias-corrected"),
        (lambda: quantized(bits=16, scheme="uniform"), "16-bit weights"),
        (lambda: quantized(scheme="uniform", act_bits=0), "full-precision inputs"),
        (lambda: quantized(scheme="uniform", symmetric=False), "asymmetric weights"),
    ],
    ids=["pwlq-bias-corrected", "bits16", "float-inputs", "asymmetric"],
)
def test_models_without_an_exact_int8_form_are_refused_with_the_float_graph_named(build, match: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=match) as refusal:
        export_model(build(), text_batch(2, 8, seed=1), tmp_path / "model.onnx", "onnx")
    assert "--format onnx_float" in str(refusal.value) and len(str(refusal.value).splitlines()) == 1
    assert not (tmp_path / "model.onnx").exists()
