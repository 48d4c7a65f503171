"""The quantized model as a user deploys it: an integer engine's test predictions checked against the simulated model's.

trimlab's quantizers simulate quantization in float; what a user ships runs
integer matrix multiplies on the same codes and scales. A quantized run builds
that deployed model, predicts the test set with it and records its metric and
the share of examples whose prediction differs from the simulated model's;
more than :data:`DISAGREEMENT_LIMIT` fails the run (:class:`DeployedDisagreement`),
because then the simulated accuracy is not what the user would get.
``trimlab.compress`` runs the same check (:func:`measure_deployed`) on the user's batches.

The engine follows the weights:

- PWLQ weights of ≤ 8 bits with inputs of ≤ 8 bits: every Linear as two integer
  GEMMs in PyTorch (:func:`~trimlab.methods.pwlq.integer.two_branch_model`),
  engine ``torch_two_branch``;
- uniform symmetric weights of ≤ 8 bits with 8-bit inputs: the QDQ ONNX graph
  ``trimlab-export --format onnx`` writes, in ONNX Runtime, engine
  ``onnxruntime_qdq``. Without onnxruntime installed there is none: PyTorch has
  no integer kernel for these calibrated static scales (its dynamic int8 path,
  ``metric_int8_kernel``, re-rounds the weights and ranges the inputs itself).

Any other model has no deployed form (engine ``none``, with the reason, and
the run goes on): wider weights or inputs, float inputs, asymmetric or
bias-corrected uniform weights, a quantized Conv2d (neither engine takes one:
a CNN, a ViT's patch embedding), a model that is not float32, or an export
the ONNX exporter cannot trace.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from trimlab.engine import first_examples, placed_on
from trimlab.methods.pwlq.integer import default_kernel, two_branch_model
from trimlab.models.placement import model_dtype
from trimlab.training import task_metric

DISAGREEMENT_LIMIT = 0.01
"""The largest share of test examples on which the deployed and the simulated model may predict different classes."""
NO_ENGINE = "none"

Predict = Callable[[Mapping[str, Tensor]], Tensor]
"""A batch (labels ignored) → its logits."""


class DeployedDisagreement(RuntimeError):
    """The deployed model predicts other classes than the simulated one on more than :data:`DISAGREEMENT_LIMIT` of the test set."""


@dataclass
class DeployedModel:
    """How a quantized model runs deployed: its engine and predictor, or engine ``none`` and why."""

    engine: str
    predict: Predict | None = None
    reason: str = ""


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers of ``model`` that carry quantized weights, by module name."""
    return {name: m for name, m in model.named_modules() if getattr(m, "quantized_weight", None) is not None}


def deployed_model(model: nn.Module, example_batch: Mapping[str, Tensor], workdir: Path) -> DeployedModel | None:
    """``model`` (quantized, on the CPU) on its integer engine; None when nothing in it is quantized.

    ``example_batch`` is what an ONNX export traces; ``workdir``, an empty folder, holds the exported file
    while the predictor lives.
    """
    layers = quantized_layers(model)
    if not layers:
        return None
    refusal = _refusal(model, layers)
    if refusal is not None:
        return DeployedModel(NO_ENGINE, reason=refusal)
    if all(m.quantized_weight.scheme == "pwlq" for m in layers.values()):
        refusal = _two_branch_refusal(layers)
        if refusal is not None:
            return DeployedModel(NO_ENGINE, reason=refusal)
        integer = two_branch_model(model)
        return DeployedModel(f"torch_two_branch_{default_kernel()}", _torch_predictor(integer))
    return _onnxruntime_qdq(model, example_batch, workdir)


def measure_deployed(
    model: nn.Module,
    loader: Iterable[Mapping[str, Tensor]],
    metric: str,
    num_labels: int,
    targets: np.ndarray | None = None,
    simulated: np.ndarray | None = None,
) -> dict[str, object]:
    """The ``deployed_*`` entries of ``model`` on ``loader``'s examples, measured on the CPU; empty when nothing in it is quantized.

    Entries: engine (and reason when none), metric on ``targets`` (their labels; none without), disagreement
    with ``simulated`` (the model's own predictions, in loader order; predicted here, on the CPU, without).
    Disagreement needs classes: a one-label (regression) model has none; ``num_labels`` 0 (the weights' own
    head, e.g. 1,000 ImageNet classes) has as many as its logits. ``loader`` is read more than once
    (a DataLoader or a list of CPU batches); its first examples are what an ONNX export traces.
    """
    with tempfile.TemporaryDirectory(prefix="trimlab-deployed-") as workdir, placed_on(torch.device("cpu"), model):
        deployed = deployed_model(model, first_examples(loader, 8), Path(workdir))
        if deployed is None:
            return {}
        if deployed.predict is None:
            return {"deployed_engine": deployed.engine, "deployed_reason": deployed.reason}
        if simulated is None:
            simulated = deployed_predictions(_torch_predictor(model), loader, num_labels)
        preds = deployed_predictions(deployed.predict, loader, num_labels, len(simulated))
    entries: dict[str, object] = {"deployed_engine": deployed.engine}
    if targets is not None:
        score = task_metric(metric, num_labels)
        score.update(torch.from_numpy(preds), torch.from_numpy(targets))
        entries["deployed_metric"] = float(score.compute())
    if num_labels != 1:
        entries["deployed_disagreement"] = float(np.mean(preds != simulated))
    return entries


