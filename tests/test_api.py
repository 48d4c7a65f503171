"""``compress()``: a user's own transformers / timm model, compressed post-training with no Hydra config."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    MPNetConfig,
    MPNetForSequenceClassification,
)

from trimlab.api import Budget, compress, method_config
from trimlab.config import ConfigError
from trimlab.models.classifier import TransformerClassifier
from trimlab.models.convert import to_trimlab

BOUND = 1e-4
VOCAB, LENGTH = 100, 16


def small_bert(num_labels: int = 3) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=LENGTH + 2, num_labels=num_labels,
    )
    return BertForSequenceClassification(config).eval()


def text_batches(n: int = 3, num_labels: int = 3, first_id: int = 1) -> list[dict[str, torch.Tensor]]:
    """Right-padded batches with a mask, as trimlab's text datamodules yield them."""
    gen = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(n):
        ids = torch.randint(first_id, VOCAB, (8, LENGTH), generator=gen)
        mask = (torch.arange(LENGTH)[None] < torch.randint(5, LENGTH + 1, (8, 1), generator=gen)).long()
        batches.append({"input_ids": ids * mask, "attention_mask": mask, "labels": torch.randint(0, num_labels, (8,), generator=gen)})
    return batches


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, patch_size=8, depth=3).eval()


def image_batches(n: int = 2) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(2)
    return [{"pixel_values": torch.randn(4, 3, 32, 32, generator=gen), "labels": torch.randint(0, 3, (4,), generator=gen)} for _ in range(n)]


def hf_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(batch).logits


# ---------------------------------------------------------------- conversion parity
@pytest.mark.parametrize(
    "reference",
    [
        lambda: small_bert(),
        lambda: DistilBertForSequenceClassification(
            DistilBertConfig(vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=LENGTH, num_labels=2)
        ),
        lambda: MPNetForSequenceClassification(
            MPNetConfig(
                vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                max_position_embeddings=LENGTH + 2, num_labels=2,
            )
        ),
    ],
    ids=["bert", "distilbert", "mpnet"],
)
def test_converted_text_classifier_matches_transformers(reference) -> None:
    torch.manual_seed(0)
    hf = reference().eval()
    ours = to_trimlab(hf)
    batch = text_batches(1, first_id=2)[0]  # MPNet pads with id 1: no real token may take it
    assert isinstance(ours, TransformerClassifier) and not ours.training
    assert float((logits(ours, batch) - hf_logits(hf, batch)).abs().max()) <= BOUND


def test_converted_timm_vit_matches_timm() -> None:
    net = tiny_vit()
    batch = image_batches(1)[0]
    with torch.no_grad():
        expected = net(batch["pixel_values"])
    assert float((logits(to_trimlab(net), batch) - expected).abs().max()) <= BOUND


# ---------------------------------------------------------------- compress
def test_fisher_prunes_a_transformers_bert_to_the_flops_budget() -> None:
    hf = small_bert()
    batches = text_batches()
    before = hf_logits(hf, batches[0])
    small, report = compress(hf, method="fisher_prune", budget=0.6, data=batches)
    assert report.budget == Budget("flops", 0.6) and report.method == "fisher_prune"
    assert report.flops_ratio <= 0.6 + 0.02
    assert report.params < report.dense_params == sum(p.numel() for p in to_trimlab(hf).parameters())
    assert sum(report.stats["heads_per_layer"]) < 2 * 4 and {"fisher", "search", "tune"} <= set(report.stages)
    after = logits(small, batches[0])
    assert after.shape == before.shape and float((after - before).abs().max()) > 1e-5
    torch.testing.assert_close(hf_logits(hf, batches[0]), before)  # the user's model is left as it was


