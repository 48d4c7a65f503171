"""The kept model: a run's compressed model as ``weights.safetensors`` + ``structure.json``, and how to rebuild it.

The structure file holds what the weights alone cannot say: the model config
(so :func:`~trimlab.models.build.build_model` builds the skeleton) or, for a
model saved without one (``trimlab.save_model(model, folder)``), its
architecture read off the model (:mod:`trimlab.models.architecture`), the heads
and FFN neurons each layer kept, the token selector and its settings, which
layers carry a per-head attention bias, and for quantized layers their scheme,
bits and input (activation) quantizers. Quantized weights are stored as
integer codes bit-packed at their bits (``<layer>.weight.codes``, one uint8
row per bit plane) beside the per-row parameters that decode them, so the
file is as small as the quantization claims and the rebuilt model computes
with exactly the floats the quantized model computed with.

A folder is written under a temporary name and renamed, so a crash never
leaves half a model behind.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from trimlab.config import ConfigError, model_config_from_data
from trimlab.files import atomic_folder
from trimlab.methods.ltp.selectors import LearnedThresholds, TopKTokens
from trimlab.methods.pwlq.calibrate import InputQuantizer, install_input_quantizer
from trimlab.methods.pwlq.quantizer import SCHEMES, QuantizedWeight
from trimlab.methods.sait.selector import SaiTSelector
from trimlab.models.architecture import build_architecture, describe, read_architecture
from trimlab.models.build import build_model
from trimlab.models.classifier import TransformerClassifier
from trimlab.models.encoder import Encoder
from trimlab.plugins import PluginError, load_plugins
from trimlab.results.record import RECORD_FILE
from trimlab.results.run_folder import completed_folder

log = logging.getLogger(__name__)

MODEL_DIR = "model"
"""The kept model's folder in a run folder, and its key in ``record.artifacts``."""
WEIGHTS_FILE = "weights.safetensors"
STRUCTURE_FILE = "structure.json"
FORMAT = 1
DEFAULT_RUNS = Path("outputs") / "runs"


@dataclass(frozen=True)
class SavedModel:
    """Where a model was saved, its size on disk, and whether any weight is stored as codes."""

    path: Path
    size_bytes: int
    quantized: bool

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 2**20


def save_model(
    model: nn.Module, folder: str | Path, model_cfg: DictConfig | dict[str, Any] | None = None, num_labels: int | None = None
) -> SavedModel:
    """Save ``model`` into ``folder`` (replaced whole) so that :func:`load_model` rebuilds it.

    A run passes its ``model_cfg`` and ``num_labels`` (the model is rebuilt from
    that config). Without them ``model`` is any model ``trimlab.compress`` returns
    (or another trimlab model): its architecture is read off the model itself
    (:mod:`trimlab.models.architecture`), so the folder rebuilds it with no
    config and no external weights.
    """
    folder = Path(folder)
    if (model_cfg is None) != (num_labels is None):
        raise ValueError("save_model: give model_cfg and num_labels together (a run's), or neither")
    tensors = {name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
    if model_cfg is None:
        structure: dict[str, Any] = {"format": FORMAT, "architecture": describe(model)}
    else:
        cfg = OmegaConf.to_container(model_cfg, resolve=True) if isinstance(model_cfg, DictConfig) else dict(model_cfg)
        structure = {"format": FORMAT, "model": cfg, "num_labels": num_labels}
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, Encoder):
        structure.update(_encoder_structure(encoder, tensors))
    structure["quantized"], structure["input_quantizers"] = _quantization(model, tensors)
    with atomic_folder(folder) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": str(FORMAT)})
        (tmp / STRUCTURE_FILE).write_text(json.dumps(structure, indent=1))
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    return SavedModel(folder, size, bool(structure["quantized"]))


def load_model(run: str | Path, runs: str | Path | None = None) -> nn.Module:
    """The compressed model of a run, or one :func:`save_model` saved, rebuilt on the CPU in eval mode.

    ``run`` is a run folder (holding ``record.json`` and ``model/``), a model
    folder itself (a run's ``model/`` or ``save_model``'s folder), or a run id
    looked up under ``runs`` (default ``outputs/runs``).
    A run folder whose record does not say ``completed`` is refused.
    """
    return read_model(model_folder(run, runs))


