"""ONNX and TorchScript export: parity with the PyTorch model on inputs of other shapes than the example's.

ONNX needs the ``export`` extra (part of ``test``): ``pip install -e '.[test]'``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from trimlab.export import export_model, main, max_logit_difference, model_logits, prediction_agreement
from trimlab.methods.ltp.selectors import LearnedThresholds
from trimlab.methods.mait.masks import install_masks, locality_mask
from trimlab.methods.pwlq.callback import PostTrainingQuantization
from trimlab.methods.pwlq.schema import QuantizeConfig
from trimlab.methods.sait.selector import SaiTSelector
from trimlab.models.classifier import ClassifierHead, TransformerClassifier
from trimlab.models.cnn import CnnClassifier, small_cnn
from trimlab.models.embeddings import TextEmbeddings
from trimlab.models import encoder as encoder_module
from trimlab.models.encoder import Encoder, EncoderSpec
from trimlab.models.vision import vit_classifier
from trimlab.results.record import RunRecord, write_record

VOCAB, LAYERS, HEADS, FFN = 50, 3, 4, 32
SUFFIX = {"onnx": ".onnx", "onnx_float": ".onnx", "torchscript": ".pt"}


def text_model() -> TransformerClassifier:
    torch.manual_seed(0)
    spec = EncoderSpec(num_layers=LAYERS, hidden_size=16, num_heads=HEADS, ffn_dim=FFN, norm_first=False)
    embeddings = TextEmbeddings(VOCAB, 16, 32, 2, 1e-12, 0.0)
    return TransformerClassifier(embeddings, Encoder(spec), ClassifierHead(16, 3, "tanh_dense", 0.0)).eval()


def text_batch(size: int, length: int, seed: int, padded: bool = True) -> dict[str, Tensor]:
    """Random tokens; with ``padded``, example i keeps its first ``length - i`` tokens."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(size, length, dtype=torch.long)
    if padded:
        for i in range(1, size):
            mask[i, max(1, length - i) :] = 0
    ids = torch.randint(1, VOCAB, (size, length), generator=gen) * mask
    return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": mask}


def images(size: int, seed: int, channels: int = 1, side: int = 16) -> dict[str, Tensor]:
    return {"pixel_values": torch.randn(size, channels, side, side, generator=torch.Generator().manual_seed(seed))}


def pruned_text_model() -> TransformerClassifier:
    model = text_model()
    model.encoder.prune([[0, 2], [], [0, 1, 2, 3]], [list(range(0, FFN, 2)), [], list(range(5))])  # a layer loses all
    return model


@cache
def quantized_text_model() -> TransformerClassifier:
    """PWLQ 4-bit weights, 8-bit activation fake quantization, calibrated as the method does (built once: slow)."""
    model = text_model()
    cfg = OmegaConf.structured(QuantizeConfig(scheme="pwlq", act_bits=8))
    with tempfile.TemporaryDirectory() as report_dir:
        samples = [text_batch(4, 12, seed=s) for s in range(3)]
        PostTrainingQuantization(cfg, 4, samples, Path(report_dir)).compress(model)
    return model


def masked_vit(form: str) -> Callable[[], TransformerClassifier]:
    """A ViT with MaiT's locality masks on its heads, in ``form``."""

    def build() -> TransformerClassifier:
        torch.manual_seed(0)
        model = vit_classifier(16, 4, 1, 24, 2, 3, 48, num_labels=5).eval()
        install_masks(model.encoder, locality_mask(4, 4, (3, 3)), [3, 1], form)
        return model

    return build


def cnn() -> CnnClassifier:
    torch.manual_seed(0)
    return CnnClassifier(small_cnn(1, [4, 8], 5)).eval()


