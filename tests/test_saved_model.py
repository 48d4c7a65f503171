"""The kept model: every run saves its compressed model, and ``load_model`` rebuilds it to the same predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig

from trimlab.config import ConfigError
from trimlab.data import build_datamodule
from trimlab.models.build import build_model
from trimlab.results.predictions import read_predictions, score
from trimlab.export import main as export_main
from trimlab.results.record import RunRecord, write_record
from trimlab.results.run_folder import RunFolder
from trimlab.results.table import main as table_main
from trimlab.run import run
from trimlab.methods.ltp.selectors import LearnedThresholds, TopKTokens, topk_keep_rates
from trimlab.methods.mait.masks import install_masks, locality_mask, masked_heads_of
from trimlab.methods.pwlq.callback import PostTrainingQuantization
from trimlab.methods.sait.selector import SaiTSelector
from trimlab.saved_model import MODEL_DIR, STRUCTURE_FILE, WEIGHTS_FILE, load_model, pack_bits, read_model, save_model, unpack_bits

CNN = ("experiment=smoke", "model=cnn_digits", "dataset=digits", "dataset.max_train_examples=128", "dataset.max_eval_examples=64")
VIT = ("experiment=smoke", "model=vit_digits", "dataset=digits", "dataset.max_train_examples=128", "dataset.max_eval_examples=64")
TOKENS = ("method.steps.tokens.soft_epochs=1", "method.steps.tokens.hard_epochs=1", "method.steps.tokens.calibration_examples=32")


def run_folder(record: RunRecord) -> Path:
    return Path(record.config["paths"]["output_dir"]) / "runs" / record.run_id


@torch.no_grad()
def predictions_of(model: torch.nn.Module, cfg: DictConfig) -> np.ndarray:
    """Class ids of the run's test split, in loader order, from ``model``."""
    datamodule = build_datamodule(cfg.dataset, build_model(cfg.model, cfg.dataset.num_labels), cfg.seed)
    datamodule.setup("fit")
    return torch.cat([model(batch).logits.argmax(-1) for batch in datamodule.test_dataloader()]).numpy()


def assert_round_trip(cfg: DictConfig) -> RunRecord:
    """Run ``cfg``, rebuild its model from the run folder and check it predicts every test example as the run recorded."""
    record = run(cfg)
    assert record.status == "completed" and record.artifacts[MODEL_DIR] == MODEL_DIR
    folder = run_folder(record)
    model = load_model(folder)
    assert not model.training and all(p.device.type == "cpu" for p in model.parameters())
    recorded = read_predictions(folder / record.artifacts["predictions"])
    preds = predictions_of(model, cfg)
    np.testing.assert_array_equal(preds, recorded.compressed)
    assert float(score(recorded.metric, recorded.labels, preds)) == pytest.approx(record.compressed["metric"], abs=1e-6)
    return record


@pytest.mark.parametrize("bits", [1, 3, 4, 5, 9])
def test_codes_pack_at_their_bits_and_unpack_exactly(bits: int) -> None:
    codes = torch.randint(0, 2**bits, (37, 5), generator=torch.Generator().manual_seed(bits))
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == bits * -(-codes.numel() // 8)
    torch.testing.assert_close(unpack_bits(packed, bits, codes.numel()).view(37, 5), codes)


@pytest.mark.parametrize(("scheme", "symmetric"), [("pwlq", True), ("uniform", True), ("uniform", False)])
def test_a_rebuilt_quantized_model_computes_the_same_logits(scheme: str, symmetric: bool, compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg(*CNN, "method=pwlq", "budget=bits_4", f"method.scheme={scheme}", f"method.symmetric={symmetric}", "method.act_bits=6")
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.dataset.num_labels).model.eval()
    images = [{"pixel_values": torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(i))} for i in range(2)]
    PostTrainingQuantization(cfg.method, 3, images, tmp_path).compress(model)
    saved = save_model(model, tmp_path / MODEL_DIR, cfg.model, cfg.dataset.num_labels)
    rebuilt = read_model(saved.path)
    assert saved.quantized and torch.equal(rebuilt.net[4].weight, model.net[4].weight)
    assert torch.equal(rebuilt(images[0]).logits, model(images[0]).logits)  # bias correction, folded BatchNorm, 6-bit inputs