def read_model(folder: Path) -> nn.Module:
    """Rebuild the model saved in ``folder``; a missing or corrupt folder is a :class:`ConfigError` naming it."""
    folder = Path(folder)
    reading = folder / STRUCTURE_FILE
    try:
        structure = json.loads(reading.read_text())
        if structure.get("format") != FORMAT:
            raise ValueError(f"format {structure.get('format')!r}, this trimlab reads {FORMAT}")
        if "architecture" in structure:  # saved by save_model(model, folder): no model config
            model_cfg, architecture = None, read_architecture(structure["architecture"])
        else:
            model_cfg, num_labels = model_config_from_data(structure.get("model")), int(structure["num_labels"])
        check_part_names(structure)
        reading = folder / WEIGHTS_FILE
        tensors = load_file(str(reading), device="cpu")
    except ConfigError as err:
        raise ConfigError(f"{reading} names a part trimlab does not build, so nothing was built: {err}") from err
    except (OSError, ValueError, KeyError, TypeError, AttributeError, OmegaConfBaseException, SafetensorError) as err:
        raise ConfigError(
            f"{reading} is not a readable trimlab model file ({(str(err).splitlines() or [type(err).__name__])[0][:200]}); "
            "rerun its run with force=true to save the model again"
        ) from err
    try:  # structure.json is data: any value in it may be of the wrong type or size
        model = build_architecture(architecture) if model_cfg is None else build_model(model_cfg, num_labels=num_labels).model
        if isinstance(model, TransformerClassifier) and "heads" in structure:
            _rebuild_encoder(model.encoder, structure, tensors)
        _dequantize(model, structure, tensors)
        _add_missing_biases(model, tensors)
        model.load_state_dict(tensors, strict=True)
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError, IndexError, OmegaConfBaseException) as err:
        raise ConfigError(
            f"{folder} does not fit {_model_name(model_cfg, structure)} ({(str(err).splitlines() or [type(err).__name__])[0][:300]}); "
            "the file is corrupt or was saved by another trimlab version: rerun its run with force=true (or save it again)"
        ) from err
    return model.eval()


@dataclass(frozen=True)
class SelectorForm:
    """How one token selector class is kept in ``structure.json``, under a registry key (``token_selector.kind``).

    trimlab's own selectors have theirs here; a plugin registers one under the entry-point
    group ``trimlab.selectors`` (the entry point's name is the key, its object a ``SelectorForm``).
    """

    selector: type
    """The class stored this way (its exact type: a subclass registers its own form)."""
    to_structure: Callable[[Any], dict[str, Any]]
    """The selector's settings as JSON values (its parameters and buffers are in the state dict)."""
    from_structure: Callable[[dict[str, Any]], Any]
    """The selector those settings describe (they come from a file: check what they must be)."""


def _thresholds_structure(selector: LearnedThresholds) -> dict[str, Any]:
    return {"num_layers": len(selector.offsets), "temperature": selector.temperature, "score_length": selector.score_length, "hard": selector.hard}


def _thresholds(spec: dict[str, Any]) -> LearnedThresholds:
    selector = LearnedThresholds(spec["num_layers"], temperature=spec["temperature"], score_length=spec["score_length"])
    selector.hard = spec["hard"]
    return selector


def _sait_structure(selector: SaiTSelector) -> dict[str, Any]:
    keys = ("prune_layers", "mode", "package", "num_protected", "density")
    return {key: getattr(selector, key) for key in keys}


def _sait(spec: dict[str, Any]) -> SaiTSelector:
    selector = SaiTSelector(spec["prune_layers"], spec["mode"], spec["package"], spec["num_protected"])
    selector.density = spec["density"]
    return selector


BUILTIN_SELECTORS = {
    "thresholds": SelectorForm(LearnedThresholds, _thresholds_structure, _thresholds),
    "topk": SelectorForm(TopKTokens, lambda s: {"keep_rates": list(s.keep_rates)}, lambda spec: TopKTokens(spec["keep_rates"])),
    "sait": SelectorForm(SaiTSelector, _sait_structure, _sait),
}
"""trimlab's own token selectors' forms, by key."""


@functools.cache
def selector_forms() -> dict[str, SelectorForm]:
    """Every token selector a structure file may name, by key: trimlab's own, then those of plugins (loaded once;
    a plugin whose key or class is taken is skipped, see :mod:`trimlab.plugins`)."""
    forms = dict(BUILTIN_SELECTORS)

    def register(ep: EntryPoint, loaded: object) -> None:
        if not isinstance(loaded, SelectorForm):
            raise PluginError(f"{ep.value} is a {type(loaded).__name__}, not a trimlab.saved_model.SelectorForm")
        if ep.name in forms or any(form.selector is loaded.selector for form in forms.values()):
            raise PluginError(f"its key {ep.name} or its class {loaded.selector.__name__} is registered already")
        forms[ep.name] = loaded

    load_plugins("trimlab.selectors", register)
    return forms