TEXT_EXAMPLE = text_batch(2, 8, seed=1)
TEXT_OTHERS = [text_batch(3, 11, seed=2), text_batch(1, 5, seed=3, padded=False)]  # other batch sizes and lengths
CASES: dict[str, tuple[Callable[[], nn.Module], dict[str, Tensor], list[dict[str, Tensor]]]] = {
    "dense": (text_model, TEXT_EXAMPLE, TEXT_OTHERS),
    "pruned": (pruned_text_model, TEXT_EXAMPLE, TEXT_OTHERS),
    "quantized": (quantized_text_model, TEXT_EXAMPLE, TEXT_OTHERS),
    "cnn": (cnn, images(2, seed=1), [images(3, seed=2), images(1, seed=3)]),
    "mait": (masked_vit("multiplicative"), images(2, seed=1), [images(3, seed=2), images(1, seed=3)]),
    "mait_additive": (masked_vit("additive"), images(2, seed=1), [images(3, seed=2), images(1, seed=3)]),
}
"""Model builder, example batch, and batches of other shapes the file must also match on."""


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("case", list(CASES))
def test_export_matches_pytorch_on_other_shapes(case: str, fmt: str, tmp_path: Path) -> None:
    build, example, others = CASES[case]
    model = build()
    if case == "quantized" and fmt == "onnx":
        fmt = "onnx_float"  # its simulation exports exactly; QDQ, by prediction: tests/test_qdq_export.py
    path = export_model(model, example, tmp_path / f"model{SUFFIX[fmt]}", fmt)
    for batch in [example, *others]:
        if fmt == "onnx_float":
            # onnxruntime's fusions add in another order: a value on a rounding boundary of the
            # simulation may land one step away there; unfused, the graph must compute what PyTorch does
            assert (unfused_onnx_logits(path, batch) - model_logits(model, batch)).abs().max() <= 1e-4
            assert prediction_agreement(path, model, batch) == 1.0
        else:
            assert max_logit_difference(path, model, batch) <= 1e-4
    assert not model.training


def unfused_onnx_logits(path: Path, batch: dict[str, Tensor]) -> Tensor:
    """The ONNX file's logits with onnxruntime's graph optimisations off (each node as exported, no fused kernel)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {i.name: batch[i.name].numpy() for i in session.get_inputs()})[0])


def test_an_example_without_padding_still_exports_the_padding_mask(tmp_path: Path) -> None:
    model = text_model()
    path = export_model(model, text_batch(2, 8, seed=1, padded=False), tmp_path / "model.pt", "torchscript")
    assert max_logit_difference(path, model, text_batch(3, 9, seed=2)) <= 1e-4


def ltp_model() -> TransformerClassifier:
    model = text_model()
    selector = LearnedThresholds(LAYERS, final_threshold=0.3, score_length=10)
    selector.hard = True
    model.encoder.token_selector = selector
    return model


def sait_model(density: float, mode: str = "adaptive", package: bool = True) -> TransformerClassifier:
    torch.manual_seed(0)
    model = vit_classifier(16, 4, 1, 24, 3, 3, 48, num_labels=5).eval()
    selector = SaiTSelector([1], mode=mode, package=package)
    selector.density = density
    model.encoder.token_selector = selector
    return model


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("case", ["ltp", "sait_package", "sait_fixed"])
def test_token_pruned_models_export_with_dropped_tokens_masked(case: str, fmt: str, tmp_path: Path) -> None:
    if case == "ltp":
        model, example, others = ltp_model(), TEXT_EXAMPLE, TEXT_OTHERS
    else:
        model = sait_model(0.5) if case == "sait_package" else sait_model(0.5, mode="fixed", package=False)
        example, others = images(2, seed=1), [images(3, seed=2)]
    with torch.no_grad():
        tokens = model.embeddings(others[0])[1].sum(dim=1)
        assert (model(others[0]).encoder.kept_tokens[-1] < tokens).any()  # the selector does drop tokens
    path = export_model(model, example, tmp_path / f"model{SUFFIX[fmt]}", fmt)
    for batch in [example, *others]:
        assert max_logit_difference(path, model, batch) <= 1e-4


def test_a_masked_ltp_export_reads_attention_in_one_chunk_whatever_the_batch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The encoder reads received attention a few examples at a time; traced, that split would freeze at the example's batch."""
    monkeypatch.setattr(encoder_module, "RECEIVED_CHUNK", 1)  # eager: one example per chunk
    model = ltp_model()
    path = export_model(model, TEXT_EXAMPLE, tmp_path / "model.onnx", "onnx")
    for batch in [text_batch(5, 11, seed=4), *TEXT_OTHERS]:
        assert max_logit_difference(path, model, batch) <= 1e-4


def ltp_inputs(count: int) -> list[dict[str, Tensor]]:
    """Single unpadded examples of 4 to 23 tokens, on which the LTP model keeps different numbers of tokens."""
    return [text_batch(1, 4 + i % 20, seed=100 + i, padded=False) for i in range(count)]