def selector_of(kind: str) -> object:
    if kind == "thresholds":
        selector = LearnedThresholds(6, final_threshold=0.02)
        selector.offsets.data = torch.linspace(-0.002, 0.004, 6)
        selector.hard = True
        return selector
    if kind == "topk":
        return TopKTokens(topk_keep_rates(6, 0.4))
    selector = SaiTSelector([1, 3], "adaptive", package=True)
    selector.density = 0.7
    return selector


@pytest.mark.parametrize("selector", ["thresholds", "topk", "sait"])
def test_a_rebuilt_pruned_masked_vit_computes_the_same_logits(selector: str, compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg(*VIT, "method=dense", "budget=none")
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.dataset.num_labels).model.eval()
    model.encoder.prune([[1, 3], [0, 1, 2], [2], [0], [0, 1, 2, 3], [3]], [range(0, 192, 2), range(100), range(192), range(5), [], range(7)])
    install_masks(model.encoder, locality_mask(8, 8, (3, 3)), [2, 1, 0, 0, 4, 1])
    model.encoder.token_selector = selector_of(selector)
    images = {"pixel_values": torch.randn(6, 1, 32, 32, generator=torch.Generator().manual_seed(1))}
    rebuilt = read_model(save_model(model, tmp_path / MODEL_DIR, cfg.model, cfg.dataset.num_labels).path)
    assert [b.attn.head_index.tolist() for b in rebuilt.encoder.layers] == [[1, 3], [0, 1, 2], [2], [0], [0, 1, 2, 3], [3]]
    assert masked_heads_of(rebuilt.encoder) == [2, 1, 0, 0, 4, 1]
    expected = model(images)
    out = rebuilt(images)
    assert torch.equal(out.logits, expected.logits)
    assert all(torch.equal(a, b) for a, b in zip(out.encoder.kept_tokens, expected.encoder.kept_tokens))
    assert out.encoder.kept_tokens[-1].float().mean() < 65  # the selector removed tokens


@pytest.mark.parametrize("form", ["multiplicative", "additive"])
def test_either_mask_form_is_rebuilt(form: str, compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg(*VIT, "method=dense", "budget=none")
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.dataset.num_labels).model.eval()
    install_masks(model.encoder, locality_mask(8, 8, (3, 3)), [4, 4, 1, 1, 0, 0], form)
    images = {"pixel_values": torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))}
    rebuilt = read_model(save_model(model, tmp_path / MODEL_DIR, cfg.model, cfg.dataset.num_labels).path)
    assert masked_heads_of(rebuilt.encoder) == [4, 4, 1, 1, 0, 0]
    assert (rebuilt.encoder.layers[0].attn.head_logit_mask is not None) == (form == "multiplicative")
    with torch.no_grad():
        assert torch.equal(rebuilt(images).logits, model(images).logits)


def test_dense_model_is_kept_and_rebuilt(compose_cfg) -> None:
    record = assert_round_trip(compose_cfg(*CNN, "method=dense", "budget=none"))
    structure = json.loads((run_folder(record) / MODEL_DIR / STRUCTURE_FILE).read_text())
    assert structure["model"]["name"] == "cnn_digits" and structure["quantized"] == {}
    assert "size_mb_quantized" not in record.compressed


@pytest.mark.parametrize(
    ("method", "overrides"),
    [("pwlq", ("method.act_bits=8",)), ("uniform_ptq", ("method.symmetric=false", "method.first_last_bits=8"))],
)
def test_quantized_model_is_stored_as_codes_and_its_recorded_size_is_the_files(method: str, overrides: tuple[str, ...], compose_cfg) -> None:
    record = assert_round_trip(compose_cfg(*CNN, f"method={method}", "budget=bits_4", *overrides))
    folder = run_folder(record) / MODEL_DIR
    size = (folder / WEIGHTS_FILE).stat().st_size + (folder / STRUCTURE_FILE).stat().st_size
    assert record.compressed["size_mb_quantized"] == size / 2**20
    assert record.ratios["size"] == pytest.approx(size / 2**20 / record.dense["size_mb"])
    structure = json.loads((folder / STRUCTURE_FILE).read_text())
    assert set(structure["quantized"]) == {"net.0", "net.4", "net.8", "net.14"}
    assert structure["quantized"]["net.4"]["code_bits"] == 4 + (method == "pwlq")  # PWLQ: one more bit says centre or tail
    assert bool(structure["input_quantizers"]) == (method == "pwlq")


