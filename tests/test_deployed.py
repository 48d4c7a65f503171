"""A quantized model's deployed form, in a run and in compress(): its integer engine's metric and disagreement beside the simulated model's, and the 1% rule."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig
from torch import nn
from transformers import BertConfig

from test_api import small_bert, text_batches
from test_options import hf_folder
from trimlab.api import compress
from trimlab.config import ConfigError
from trimlab.measure.deployed import (
    DISAGREEMENT_LIMIT,
    NO_ENGINE,
    DeployedDisagreement,
    DeployedModel,
    check_disagreement,
    deployed_model,
)
from trimlab.methods.pwlq.calibrate import InputQuantizer, install_input_quantizer
from trimlab.methods.pwlq.quantizer import pwlq_codes, uniform_codes
from trimlab.results.record import RECORD_FILE, run_id
from trimlab.run import run

TINY_BERT = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


@pytest.fixture
def tiny_bert(tmp_path: Path) -> Path:
    """A tiny random BERT's folder (config and MiniLM's tokenizer)."""
    return hf_folder(tmp_path / "models", TINY_BERT)


def tiny_bert_run(folder: Path, *overrides: str) -> tuple[str, ...]:
    """A seconds-long quantized run of a tiny BERT fine-tuned on 256 tweets (so its predictions differ between examples)."""
    return (
        "experiment=smoke", "model=bert_base", "model.weights=random", f"model.path={folder}",
        "dataset=tweets", "budget=bits_8", "method.act_bits=8", "measure.latency_batch_sizes=[1]",
        *overrides,
    )


@pytest.mark.parametrize(("method", "engine"), [("pwlq", "torch_two_branch_"), ("uniform_ptq", "onnxruntime_qdq")])
def test_a_quantized_run_records_its_deployed_model_beside_the_simulated_one(
    method: str, engine: str, compose_cfg: Callable[..., DictConfig], tiny_bert: Path
) -> None:
    if engine == "onnxruntime_qdq":
        pytest.importorskip("onnxruntime")
    record = run(compose_cfg(*tiny_bert_run(tiny_bert, f"method={method}")))
    c = record.compressed
    assert record.status == "completed" and c["deployed_engine"].startswith(engine) and c["metric"] > 0.6
    assert 0.0 <= c["deployed_disagreement"] <= DISAGREEMENT_LIMIT
    assert abs(c["deployed_metric"] - c["metric"]) <= c["deployed_disagreement"] + 1e-9  # each disagreement moves accuracy ≤ 1 example
    assert record.stages["measure_deployed"] > 0


def test_a_scheme_no_engine_takes_is_recorded_with_its_reason_and_the_run_goes_on(
    compose_cfg: Callable[..., DictConfig], tiny_bert: Path
) -> None:
    record = run(compose_cfg(*tiny_bert_run(tiny_bert, "method=uniform_ptq", "method.symmetric=false")))
    c = record.compressed
    assert record.status == "completed"
    assert c["deployed_engine"] == NO_ENGINE and "asymmetric" in c["deployed_reason"]
    assert "deployed_metric" not in c and "deployed_disagreement" not in c


def test_measure_deployed_false_skips_it_and_true_keeps_the_run_id(compose_cfg: Callable[..., DictConfig], tiny_bert: Path) -> None:
    from omegaconf import OmegaConf

    cfg = compose_cfg(*tiny_bert_run(tiny_bert, "method=pwlq"))
    before = OmegaConf.to_container(cfg, resolve=True)
    del before["measure"]["deployed"]  # a config from before measure.deployed existed
    assert run_id(OmegaConf.create(before)) == run_id(cfg)
    skipped = compose_cfg(*tiny_bert_run(tiny_bert, "method=pwlq", "measure.deployed=false"))
    assert run_id(skipped) != run_id(cfg)
    record = run(skipped)
    assert record.status == "completed" and not any(k.startswith("deployed_") for k in record.compressed)


def break_the_deployed_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every deployed model built from now on predicts another class on the first 2 of every 8 examples (25%)."""
    real = deployed_model

    def flipping(model: nn.Module, example: dict[str, torch.Tensor], workdir: Path) -> DeployedModel | None:
        deployed = real(model, example, workdir)
        predict = deployed.predict

        def flipped(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            logits = predict(batch).clone()
            logits[::8], logits[1::8] = logits[::8].flip(-1), logits[1::8].flip(-1)
            return logits

        return DeployedModel(deployed.engine, flipped)

    monkeypatch.setattr("trimlab.measure.deployed.deployed_model", flipping)


def test_more_than_one_percent_disagreement_fails_the_run_and_the_record_says_so(
    compose_cfg: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch, tiny_bert: Path, tmp_path: Path
) -> None:
    break_the_deployed_model(monkeypatch)
    cfg = compose_cfg(*tiny_bert_run(tiny_bert, "method=pwlq"))
    with pytest.raises(DeployedDisagreement, match=r"engine torch_two_branch_\w+\).* on \d+\.\d\d% of 128 test examples, over the 1% limit"):
        run(cfg)
    record = json.loads((tmp_path / "runs" / run_id(cfg) / RECORD_FILE).read_text())
    assert record["status"] == "failed" and record["stage"] == "measure_deployed"
    assert "DeployedDisagreement" in record["error"] and "over the 1% limit" in record["error"]
    assert record["compressed"]["deployed_disagreement"] > DISAGREEMENT_LIMIT


def _quantized_mlp(scheme: str, bits: int = 8, act_bits: int = 8) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    for layer in (model[0], model[2]):
        w = layer.weight.detach()
        layer.quantized_weight = pwlq_codes(w, bits, True, "gaussian") if scheme == "pwlq" else uniform_codes(w, bits)
        layer.weight.data = layer.quantized_weight.dequantize()
        install_input_quantizer(layer, InputQuantizer(-3.0, 3.0, act_bits))
    return model


@pytest.mark.parametrize(
    ("scheme", "bits", "act_bits", "reason"),
    [("pwlq", 12, 8, "12-bit weights"), ("pwlq", 8, 16, "16-bit inputs"), ("uniform", 8, 4, "4-bit inputs")],
)
def test_what_no_integer_engine_takes_is_named(scheme: str, bits: int, act_bits: int, reason: str, tmp_path: Path) -> None:
    deployed = deployed_model(_quantized_mlp(scheme, bits, act_bits), {}, tmp_path)
    assert deployed is not None and deployed.engine == NO_ENGINE and reason in deployed.reason


def test_a_quantized_conv_and_a_float64_model_have_no_deployed_form(tmp_path: Path) -> None:
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    conv[0].quantized_weight = uniform_codes(conv[0].weight.detach(), 8)
    assert "quantized Conv2d" in deployed_model(conv, {}, tmp_path).reason
    assert "float32" in deployed_model(_quantized_mlp("pwlq").double(), {}, tmp_path).reason
    assert deployed_model(nn.Linear(2, 2), {}, tmp_path) is None  # nothing quantized: nothing to deploy


def test_a_disagreement_at_the_limit_passes_and_one_over_fails() -> None:
    check_disagreement({"deployed_engine": "e", "deployed_disagreement": DISAGREEMENT_LIMIT}, 100)
    with pytest.raises(DeployedDisagreement, match="engine e"):
        check_disagreement({"deployed_engine": "e", "deployed_disagreement": 0.02}, 100)


# ---------------------------------------------------------------- the same check in compress()
W8A8 = {"act_bits": 8}


def simulated_accuracy(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    with torch.no_grad():
        preds = torch.cat([model({k: v for k, v in b.items() if k != "labels"}).logits.argmax(-1) for b in batches])
    return float((preds == torch.cat([b["labels"] for b in batches])).float().mean())


@pytest.mark.parametrize(
    ("method", "engine", "held_out"), [("pwlq", "torch_two_branch_", True), ("uniform_ptq", "onnxruntime_qdq", False)]
)
def test_compress_checks_a_quantized_model_on_its_engine_over_eval_data_else_data(method: str, engine: str, held_out: bool) -> None:
    if engine == "onnxruntime_qdq":
        pytest.importorskip("onnxruntime")
    data, eval_data = text_batches(2), text_batches(4)
    quantized, report = compress(small_bert(), method, bits=8, data=data, options=W8A8, eval_data=eval_data if held_out else None)
    checked = eval_data if held_out else data
    assert report.deployed_engine.startswith(engine) and report.deployed_reason == ""
    assert report.deployed_disagreement is not None and 0.0 <= report.deployed_disagreement <= DISAGREEMENT_LIMIT
    assert abs(report.deployed_metric - simulated_accuracy(quantized, checked)) <= report.deployed_disagreement + 1e-9
    assert report.stages["measure_deployed"] > 0


def test_compress_names_why_no_engine_takes_a_model_and_checks_nothing_unquantized_or_when_told_not_to() -> None:
    _, asymmetric = compress(small_bert(), "uniform_ptq", bits=8, data=text_batches(2), options={**W8A8, "symmetric": False})
    assert asymmetric.deployed_engine == NO_ENGINE and "asymmetric" in asymmetric.deployed_reason
    assert asymmetric.deployed_metric is None and asymmetric.deployed_disagreement is None
    _, pruned = compress(small_bert(), "fisher_prune", budget=0.5, data=text_batches(2), options={"tune": False})
    _, unchecked = compress(small_bert(), "pwlq", bits=8, data=text_batches(2), options=W8A8, check_deployed=False)
    for report in (pruned, unchecked):
        assert report.deployed_engine is None and "measure_deployed" not in report.stages


def test_compress_raises_over_one_percent_disagreement_and_names_the_argument_that_skips_it(monkeypatch: pytest.MonkeyPatch) -> None:
    break_the_deployed_model(monkeypatch)
    kwargs = dict(bits=8, data=text_batches(2), options=W8A8, eval_data=text_batches(4))
    message = r"engine torch_two_branch_\w+\).* on 25\.00% of 32 eval_data examples, over the 1% limit.*compress\(\.\.\., check_deployed=False\) skips"
    with pytest.raises(DeployedDisagreement, match=message):
        compress(small_bert(), "pwlq", **kwargs)
    _, report = compress(small_bert(), "pwlq", **{**kwargs, "eval_data": None}, check_deployed=False)
    assert report.deployed_disagreement is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "fisher_prune", "budget": 0.5}, "eval_data: method=fisher_prune neither trains nor quantizes"),
        ({"method": "pwlq", "bits": 8, "check_deployed": False}, "eval_data: check_deployed=False skips the check that reads it"),
    ],
)
def test_compress_refuses_eval_data_nothing_reads(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        compress(small_bert(), data=text_batches(1), eval_data=text_batches(1), **kwargs)


def test_compress_checks_eval_data_before_compressing() -> None:
    with pytest.raises(ConfigError, match="eval_data: batch 0, a dict .keys: ids., has neither input_ids"):
        compress(small_bert(), "pwlq", bits=8, data=text_batches(1), eval_data=[{"ids": torch.zeros(2, 4)}])


def test_a_model_with_its_own_head_num_labels_0_has_its_disagreement_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """``num_labels`` 0 (a photo model's 1,000 ImageNet classes) is a classifier: the 1% rule must see its flips."""
    from trimlab.measure.deployed import measure_deployed

    quantized, _ = compress(small_bert(), "pwlq", bits=8, data=text_batches(2), options=W8A8, check_deployed=False)
    break_the_deployed_model(monkeypatch)
    entries = measure_deployed(quantized, text_batches(4), "accuracy", 0)
    assert entries["deployed_disagreement"] == pytest.approx(0.25)
    with pytest.raises(DeployedDisagreement):
        check_disagreement(entries, 32)