def _model_name(model_cfg: DictConfig | None, structure: dict[str, Any]) -> str:
    """What the folder says it holds, for error messages."""
    if model_cfg is not None:
        return f"model={model_cfg.get('name')}"
    return f"its architecture ({structure['architecture'].get('kind')})"


def check_part_names(structure: dict[str, Any]) -> None:
    """Every part a structure file names is a registered one (its model config is checked by its schema): the file
    is data, so it names parts by registry key, and nothing it says picks code outside the registries."""
    selector = structure.get("token_selector")
    if selector is not None and (not isinstance(selector, dict) or selector.get("kind") not in selector_forms()):
        kind = selector.get("kind") if isinstance(selector, dict) else selector
        raise ConfigError(
            f"token_selector.kind={kind!r} is not one of {', '.join(selector_forms())} "
            "(a plugin's selector needs its package installed)"
        )
    quantized = structure.get("quantized", {})
    if not isinstance(quantized, dict):
        raise ConfigError("`quantized` is not a mapping of layer names")
    for layer, spec in quantized.items():
        scheme = spec.get("scheme") if isinstance(spec, dict) else spec
        if scheme not in SCHEMES:
            raise ConfigError(f"quantized.{layer}.scheme={scheme!r} is not one of {', '.join(SCHEMES)}")


def model_folder(run: str | Path, runs: str | Path | None = None) -> Path:
    """The ``model/`` folder of a run folder, of a run id under ``runs`` (default ``outputs/runs``), or ``run`` itself if it is one."""
    path = Path(run)
    if (path / STRUCTURE_FILE).exists():
        if (path.parent / RECORD_FILE).exists():  # a run folder's model/: only as good as its record says
            completed_folder(path.parent)
        return path
    if not path.is_dir():
        root = Path(runs) if runs is not None else DEFAULT_RUNS
        if not (root / str(run)).is_dir():
            raise ConfigError(
                f"no run {str(run)!r}: neither a folder nor a run id under {root}; pass the run folder, or runs=<the runs folder>"
            )
        path = root / str(run)
    if not (path / RECORD_FILE).exists():
        raise ConfigError(f"{path} is not a run folder (no {RECORD_FILE}); pass a folder under <output_dir>/runs")
    completed_folder(path)
    if not (path / MODEL_DIR).is_dir():
        raise ConfigError(
            f"{path} has no saved model ({path / MODEL_DIR} is missing): the run did not complete, or an older trimlab ran it; "
            "rerun it with force=true"
        )
    return path / MODEL_DIR


def _encoder_structure(encoder: Encoder, tensors: dict[str, Tensor]) -> dict[str, Any]:
    """Kept heads (input indices) and neuron counts per layer, the token selector, and the per-head biases and
    logit masks (into ``tensors``)."""
    biased, masked = [], []
    for i, block in enumerate(encoder.layers):
        if block.attn.head_bias is not None:
            tensors[f"encoder.layers.{i}.attn.head_bias"] = block.attn.head_bias.detach().cpu().contiguous()
            biased.append(i)
        if block.attn.head_logit_mask is not None:
            tensors[f"encoder.layers.{i}.attn.head_logit_mask"] = block.attn.head_logit_mask.cpu().contiguous()
            masked.append(i)
    return {
        "heads": [block.attn.head_index.tolist() for block in encoder.layers],
        "neurons": encoder.neurons_per_layer,
        "head_bias_layers": biased,
        "head_logit_mask_layers": masked,
        "token_selector": _selector_structure(encoder.token_selector),
    }


def _selector_structure(selector: Any) -> dict[str, Any] | None:
    if selector is None:
        return None
    for kind, form in selector_forms().items():
        if type(selector) is form.selector:
            return {"kind": kind, **form.to_structure(selector)}
    raise TypeError(
        f"the token selector {type(selector).__name__} has no stored form; register a trimlab.saved_model.SelectorForm "
        "for it under the entry-point group trimlab.selectors"
    )


def _build_selector(spec: dict[str, Any] | None) -> Any:
    if spec is None:
        return None
    form = selector_forms()[spec["kind"]]  # check_part_names let no other kind through
    return form.from_structure({key: value for key, value in spec.items() if key != "kind"})