def test_pwlq_4_bit_quantizes_every_linear(tmp_path) -> None:
    hf = small_bert()
    batches = text_batches(2)
    quantized, report = compress(hf, "pwlq", bits=4, data=batches, output_dir=tmp_path)
    assert report.budget == Budget("bits", 4) and report.stats["weight_bits"] == 4 and report.flops_ratio == pytest.approx(1.0)
    fc1 = quantized.encoder.layers[0].ffn.fc1.weight
    assert all(len(torch.unique(row)) <= 2 * 2**4 for row in fc1)  # PWLQ: two 4-bit grids (centre and tails)
    assert not torch.allclose(logits(quantized, batches[0]), hf_logits(hf, batches[0]), atol=1e-4)
    assert (tmp_path / "quantization.json").is_file() and report.artifacts["quantization"] == str(tmp_path / "quantization.json")
    assert report.method == "pwlq"
    _, with_obc = compress(hf, "pwlq", bits=4, data=batches, options={"output_bias_correction": True})
    assert with_obc.method == "pwlq+obc"  # trimlab's addition names itself


def test_a_pipeline_prunes_then_quantizes_each_step_recorded_apart() -> None:
    hf = small_bert()
    small, report = compress(hf, "fisher_prune_pwlq", budget=0.5, data=text_batches(2), bits=6, options={"prune": {"tune": False}})
    assert report.flops_ratio <= 0.5 + 0.02 and "prune/tune_stopped" not in report.stats
    assert report.stats["quantize/weight_bits"] == 6 and "prune/heads_per_layer" in report.stats
    as_list, listed = compress(hf, ["fisher_prune", "uniform_ptq"], Budget("flops", 0.5), text_batches(2), bits=8)
    assert listed.method == "fisher_prune+uniform_ptq" and listed.stats["uniform_ptq/weight_bits"] == 8


def test_fisher_prunes_a_timm_vit_and_a_trimlab_model_is_not_changed() -> None:
    vit = to_trimlab(tiny_vit())
    batches = image_batches()
    dense = logits(vit, batches[0])
    pairs = [(b["pixel_values"], b["labels"]) for b in batches]  # a torchvision-style loader's batches
    small, report = compress(vit, "fisher_prune", 0.7, pairs, options={"tune": False})
    assert report.flops_ratio <= 0.7 + 0.02 and logits(small, batches[0]).shape == (4, 3)
    torch.testing.assert_close(logits(vit, batches[0]), dense)


def test_batches_as_users_have_them_compress_as_trimlab_batches_do() -> None:
    """HF dict batches with extra keys and ``label``, and (token ids, labels) pairs, read as the same examples."""
    hf, batches = small_bert(), text_batches(2)
    _, expected = compress(hf, "fisher_prune", 0.6, batches, options={"tune": False})
    as_hf = [
        {"idx": torch.arange(8), "sentence": ["a text"] * 8, "label": b["labels"], "token_type_ids": torch.zeros_like(b["input_ids"]),
         "input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
        for b in batches
    ]
    pairs = [(b["input_ids"], b["labels"]) for b in batches]  # pad id 0 (BertConfig's): the mask is inferred from it
    mapping_pairs = [({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}, b["labels"]) for b in batches]
    for data in (as_hf, pairs, mapping_pairs):
        _, report = compress(hf, "fisher_prune", 0.6, data, options={"tune": False})
        assert report.stats["heads_per_layer"] == expected.stats["heads_per_layer"]
        assert report.stats["neurons_per_layer"] == expected.stats["neurons_per_layer"]
        assert report.dense_flops == pytest.approx(expected.dense_flops)


def test_token_id_pairs_take_an_all_ones_mask_when_the_model_has_no_pad_id() -> None:
    hf = small_bert()
    hf.config.pad_token_id = None
    ids = text_batches(1)[0]["input_ids"]
    full = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.zeros(8, dtype=torch.long)}
    _, expected = compress(hf, "fisher_prune", 0.6, [full], options={"tune": False})
    _, report = compress(hf, "fisher_prune", 0.6, [(ids, full["labels"])], options={"tune": False})
    assert report.dense_flops == pytest.approx(expected.dense_flops) and report.stats == expected.stats