def test_a_gathering_onnx_export_keeps_the_tokens_pytorch_keeps(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    model = ltp_model()
    path = export_model(model, TEXT_EXAMPLE, tmp_path / "model.onnx", "onnx", gather_tokens=True)
    assert {"NonZero", "Gather"} <= {node.op_type for node in onnx.load(str(path)).graph.node}
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    kept_counts, agree, inputs = set(), 0, ltp_inputs(300)
    for batch in inputs:
        logits, kept = session.run(["logits", "kept_tokens"], {k: v.numpy() for k, v in batch.items()})
        with torch.no_grad():
            out = model(batch)
        assert kept.tolist() == torch.stack(out.encoder.kept_tokens, dim=1).tolist()
        assert (torch.from_numpy(logits) - out.logits).abs().max() <= 1e-4
        agree += int(logits.argmax(-1)[0] == int(out.logits.argmax(-1)[0]))
        kept_counts.add(tuple(kept[0].tolist()))
    assert len(kept_counts) > 10  # lengths and kept counts other than the example's
    assert agree / len(inputs) >= 0.995


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("case", ["ltp", "sait_package", "sait_fixed"])
def test_gathering_exports_match_pytorch_one_example_at_a_time(case: str, fmt: str, tmp_path: Path) -> None:
    if case == "ltp":
        model, example, others = ltp_model(), TEXT_EXAMPLE, ltp_inputs(6)
    else:
        model = sait_model(0.5) if case == "sait_package" else sait_model(0.5, mode="fixed", package=False)
        example, others = images(2, seed=1), [images(1, seed=s) for s in range(2, 6)]
    path = export_model(model, example, tmp_path / f"model{SUFFIX[fmt]}", fmt, gather_tokens=True)
    for batch in others:
        assert max_logit_difference(path, model, batch) <= 1e-4


def test_gathering_tokens_of_a_model_without_a_selector_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a token-pruned model"):
        export_model(text_model(), TEXT_EXAMPLE, tmp_path / "model.pt", "torchscript", gather_tokens=True)


def test_a_selector_that_drops_nothing_on_the_example_is_refused(tmp_path: Path) -> None:
    model = sait_model(1.0, mode="fixed", package=False)  # keeps every patch: the trace would never drop one
    with pytest.raises(ValueError, match="drops no token of the example batch at layer 1"):
        export_model(model, images(2, seed=1), tmp_path / "model.pt", "torchscript")


def test_missing_onnx_packages_name_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, batch = cnn(), images(2, seed=1)
    path = export_model(model, batch, tmp_path / "model.onnx", "onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"onnxruntime package: pip install 'trimlab\[export\]'"):
        max_logit_difference(path, model, batch)
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"onnx package: pip install 'trimlab\[export\]'"):
        export_model(model, batch, tmp_path / "again.onnx", "onnx")
    assert not (tmp_path / "again.onnx").exists()


def test_an_unknown_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="onnx, onnx_float, torchscript"):
        export_model(cnn(), images(1, seed=1), tmp_path / "model.tflite", "tflite")