def _rebuild_encoder(encoder: Encoder, structure: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    """Prune the fresh encoder to the saved shape, then put back its per-head biases, logit masks and token selector."""
    encoder.prune(structure["heads"], [range(n) for n in structure["neurons"]])
    for i in structure["head_bias_layers"]:
        encoder.layers[i].attn.set_head_bias(tensors.pop(f"encoder.layers.{i}.attn.head_bias"))
    for i in structure.get("head_logit_mask_layers", []):  # absent in models saved before logit masks existed
        encoder.layers[i].attn.set_head_logit_mask(tensors.pop(f"encoder.layers.{i}.attn.head_logit_mask"))
    encoder.token_selector = _build_selector(structure["token_selector"])


def _quantization(model: nn.Module, tensors: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Swap each quantized layer's float weight in ``tensors`` for its packed codes and decoding parameters.

    A layer whose weight changed after quantization (a later training step)
    no longer equals its codes; it is stored in float, with a warning.
    """
    quantized: dict[str, Any] = {}
    inputs: dict[str, list[float]] = {}
    for name, module in model.named_modules():
        q: QuantizedWeight | None = getattr(module, "quantized_weight", None)
        weight = tensors.get(f"{name}.weight")  # a 16-bit model's weight is its codes' values in its dtype
        if q is not None and weight is not None and torch.equal(q.dequantize().cpu().to(weight.dtype), weight):
            del tensors[f"{name}.weight"]
            tensors[f"{name}.weight.codes"] = pack_bits(q.codes.cpu(), q.code_bits)
            for key, value in q.params.items():
                tensors[f"{name}.weight.{key}"] = value.detach().cpu().contiguous()
            rows = q.codes.shape[0]
            quantized[name] = {"scheme": q.scheme, "bits": q.bits, "code_bits": q.code_bits, "shape": list(q.shape), "rows": rows}
        elif q is not None:
            log.warning("%s changed after it was quantized; its weight is stored in float", name)
        act: InputQuantizer | None = getattr(module, "input_quantizer", None)
        if act is not None:
            inputs[name] = [act.low, act.high, act.bits]
    return quantized, inputs


def _dequantize(model: nn.Module, structure: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    """Decode each quantized layer's codes into ``tensors``; keep the codes and reinstall its input quantizer on the layer."""
    modules = dict(model.named_modules())
    for name, spec in structure["quantized"].items():
        prefix = f"{name}.weight."
        params = {key[len(prefix) :]: tensors.pop(key) for key in [k for k in tensors if k.startswith(prefix)]}
        shape = tuple(spec["shape"])
        codes = unpack_bits(params.pop("codes"), spec["code_bits"], math.prod(shape)).view(spec["rows"], -1)
        q = QuantizedWeight(spec["scheme"], spec["bits"], shape, codes, params)
        tensors[f"{name}.weight"] = q.dequantize()
        modules[name].quantized_weight = q
    for name, (low, high, bits) in structure["input_quantizers"].items():
        install_input_quantizer(modules[name], InputQuantizer(low, high, int(bits)))


def _add_missing_biases(model: nn.Module, tensors: dict[str, Tensor]) -> None:
    """Give a layer the bias quantization or BatchNorm folding added to it (the fresh skeleton has none)."""
    modules = dict(model.named_modules())
    for key in tensors:
        name, _, attr = key.rpartition(".")
        module = modules.get(name)
        if attr == "bias" and isinstance(module, (nn.Linear, nn.Conv2d)) and module.bias is None:
            module.bias = nn.Parameter(torch.zeros_like(tensors[key]))


def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Unsigned codes (any shape) as ``[bits, ceil(n / 8)]`` uint8: bit plane b holds bit b of every code, 8 codes a byte."""
    flat = codes.reshape(-1).to(torch.int32)
    pad = (-flat.numel()) % 8
    planes = torch.stack([(flat >> b) & 1 for b in range(bits)]).to(torch.uint8)
    planes = nn.functional.pad(planes, (0, pad)).view(bits, -1, 8)
    weights = (1 << torch.arange(8, dtype=torch.int32)).to(torch.uint8)
    return (planes * weights).sum(dim=-1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, bits: int, count: int) -> Tensor:
    """The ``count`` codes (int64) that :func:`pack_bits` packed."""
    if packed.shape[0] != bits or packed.shape[1] * 8 < count:
        raise ValueError(f"packed codes of shape {tuple(packed.shape)} do not hold {count} codes of {bits} bits")
    planes = ((packed[..., None] >> torch.arange(8, dtype=torch.uint8)) & 1).reshape(bits, -1)[:, :count]
    codes = torch.zeros(count, dtype=torch.int64)
    for b in range(bits):
        codes |= planes[b].to(torch.int64) << b
    return codes