def deployed_predictions(predict: Predict, loader: Iterable[Mapping[str, Tensor]], num_labels: int, count: int | None = None) -> np.ndarray:
    """The predictions (class ids; values for one label) of the loader's first ``count`` examples (all without), in loader order."""
    parts: list[Tensor] = []
    seen = 0
    for batch in loader:
        if count is not None and seen >= count:
            break
        logits = predict(batch)
        parts.append(logits.squeeze(-1).float() if num_labels == 1 else logits.argmax(-1))
        seen += len(logits)
    return torch.cat(parts)[:count].numpy()


def check_disagreement(entries: Mapping[str, object], examples: int, skip: str = "measure.deployed=false", data: str = "test") -> None:
    """Raise :class:`DeployedDisagreement` when the recorded disagreement is over :data:`DISAGREEMENT_LIMIT`.

    ``skip`` names the setting that turns the check off; ``data``, the examples it predicted.
    """
    share = entries.get("deployed_disagreement")
    if share is None or float(share) <= DISAGREEMENT_LIMIT:  # type: ignore[arg-type]
        return
    raise DeployedDisagreement(
        f"the deployed model (engine {entries['deployed_engine']}) predicts another class than the simulated model "
        f"on {float(share):.2%} of {examples} {data} examples, over the {DISAGREEMENT_LIMIT:.0%} limit: the simulated "
        f"metric is not what this model gives deployed ({skip} skips this check)"
    )


def _refusal(model: nn.Module, layers: Mapping[str, nn.Module]) -> str | None:
    """Why no integer engine takes ``model``, whatever its weights (None when one may)."""
    dtype = model_dtype(model)
    if dtype != torch.float32:
        return f"the integer engines take float32 models, this one is {str(dtype).removeprefix('torch.')}"
    for name, layer in layers.items():
        if not isinstance(layer, nn.Linear):
            return (
                f"layer {name} is a quantized {type(layer).__name__}: the integer engines (QDQ ONNX, "
                "two-branch PWLQ) take Linear layers only"
            )
    schemes = sorted({m.quantized_weight.scheme for m in layers.values()})
    if len(schemes) > 1:
        return f"the model mixes {' and '.join(schemes)} weights: each engine takes one scheme"
    return None


def _two_branch_refusal(layers: Mapping[str, nn.Module]) -> str | None:
    """Why the PWLQ layers have no two-branch integer form (None when they all have one)."""
    for name, layer in layers.items():
        act = getattr(layer, "input_quantizer", None)
        if layer.quantized_weight.bits > 8:
            return f"layer {name} has {layer.quantized_weight.bits}-bit weights: int8 GEMMs hold at most 8 bits"
        if act is None or act.bits > 8:
            bits = "full-precision" if act is None else f"{act.bits}-bit"
            return f"layer {name} has {bits} inputs: integer GEMMs need inputs of at most 8 bits (method.act_bits ≤ 8)"
    return None


def _onnxruntime_qdq(model: nn.Module, example_batch: Mapping[str, Tensor], workdir: Path) -> DeployedModel:
    """The QDQ ONNX graph of ``model`` in ONNX Runtime, or engine ``none`` and why."""
    from trimlab.export import EXPORT_EXTRA, export_model
    from trimlab.qdq import qdq_refusal

    refusal = qdq_refusal(model)
    if refusal is not None:
        return DeployedModel(NO_ENGINE, reason=refusal)
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        return DeployedModel(NO_ENGINE, reason=f"uniform int8 weights deploy as a QDQ ONNX graph, which needs {EXPORT_EXTRA}")
    path = workdir / "model.onnx"
    try:
        export_model(model, example_batch, path, "onnx")
    except Exception as err:  # an architecture the exporter cannot trace is a limit of the engine, not of the run
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return DeployedModel(NO_ENGINE, reason=f"the QDQ ONNX export failed: {first_line}")
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def predict(batch: Mapping[str, Tensor]) -> Tensor:
        return torch.from_numpy(session.run(["logits"], {name: batch[name].numpy() for name in names})[0])

    return DeployedModel("onnxruntime_qdq", predict)


def _torch_predictor(model: nn.Module) -> Predict:
    def predict(batch: Mapping[str, Tensor]) -> Tensor:
        with torch.no_grad():
            return model({k: v for k, v in batch.items() if k != "labels"}).logits

    return predict