@pytest.mark.slow
def test_fisher_pruned_ltp_pwlq_pipeline_is_rebuilt(compose_cfg) -> None:
    cfg = compose_cfg(*VIT, "method=fisher_ltp_pwlq", "budget.target=0.5", "method.steps.prune.tune=false", *TOKENS)
    record = assert_round_trip(cfg)
    structure = json.loads((run_folder(record) / MODEL_DIR / STRUCTURE_FILE).read_text())
    assert [len(h) for h in structure["heads"]] == record.compressed["prune/heads_per_layer"]
    assert structure["neurons"] == record.compressed["prune/neurons_per_layer"]
    assert structure["token_selector"]["kind"] == "thresholds" and structure["quantized"]
    assert record.compressed["size_mb_quantized"] < record.compressed["size_mb"] / 3  # 5-bit codes (4 + region), float embeddings


@pytest.mark.slow
def test_sait_model_keeps_its_selector_and_density(compose_cfg) -> None:
    cfg = compose_cfg(*VIT, "method=sait", "budget=none", "method.density=0.7", "method.epochs=0.5", "method.eval_densities=[]")
    record = assert_round_trip(cfg)
    selector = load_model(run_folder(record)).encoder.token_selector
    assert selector.density == 0.7 and selector.prune_layers == record.compressed["prune_layers"]


@pytest.mark.slow
def test_mait_model_keeps_its_locality_masks(compose_cfg) -> None:
    record = assert_round_trip(compose_cfg(*VIT, "method=mait", "budget=none", "finetune.epochs=1"))
    model = load_model(run_folder(record))
    assert masked_heads_of(model.encoder) == record.compressed["masked_heads"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ("method=fisher_prune", "budget=flops_60"),
        ("method=ltp", "budget.kind=tokens", "budget.target=0.7", "method.soft_epochs=1", "method.hard_epochs=1", "method.calibration_examples=32"),
        ("method=ltp_topk", "budget.kind=tokens", "budget.target=0.85", "method.hard_epochs=1", "method.calibration_examples=32"),
    ],
)
def test_pruned_vits_are_rebuilt(overrides: tuple[str, ...], compose_cfg) -> None:
    assert_round_trip(compose_cfg(*VIT, *overrides))


def test_missing_or_corrupt_model_is_a_clear_error(compose_cfg, tmp_path: Path) -> None:
    record = run(compose_cfg(*CNN, "method=dense", "budget=none"))
    folder = run_folder(record)
    assert isinstance(load_model(record.run_id, runs=folder.parent), torch.nn.Module)
    with pytest.raises(ConfigError, match=r"no run 'nope'.*runs="):
        load_model("nope", runs=folder.parent)
    (folder / MODEL_DIR / WEIGHTS_FILE).write_bytes(b"not weights")
    with pytest.raises(ConfigError, match=rf"{MODEL_DIR}/{WEIGHTS_FILE} is not a readable trimlab model file.*force=true"):
        load_model(folder)
    (folder / MODEL_DIR / WEIGHTS_FILE).unlink()
    (folder / MODEL_DIR / STRUCTURE_FILE).unlink()
    (folder / MODEL_DIR).rmdir()
    with pytest.raises(ConfigError, match=r"has no saved model.*force=true"):
        load_model(folder)


def test_a_run_folder_that_is_not_completed_is_refused_by_every_reader(compose_cfg, capsys: pytest.CaptureFixture[str]) -> None:
    record = run(compose_cfg(*CNN, "method=dense", "budget=none"))
    folder = run_folder(record)
    record.status = "failed"
    write_record(folder, record)
    for read in (lambda: load_model(folder), lambda: load_model(folder / MODEL_DIR), lambda: load_model(record.run_id, runs=folder.parent)):
        with pytest.raises(ConfigError, match=r"status is failed, so its files are no result to read; run the same command again"):
            read()
    assert export_main([str(folder), "--format", "torchscript"]) == 2
    assert table_main(["--runs", str(folder)]) == 2
    assert capsys.readouterr().err.count("status is failed") == 2
    record.status = "running"
    with RunFolder(folder).own():  # a live process runs it
        write_record(folder, record)
        with pytest.raises(ConfigError, match=r"status is running, .*wait for it to finish"):
            load_model(folder)
    with pytest.raises(ConfigError, match=r"status is interrupted"):  # its process is gone
        load_model(folder)