def test_method_defaults_compose_inside_a_hydra_session_and_leave_it_as_it_was(compose_cfg) -> None:
    assert method_config("fisher_prune_pwlq").steps.quantize.bits == 8
    assert compose_cfg("method=uniform_ptq").method.scheme == "uniform"


# ---------------------------------------------------------------- clear errors
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "fisher_prunez", "budget": 0.6}, r"method='fisher_prunez' is not a trimlab method; compress\(\) takes fisher_prune, pwlq"),
        ({"method": "sait", "budget": 0.6}, "data: method=sait trains; give train_data="),
        ({"method": "mait", "budget": 0.6, "data": None}, "budget=0.6: method=mait takes no budget; leave it out"),
        ({"method": "ltp", "budget": 0.9}, "data: method=ltp trains; give train_data="),
        ({"method": "ltp", "budget": 0.9, "data": None, "train_data": text_batches(1)}, "eval_data: method=ltp trains and is evaluated"),
        ({"method": "ltp", "budget": 0.9, "data": None, "train_data": text_batches(1), "eval_data": [{"input_ids": torch.ones(2, 4).long()}]},
         "eval_data: batch 0 has no labels"),
        ({"method": "ltp", "budget": 0.9, "data": None, "epochs": 0}, "epochs=0 must be a positive number"),
        ({"method": "ltp", "budget": 0.9, "data": None, "epochs": 1, "options": {"soft_epochs": 2}}, "epochs=1 and options soft_epochs both set them"),
        ({"method": "fisher_prune", "budget": 0.6, "epochs": 1}, "epochs: method=fisher_prune compresses without training"),
        ({"method": "fisher_prune", "budget": Budget("bits", 4)}, "cannot take a 'bits' budget; it accepts flops, latency"),
        ({"method": "pwlq", "budget": Budget("flops", 0.5)}, "cannot take a 'flops' budget; it accepts bits"),
        ({"method": "fisher_prune"}, "budget: method=fisher_prune needs one"),
        ({"method": "fisher_prune", "budget": 0.6, "bits": 4}, "does not quantize"),
        ({"method": "pwlq"}, "needs one, e.g. bits=4"),
        ({"method": "pwlq", "bits": 3, "budget": 4}, "disagree"),
        ({"method": "fisher_prune", "budget": 1.5}, r"budget.target=1.5 must be a ratio in \(0, 1\]"),
        ({"method": "fisher_prune", "budget": 0.6, "options": {"tunez": False}}, "options: .*tunez.*the keys of fisher_prune are"),
        ({"method": "fisher_prune_pwlq", "budget": 0.6, "options": {"tune": False}}, "options: tune is not a step .* prune, quantize"),
        ({"method": "fisher_prune", "budget": 0.6, "data": None}, "data: give a DataLoader"),
        ({"method": "fisher_prune", "budget": 0.6, "data": image_batches(1)}, "reads input_ids, but the batches have pixel_values"),
        ({"method": "fisher_prune", "budget": 0.6, "data": [(torch.zeros(2, 4).long(),)]}, r"data: batch 0 is a tuple of 1 items; a pair batch is \(inputs, labels\)"),
        ({"method": "fisher_prune", "budget": 0.6, "data": [(torch.zeros(2, 4), torch.zeros(2))]}, r"data: batch 0: its inputs have shape \[2, 4\] \(torch.float32\); a pair's inputs are token ids"),
        ({"method": "fisher_prune", "budget": 0.6, "data": [{"ids": torch.zeros(2, 4)}]}, r"data: batch 0, a dict \(keys: ids\), has neither input_ids nor pixel_values"),
        ({"method": "fisher_prune", "budget": 0.6, "data": [{**text_batches(1)[0], "label": torch.zeros(8)}]}, "data: batch 0 has both label and labels"),
    ],
)
def test_a_bad_argument_is_one_clear_error(kwargs: dict, match: str) -> None:
    kwargs.setdefault("data", text_batches(1))
    with pytest.raises(ConfigError, match=match):
        compress(small_bert(), **kwargs)


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (nn.Sequential(nn.Linear(4, 2)), "torch.nn.modules.container.Sequential cannot be converted; give a transformers"),
        (BertModel(BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)),
         "BertModel has no classification head"),
    ],
    ids=["module", "headless"],
)
def test_a_model_that_cannot_be_converted_is_a_value_error(model: nn.Module, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        compress(model, "fisher_prune", 0.6, text_batches(1))


def test_fisher_refuses_a_cnn_and_names_the_quantizers() -> None:
    net = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    with pytest.raises(ConfigError, match="is not a Transformer.*method=pwlq"):
        compress(net, "fisher_prune", 0.6, image_batches(1))


def _with(batches: list[dict[str, torch.Tensor]], **changes) -> list[dict[str, torch.Tensor]]:
    """The batches with some keys replaced: a value is used as is, a callable is applied to the old value."""
    return [{**b, **{k: (v(b[k]) if callable(v) else v) for k, v in changes.items()}} for b in batches]


TEXT, IMAGES = text_batches(2), image_batches(2)


@pytest.mark.parametrize(
    ("model", "data", "match"),
    [
        (small_bert, _with(TEXT, input_ids=lambda t: t[0], attention_mask=lambda t: t[0]), r"input_ids has shape \[16\]; it must be \[batch, tokens\]"),
        (small_bert, _with(TEXT, input_ids=torch.tensor(80)), r"input_ids has shape \[\]; it must be \[batch, tokens\]"),
        (small_bert, _with(TEXT, input_ids=lambda t: t[:0], attention_mask=lambda t: t[:0]), r"input_ids has shape \[0, 16\]: it holds no values"),
        (small_bert, _with(TEXT, input_ids=lambda t: t.float()), "input_ids is torch.float32; token ids are integers"),
        (small_bert, _with(TEXT, input_ids=lambda t: t.tolist()), "input_ids is a list, not a tensor"),
        (small_bert, _with(TEXT, input_ids=lambda t: t + VOCAB), rf"input_ids holds ids \d+\.\.\d+; the model's vocabulary has {VOCAB}"),
        (small_bert, _with(TEXT, attention_mask=lambda t: t[:, :3]), r"attention_mask has shape \[8, 3\]; it must match input_ids \[8, 16\]"),
        (small_bert, [{k: torch.cat([v, v], 1) if v.ndim == 2 else v for k, v in b.items()} for b in TEXT], r"input_ids has 32 tokens; the model takes at most 18"),
        (small_bert, _with(TEXT, labels=lambda t: t + 5), r"labels hold 5\.\.7; the model has 3 classes \(labels 0\.\.2\)"),
        (small_bert, _with(TEXT, labels=lambda t: t - 5), r"labels hold -5\.\.-3; the model has 3 classes"),
        (small_bert, _with(TEXT, labels=lambda t: t.float()), "labels are torch.float32; class labels are integers"),
        (small_bert, _with(TEXT, labels=lambda t: t[:3]), r"labels has shape \[3\]; it must be \[8\], one per example"),
        (tiny_vit, _with(IMAGES, pixel_values=lambda t: t[0]), r"pixel_values has shape \[3, 32, 32\]; it must be \[batch, channels, height, width\]"),
        (tiny_vit, _with(IMAGES, pixel_values=lambda t: t.long()), "pixel_values is torch.int64; images are floating point"),
        (tiny_vit, _with(IMAGES, pixel_values=lambda t: t[:, :1]), r"the model cannot read batch 0 \(pixel_values \[4, 1, 32, 32\]\)"),
        (tiny_vit, _with(IMAGES, pixel_values=lambda t: t[:, :, :16, :16]), r"the model cannot read batch 0 \(pixel_values \[4, 3, 16, 16\]\)"),
        (tiny_vit, _with(IMAGES, labels=lambda t: t + 7), r"labels hold \d+\.\.\d+; the model has 3 classes"),
    ],
    ids=["ids-1d", "ids-0d", "ids-empty", "ids-float", "ids-list", "ids-beyond-vocabulary", "mask-shape", "too-long", "labels-above", "labels-negative",
         "labels-float", "labels-count", "images-3d", "images-int", "images-channels", "images-size", "image-labels"],
)
def test_batches_the_model_cannot_take_are_one_clear_error(model, data: list, match: str) -> None:
    with pytest.raises(ConfigError, match="data: batch 0: " + match if "cannot read" not in match else "data: " + match):
        compress(model(), "fisher_prune", 0.6, data)


def test_fisher_refuses_an_already_pruned_model_and_says_to_prune_the_dense_one() -> None:
    small, _ = compress(small_bert(), "fisher_prune", 0.6, text_batches(2))
    with pytest.raises(ConfigError, match=r"already structurally pruned \(layer 0 keeps \d of 4 heads.*prune the dense model once"):
        compress(small, "fisher_prune", 0.6, text_batches(2))
    quantized, _ = compress(small, "pwlq", bits=8, data=text_batches(2))  # quantizing a pruned model is fine
    assert quantized.encoder.heads_per_layer == small.encoder.heads_per_layer


# ---------------------------------------------------------------- one path with the CLI
def test_compress_prunes_as_a_cli_run_does(compose_cfg) -> None:
    """The CLI and compress() build, check and run the same method: on the run's dense model and sample set they keep the same units."""
    from trimlab.checkpoints import dense_checkpoint_path, load_checkpoint
    from trimlab.data import build_datamodule
    from trimlab.models.build import build_model
    from trimlab.run import run

    cfg = compose_cfg(
        "experiment=smoke", "model=vit_digits", "dataset=digits", "dataset.max_train_examples=128",
        "dataset.max_eval_examples=64", "method=fisher_prune", "budget=flops_60", "method.batch_size=16",
    )
    record = run(cfg)
    built = build_model(cfg.model, num_labels=cfg.dataset.num_labels)
    load_checkpoint(built.model, dense_checkpoint_path(cfg))
    samples = list(build_datamodule(cfg.dataset, built, cfg.seed).sample_dataloader(batch_size=16))
    pruned, report = compress(built.model, "fisher_prune", 0.6, samples)
    for key in ("heads_per_layer", "neurons_per_layer", "searched_heads_per_layer", "searched_neurons_per_layer"):
        assert report.stats[key] == record.compressed[key], key
    assert report.flops_ratio == pytest.approx(record.ratios["flops"], abs=0.02)


# ---------------------------------------------------------------- save_model / load_model of compress()'s results
def assert_reloads_identically(model: nn.Module, batches: list[dict[str, torch.Tensor]], folder) -> nn.Module:
    import trimlab

    trimlab.save_model(model, folder)
    rebuilt = trimlab.load_model(folder)
    for batch in batches:
        assert torch.equal(logits(rebuilt, batch), logits(model, batch))
    return rebuilt


@pytest.mark.parametrize(("method", "kwargs"), [("fisher_prune", {"budget": 0.5}), ("pwlq", {"bits": 4}), ("fisher_prune_pwlq", {"budget": 0.5, "bits": 4})])
def test_a_compressed_bert_saves_and_loads_to_identical_outputs(method: str, kwargs: dict, tmp_path) -> None:
    batches = text_batches(2)
    small, _ = compress(small_bert(), method, data=batches, options={"tune": False} if method == "fisher_prune" else None, **kwargs)
    rebuilt = assert_reloads_identically(small, batches, tmp_path / "small")
    assert rebuilt.encoder.heads_per_layer == small.encoder.heads_per_layer and not rebuilt.training
    if method != "fisher_prune":
        assert json.loads((tmp_path / "small" / "structure.json").read_text())["quantized"]  # stored as codes


@pytest.mark.parametrize(
    "make",
    [
        lambda: DistilBertForSequenceClassification(
            DistilBertConfig(vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=LENGTH, num_labels=3)
        ),
        lambda: MPNetForSequenceClassification(
            MPNetConfig(
                vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                max_position_embeddings=LENGTH + 2, num_labels=3,
            )
        ),
    ],
    ids=["distilbert", "mpnet"],
)
def test_other_families_save_and_load_to_identical_outputs(make, tmp_path) -> None:
    batches = text_batches(1, first_id=2)
    small, _ = compress(make().eval(), "fisher_prune", 0.6, batches, options={"tune": False})
    assert_reloads_identically(small, batches, tmp_path / "small")


def test_a_compressed_timm_vit_and_cnn_save_and_load_to_identical_outputs(tmp_path) -> None:
    batches = image_batches(1)
    vit, _ = compress(tiny_vit(), "fisher_prune", 0.6, batches, options={"tune": False})
    assert_reloads_identically(vit, batches, tmp_path / "vit")
    torch.manual_seed(0)
    cnn, _ = compress(timm.create_model("resnet10t", pretrained=False, num_classes=3).eval(), "pwlq", bits=4, data=batches)
    assert_reloads_identically(cnn, batches, tmp_path / "cnn")  # folded BatchNorm, bias correction


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a: a.update(kindz="text"), "names a part trimlab does not build.*kindz"),
        (lambda a: a.update(kind="pickle"), r"architecture.kind='pickle' is not one of text, vit"),
        (lambda a: a["encoder"].update(activation="os.system"), r"architecture.encoder.activation='os.system' is not one of"),
        (lambda a: a.update(num_labels="three"), "names a part trimlab does not build.*num_labels"),
    ],
    ids=["unknown-key", "kind", "activation", "type"],
)
def test_a_tampered_architecture_is_refused_before_anything_is_built(change, match: str, tmp_path) -> None:
    import trimlab

    small, _ = compress(small_bert(), "fisher_prune", 0.6, text_batches(1), options={"tune": False})
    trimlab.save_model(small, tmp_path)
    structure = json.loads((tmp_path / "structure.json").read_text())
    change(structure["architecture"])
    (tmp_path / "structure.json").write_text(json.dumps(structure))
    with pytest.raises(ConfigError, match=match):
        trimlab.load_model(tmp_path)