def test_cli_help_explains_formats_and_token_pruning(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "onnx" in out and "torchscript" in out and "masked" in out and "--gather-tokens" in out


def test_cli_exports_a_saved_run_and_reports_parity(compose_cfg, tmp_path: Path) -> None:
    saved_model = pytest.importorskip("trimlab.saved_model", reason="trimlab.saved_model (the kept model) is missing")
    from trimlab.models.build import build_model

    cfg = compose_cfg("model=cnn_digits", "dataset=digits")
    torch.manual_seed(0)
    model = build_model(cfg.model, 10).model.eval()
    run_dir = tmp_path / "runs" / "abc123"
    saved_model.save_model(model, run_dir / "model", cfg.model, 10)
    config = OmegaConf.to_container(cfg, resolve=True)
    record = RunRecord("abc123", "completed", "cnn_digits", "digits", "dense", {}, 0, config)
    write_record(run_dir, record)
    result = subprocess.run(
        [sys.executable, "-m", "trimlab.export", "abc123", "--format", "onnx", "--runs", str(tmp_path / "runs")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (run_dir / "model.onnx").is_file()
    assert "pixel_values" in result.stdout
    assert float(result.stdout.split("example batch: ")[1].split()[0]) <= 1e-4


def test_cli_names_a_missing_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("trimlab.saved_model", reason="trimlab.saved_model (the kept model) is missing")
    assert main(["nope", "--format", "torchscript", "--runs", str(tmp_path)]) == 2
    assert "no run 'nope'" in capsys.readouterr().err


@pytest.fixture
def saved_run(compose_cfg, tmp_path: Path) -> Path:
    """A completed run folder holding a small CNN's saved model."""
    from trimlab.models.build import build_model
    from trimlab.saved_model import save_model

    cfg = compose_cfg("model=cnn_digits", "dataset=digits")
    torch.manual_seed(0)
    run_dir = tmp_path / "runs" / "abc123"
    save_model(build_model(cfg.model, 10).model.eval(), run_dir / "model", cfg.model, 10)
    write_record(run_dir, RunRecord("abc123", "completed", "cnn_digits", "digits", "dense", {}, 0, OmegaConf.to_container(cfg, resolve=True)))
    return run_dir


@pytest.mark.parametrize(
    "fmt,output,match",
    [
        ("onnx", "{tmp}/model.pt", "--format onnx writes a .onnx file"),
        ("torchscript", "{tmp}/model.onnx", "--format torchscript writes a TorchScript file"),
        ("torchscript", "{run}", "is a folder"),
        ("torchscript", "{run}/model/weights.pt", "inside the run's saved model"),
        ("torchscript", "{run}/model", "is a folder"),
        ("onnx", "{run}/.hydra/config.onnx", "inside the run folder"),
        ("torchscript", "{run}/masks.pt", "would overwrite the run's own file"),
    ],
    ids=["onnx-as-pt", "torchscript-as-onnx", "run-folder", "in-model-folder", "model-folder", "in-a-subfolder", "own-file"],
)
def test_an_output_that_contradicts_the_format_or_overwrites_the_run_is_refused(
    saved_run: Path, capsys: pytest.CaptureFixture[str], fmt: str, output: str, match: str
) -> None:
    (saved_run / "masks.pt").write_bytes(b"the run's own artifact")
    before = {p: p.read_bytes() for p in saved_run.rglob("*") if p.is_file()}
    output = output.format(run=saved_run, tmp=saved_run.parents[1])
    assert main([str(saved_run), "--format", fmt, "--output", output]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trimlab-export: error: --output") and match in err and len(err.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in saved_run.rglob("*") if p.is_file()} == before


def test_a_new_file_beside_the_run_and_the_default_export_are_written(saved_run: Path, tmp_path: Path) -> None:
    assert main([str(saved_run), "--format", "torchscript", "--output", str(saved_run / "cnn.pt")]) == 0
    assert main([str(saved_run), "--format", "torchscript"]) == 0
    assert main([str(saved_run), "--format", "torchscript"]) == 0  # a previous export is replaced
    assert (saved_run / "cnn.pt").is_file() and (saved_run / "model.pt").is_file()


def test_an_output_that_cannot_be_written_is_one_line_and_exit_2(saved_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "taken").write_text("a file, not a folder")
    assert main([str(saved_run), "--format", "torchscript", "--output", str(tmp_path / "taken" / "model.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trimlab-export: error: cannot write") and "taken" in err and len(err.strip().splitlines()) == 1


def test_a_corrupt_saved_model_is_one_line_and_exit_2(saved_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (saved_run / "model" / "structure.json").write_text("[1, 2")
    assert main([str(saved_run), "--format", "torchscript"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trimlab-export: error:") and "structure.json" in err and len(err.strip().splitlines()) == 1


def test_help_says_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "exit codes" in out and "130" in out


def test_cli_gather_tokens_on_a_model_without_a_selector_is_one_line_and_exit_2(saved_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(saved_run), "--format", "torchscript", "--gather-tokens"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trimlab-export: error:") and "needs a token-pruned model" in err and len(err.strip().splitlines()) == 1


def test_cli_int8_weights_on_a_model_without_quantized_weights_is_one_line_and_exit_2(saved_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(saved_run), "--format", "onnx", "--int8-weights"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trimlab-export: error: int8 weights:") and len(err.strip().splitlines()) == 1


def test_cli_gathers_the_tokens_of_a_saved_sait_run(compose_cfg, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trimlab.models.build import build_model
    from trimlab.saved_model import save_model

    cfg = compose_cfg("model=vit_digits", "dataset=digits")
    torch.manual_seed(0)
    model = build_model(cfg.model, 10).model.eval()
    selector = SaiTSelector([1], "adaptive", package=True)
    selector.density = 0.5
    model.encoder.token_selector = selector
    run_dir = tmp_path / "runs" / "abc123"
    save_model(model, run_dir / "model", cfg.model, 10)
    write_record(run_dir, RunRecord("abc123", "completed", "vit_digits", "digits", "sait", {}, 0, OmegaConf.to_container(cfg, resolve=True)))
    assert main([str(run_dir), "--format", "onnx", "--gather-tokens"]) == 0
    assert float(capsys.readouterr().out.split("example batch: ")[1].split()[0]) <= 1e-4