def test_save_model_refuses_a_model_trimlab_did_not_build(tmp_path) -> None:
    import trimlab

    with pytest.raises(ValueError, match="a BertForSequenceClassification is not a trimlab model; convert it"):
        trimlab.save_model(small_bert(), tmp_path / "m")


@pytest.mark.parametrize("fmt", ["onnx_float", "torchscript"])  # onnx (QDQ) is compared by prediction: tests/test_qdq_export.py
def test_a_saved_compress_result_exports_like_a_run(fmt: str, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    import trimlab
    from trimlab.export import main as export_main

    small, _ = compress(small_bert(), "fisher_prune_pwlq", 0.5, text_batches(1), bits=8, options={"prune": {"tune": False}})
    trimlab.save_model(small, tmp_path / "small")
    assert export_main([str(tmp_path / "small"), "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / f"small.{'pt' if fmt == 'torchscript' else 'onnx'}").is_file() and "input_ids" in out
    assert float(out.split("example batch: ")[1].split()[0]) <= 1e-4


def test_ltp_trains_through_compress_to_its_tokens_budget_and_saves(tmp_path) -> None:
    """LTP's soft stage, calibration and hard stage on the user's batches; the result keeps its learned thresholds."""
    torch.manual_seed(0)
    train, held_out = text_batches(3), text_batches(1)
    small, report = compress(small_bert(), "ltp", 0.85, train_data=train, eval_data=held_out, epochs=1, options={"calibration_examples": 16})
    assert report.budget == Budget("tokens", 0.85) and report.method == "ltp" and {"soft", "calibrate", "hard"} <= set(report.stages)
    assert report.stats["calibration_flops_ratio"] == pytest.approx(0.85, abs=0.02)  # on train_data's first 16 examples
    assert report.flops_ratio < 1.0 and report.params == report.dense_params + 2  # tokens dropped; + a threshold per layer
    selector = small.encoder.token_selector
    assert selector is not None and selector.hard and report.stats["thresholds"] == selector.thresholds().detach().tolist()
    rebuilt = assert_reloads_identically(small, held_out, tmp_path / "ltp")
    assert rebuilt.encoder.token_selector.hard
    assert selector.soft_masks == []  # no training graph outlives the soft stage: the result quantizes (a deep copy) in turn
    quantized, _ = compress(small, "uniform_ptq", bits=8, data=held_out, options={"act_bits": 8}, check_deployed=False)
    assert quantized.encoder.token_selector.hard


def test_a_seed_makes_training_through_compress_repeat_itself() -> None:
    """The same call with the same seed trains the same model, whatever the generators' state before it."""
    import copy

    torch.manual_seed(0)
    model, train, held_out = small_bert(), text_batches(2), text_batches(1)
    options = {"calibration_examples": 16}
    trained = []
    for draw in (1, 2):
        torch.manual_seed(draw)  # a different state before each call
        small, _ = compress(copy.deepcopy(model), "ltp", 0.85, train_data=train, eval_data=held_out, epochs=1, options=options, seed=3)
        trained.append(small.state_dict())
    assert trained[0].keys() == trained[1].keys() and all(torch.equal(trained[0][k], trained[1][k]) for k in trained[0])
    with pytest.raises(ConfigError, match="seed=-1"):
        compress(model, "ltp", 0.85, train_data=train, eval_data=held_out, seed=-1)
    with pytest.raises(ConfigError, match="seed: method=fisher_prune compresses without training"):
        compress(model, "fisher_prune", 0.6, data=train, seed=3)


def test_sait_trains_through_compress_to_its_flops_budget_and_saves(tmp_path) -> None:
    """SaiT's dense/sparse training on the user's images, then the density meeting the budget; the result keeps its selector."""
    torch.manual_seed(0)
    train, held_out = image_batches(2), image_batches(1)
    options = {"calibration_examples": 8, "eval_densities": ["dense", "0.5"]}
    small, report = compress(tiny_vit(), "sait", 0.7, train_data=train, eval_data=held_out, epochs=1, options=options)
    assert report.budget == Budget("flops", 0.7) and report.method == "sait" and {"train", "calibrate", "density_curve"} <= set(report.stages)
    assert [point["density"] for point in report.stats["densities"]] == ["dense", "0.5"]
    assert {point["latency_device"] for point in report.stats["densities"]} == {"cpu"}  # measure.device's default
    selector = small.encoder.token_selector
    assert 0.0 < selector.density < 1.0 and report.stats["density"] == selector.density and report.flops_ratio < 1.0
    rebuilt = assert_reloads_identically(small, held_out, tmp_path / "sait")
    assert rebuilt.encoder.token_selector.density == selector.density


def test_mait_fine_tunes_a_vit_with_its_masks_through_compress_and_saves(tmp_path) -> None:
    """A user's ViT is trained, so MaiT fine-tunes it with the masks (init=dense); the masks are kept on save."""
    from trimlab.methods.mait.masks import masked_heads_of

    torch.manual_seed(0)
    train, held_out = image_batches(2), image_batches(1)
    small, report = compress(tiny_vit(), "mait", train_data=train, eval_data=held_out, epochs=1)
    assert report.budget == Budget("none") and report.method == "mait" and report.stats["init"] == "dense"
    assert report.stats["masked_heads"] == masked_heads_of(small.encoder) and sum(report.stats["masked_heads"]) > 0
    rebuilt = assert_reloads_identically(small, held_out, tmp_path / "mait")
    assert masked_heads_of(rebuilt.encoder) == report.stats["masked_heads"]


def test_mait_from_scratch_needs_the_starting_weights_a_user_model_lacks() -> None:
    with pytest.raises(ConfigError, match="method.init=scratch retrains from random weights, but model=VisionTransformer loads given weights"):
        compress(tiny_vit(), "mait", train_data=image_batches(1), eval_data=image_batches(1), options={"init": "scratch"})
