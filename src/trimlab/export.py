"""``trimlab-export``: a kept model as an ONNX or TorchScript file that runs without trimlab.

Both formats are captured by tracing the model on an example batch, so what
the model decides from its data with Python control flow is frozen at the
example's values. The export sets the model up so that no such decision can
differ between inputs:

- the encoder runs its padded layout (``encoder.packed = False``): the packed
  layout's row counts are Python ints read from the data;
- a text example always holds padding, so the key mask that padding needs is
  in the graph (the encoder skips it for a batch without padding);
- a token-pruned model (``encoder.token_selector`` set) masks the tokens its
  selector drops out of later attention instead of removing them
  (``drop_tokens=False``): same logits, shapes independent of the data, but
  the exported graph computes every token, so it has none of the token
  pruning's speedup;
- or, with ``gather_tokens`` (``--gather-tokens``), the token-pruned model's
  graph for one example at a time: after each selecting layer it gathers the
  kept tokens (NonZero, Gather), so later layers run on fewer tokens, as many
  as each input keeps; a second output ``kept_tokens`` ``[1, layers]`` says
  how many. The batch size is fixed at 1: gathering a batch to its largest
  kept count would read that count as a Python int, which tracing freezes.

Dense and structurally pruned models export as they compute (a pruned model
with its smaller Linear weights). A quantized model's ONNX export (``onnx``)
is a QDQ graph (:mod:`trimlab.qdq`): its quantized Linear layers take
QuantizeLinear/DequantizeLinear pairs with trimlab's calibrated input scales
and its int8 weight codes (PWLQ's as two branches), which ONNX Runtime runs as integer MatMuls;
a model with no exact int8 form (weights over 8 bits, inputs not 8-bit) is refused,
and ``onnx_float`` writes the simulation instead: dequantized float weights and
activation fake quantization as plain float operations. ONNX uses torch's TorchScript-based exporter: the torch.export-based
one cannot capture the encoder's padding check (``bool(valid.all())``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from trimlab.config import ConfigError, model_kind
from trimlab.qdq import qdq_model, qdq_refusal, quantized_linears, store_integer_weights
from trimlab.results.record import RECORD_FILE

FORMATS = ("onnx", "onnx_float", "torchscript")
SUFFIXES = {"onnx": ".onnx", "onnx_float": ".onnx", "torchscript": ".pt"}
ONNX_OPSET = 17
EXPORT_EXTRA = "pip install 'trimlab[export]'"
IMAGE_KEY = "pixel_values"
EXIT_CODES = (
    "exit codes:\n"
    "  0    written, and its logits checked against the PyTorch model\n"
    "  1    the exporter failed on this model (one line says why)\n"
    "  2    a usage or input error: no such run, an unreadable saved model, an --output that contradicts\n"
    "       --format, would overwrite the run's own files or cannot be written, a missing export package\n"
    "  130  interrupted (Ctrl+C; 128 + the signal's number)"
)


class LogitsGraph(nn.Module):
    """The model as a function of plain tensors (in ``names`` order) to logits, which exporters can trace."""

    def __init__(self, model: nn.Module, names: Sequence[str], mask_dropped_tokens: bool, gather_tokens: bool = False) -> None:
        super().__init__()
        self.model = model
        self.names = list(names)
        self.mask_dropped_tokens = mask_dropped_tokens
        self.gather_tokens = gather_tokens

    def forward(self, *tensors: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        batch = dict(zip(self.names, tensors, strict=True))
        if self.mask_dropped_tokens:
            return self.model(batch, drop_tokens=False).logits
        out = self.model(batch)
        if self.gather_tokens:
            return out.logits, torch.stack(out.encoder.kept_tokens, dim=1)
        return out.logits


def export_model(
    model: nn.Module, example_batch: Mapping[str, Tensor], path: Path, fmt: str, gather_tokens: bool = False, int8_weights: bool = False
) -> Path:
    """Write ``model`` (a trimlab classifier) as ``fmt`` (``onnx``, ``onnx_float`` or ``torchscript``) to ``path``.

    ``onnx`` writes a quantized model's Linear layers as QDQ (:mod:`trimlab.qdq`)
    and raises ValueError, with the reason, for one that has no exact int8 form;
    ``onnx_float`` writes every model as its float computation. The file takes the example batch's tensors (labels left out) in its key
    order, with a dynamic batch size and, for text, a dynamic sequence length,
    and returns the logits. With ``gather_tokens`` (a token-pruned model only)
    it takes one example (the example batch's first) and removes the dropped
    tokens; it also returns ``kept_tokens``. ``int8_weights``: a QDQ graph's weight codes
    as int8, not uint8 — ONNX Runtime's fast kernel on CPUs with VNNI, saturating on
    those without (:mod:`trimlab.qdq`). Check the result with :func:`max_logit_difference`.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if gather_tokens and getattr(getattr(model, "encoder", None), "token_selector", None) is None:
        raise ValueError("gathering kept tokens needs a token-pruned model (LTP, SaiT); export this one without it")
    qdq = fmt == "onnx" and bool(quantized_linears(model))
    if int8_weights and not qdq:
        raise ValueError("int8 weights: only a quantized model's onnx (QDQ) export has integer weights; leave the option out")
    path = Path(path)
    codes: dict[str, Tensor] = {}
    if qdq:
        refusal = qdq_refusal(model)
        if refusal is not None:
            raise ValueError(f"no QDQ export: {refusal}; --format onnx_float writes the simulated float graph")
        model, layer_codes = qdq_model(model, int8_weights)
        codes = {f"model.{name}.weight_t": value for name, value in layer_codes.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs = {k: v[:1] if gather_tokens else v for k, v in example_batch.items() if k != "labels"}
    inputs = _with_padding(model, inputs)
    with _traceable(model, list(inputs), gather_tokens) as graph, _quiet_tracing(), torch.no_grad():
        _check_selection_is_traced(graph, inputs)
        args = tuple(inputs.values())
        if fmt != "torchscript":
            _optional("onnx", "writing ONNX")  # torch's exporter imports it deep inside, with a less helpful message
            axes = _dynamic_axes(inputs, batch=not gather_tokens)
            torch.onnx.export(
                graph,
                args,
                str(path),
                dynamo=False,
                input_names=list(inputs),
                output_names=["logits", "kept_tokens"] if gather_tokens else ["logits"],
                dynamic_axes=axes if gather_tokens else {**axes, "logits": {0: "batch"}},
                opset_version=ONNX_OPSET,
            )
        else:
            torch.jit.save(torch.jit.trace(graph, args, check_trace=False), str(path))
    if codes:
        store_integer_weights(path, codes)
    return path


def exported_logits(path: Path, batch: Mapping[str, Tensor]) -> Tensor:
    """The exported file's logits on ``batch`` (labels left out).

    A ``.onnx`` file runs in onnxruntime (``trimlab[export]``), any other in
    ``torch.jit.load``, which takes the tensors in the export's key order.
    """
    path = Path(path)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if path.suffix == ".onnx":
        onnxruntime = _optional("onnxruntime", "running an ONNX file")
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
        return torch.from_numpy(session.run(["logits"], feed)[0])
    with _quiet_tracing(), torch.no_grad():
        exported = torch.jit.load(str(path))(*inputs.values())
    return exported[0] if isinstance(exported, tuple) else exported  # a gathering export's logits and kept tokens


def model_logits(model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    """``model``'s logits as it runs in trimlab (eval mode, tokens really dropped); its mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model({k: v for k, v in batch.items() if k != "labels"}).logits
    finally:
        model.train(was_training)


def max_logit_difference(path: Path, model: nn.Module, batch: Mapping[str, Tensor]) -> float:
    """Largest absolute difference between the exported file's logits and ``model``'s on ``batch``.

    The model runs as it does in trimlab, so this also checks that the
    export's masking of dropped tokens is exact.
    """
    return float((exported_logits(path, batch) - model_logits(model, batch)).abs().max())


def prediction_agreement(path: Path, model: nn.Module, batch: Mapping[str, Tensor]) -> float:
    """Share of ``batch``'s examples on which the exported file and ``model`` predict the same class.

    A QDQ export rounds where the simulation rounds, but in another order of
    float operations: an input on a rounding boundary may land one step away,
    so its logits differ slightly; the predictions are what must agree.
    """
    return float((exported_logits(path, batch).argmax(-1) == model_logits(model, batch).argmax(-1)).float().mean())


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Silence what tracing says about every export: the exporters' deprecation, and a warning wherever
    Python reads a tensor (the export's setup makes each of those reads the same for every input)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+.* is deprecated", category=FutureWarning)
        yield


def _optional(module: str, purpose: str) -> Any:
    """Import a package of the ``export`` extra, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{purpose} needs the {module} package: {EXPORT_EXTRA}") from err


@contextlib.contextmanager
def _traceable(model: nn.Module, names: Sequence[str], gather_tokens: bool = False) -> Iterator[LogitsGraph]:
    """``model`` in eval mode on the padded layout, wrapped as a :class:`LogitsGraph`; restored on exit.

    A token-pruned model masks its dropped tokens, unless it ``gather_tokens`` (one example: the padded layout removes them by index ops).
    """
    encoder = getattr(model, "encoder", None)
    packed = getattr(encoder, "packed", None)
    was_training = model.training
    model.eval()
    if packed is not None:
        encoder.packed = False
    try:
        selects = getattr(encoder, "token_selector", None) is not None
        yield LogitsGraph(model, names, mask_dropped_tokens=selects and not gather_tokens, gather_tokens=gather_tokens)
    finally:
        model.train(was_training)
        if packed is not None:
            encoder.packed = packed


def _with_padding(model: nn.Module, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """A text batch with at least one padded position: one pad column is appended to a batch without any.

    Padding leaves the real tokens' outputs unchanged; it only makes the traced
    graph carry the key mask that inputs with padding need.
    """
    mask = inputs.get("attention_mask")
    if mask is None or not bool(mask.all()):
        return inputs
    pad_id = getattr(getattr(model, "embeddings", None), "pad_token_id", 0)
    return {
        key: torch.cat([value, value.new_full((value.shape[0], 1), pad_id if key == "input_ids" else 0)], dim=1)
        if value.ndim == 2 and key != IMAGE_KEY
        else value
        for key, value in inputs.items()
    }


def _check_selection_is_traced(graph: LogitsGraph, inputs: dict[str, Tensor]) -> None:
    """Refuse a token-pruned model whose example keeps every token at the selector's first layer.

    The encoder builds the key mask only when some token is masked; a trace of
    an example that masks none would never mask a token for any input.
    """
    if not graph.mask_dropped_tokens:
        return
    encoder = graph.model.encoder
    selector = encoder.token_selector
    layers = [i for i in range(len(encoder.layers)) if selector.selects_at(i)]
    if not layers:
        return
    out = graph.model(inputs, drop_tokens=False, output_hidden_states=True).encoder
    first = layers[0]
    if bool((out.kept_tokens[first] == out.hidden_states[first].shape[1]).all()):
        raise ValueError(
            f"the token selector ({type(selector).__name__}) drops no token of the example batch at layer {first}: "
            "the traced graph would keep every token for every input. Export with an example batch on which it "
            "drops at least one token (a batch of real data usually does)."
        )


def _dynamic_axes(inputs: Mapping[str, Tensor], batch: bool = True) -> dict[str, dict[int, str]]:
    """Batch is dynamic for every input (unless not ``batch``); sequence length too for token inputs (images keep their size)."""
    first = {0: "batch"} if batch else {}
    axes = {key: first if key == IMAGE_KEY else {**first, 1: "sequence"} for key in inputs}
    return {key: axis for key, axis in axes.items() if axis}


def input_shape(structure: Mapping[str, Any]) -> tuple[tuple[int, int] | None, int | None]:
    """What a saved model reads, from its ``structure.json``: images' ``(channels, side)``, else text's longest length."""
    if "architecture" in structure:  # saved by trimlab.save_model
        from trimlab.models.architecture import read_architecture

        arch = read_architecture(structure["architecture"])
        if arch.kind != "text":
            return (arch.in_chans, arch.image_size), None
        return None, arch.max_positions - (arch.pad_token_id + 1 if arch.padding_positions else 0)
    model_cfg = OmegaConf.create(structure["model"])
    if model_kind(model_cfg) != "text":
        return (model_cfg.in_chans, model_cfg.image_size), None
    return None, model_cfg.max_length


def synthetic_batch(
    model: nn.Module, image: tuple[int, int] | None, max_length: int | None, size: int = 2, length: int = 16
) -> dict[str, Tensor]:
    """A fixed random batch of the inputs ``model`` takes: ``image`` (channels, side) for an image model, else text.

    Text: token ids inside the vocabulary, at most ``max_length`` of them, the second
    example padded in its second half, token types where the model has them.
    Images: normal noise at the given size and channels.
    """
    gen = torch.Generator().manual_seed(0)
    if image is not None:
        chans, side = image
        return {IMAGE_KEY: torch.randn(size, chans, side, side, generator=gen)}
    embeddings = model.embeddings
    length = min(length, max_length or length)
    ids = torch.randint(embeddings.pad_token_id + 1, embeddings.word.num_embeddings, (size, length), generator=gen)
    mask = torch.ones(size, length, dtype=torch.long)
    mask[1:, (length + 1) // 2 :] = 0
    batch = {"input_ids": ids.masked_fill(mask == 0, embeddings.pad_token_id)}
    if embeddings.token_type is not None:
        batch["token_type_ids"] = torch.zeros_like(ids)
    batch["attention_mask"] = mask
    return batch


def default_output(model_dir: Path, fmt: str) -> Path:
    """A run's export goes into its run folder (``model.onnx``); a ``save_model`` folder's beside it (``<folder>.onnx``)."""
    if (model_dir.parent / RECORD_FILE).is_file():
        return model_dir.parent / f"model{SUFFIXES[fmt]}"
    return model_dir.parent / f"{model_dir.resolve().name}{SUFFIXES[fmt]}"


def _one_by_one(batch: Mapping[str, Tensor]) -> list[dict[str, Tensor]]:
    """Each example of a batch alone, without its padding: the inputs a batch-size-1 file takes."""
    mask = batch.get("attention_mask")
    examples = []
    for i in range(next(iter(batch.values())).shape[0]):
        length = None if mask is None else int(mask[i].sum())
        examples.append({k: v[i : i + 1, :length] if v.ndim == 2 else v[i : i + 1] for k, v in batch.items()})
    return examples


def check_output(output: Path, fmt: str, model_dir: Path) -> None:
    """Refuse an ``--output`` whose suffix says another format, or that would overwrite what the run saved.

    A new file anywhere, or the run's previous export (``model.onnx``/``model.pt``), may be written;
    the run folder's other files, its subfolders (the saved model among them) and any folder may not.
    """
    if (output.suffix == SUFFIXES["onnx"]) != fmt.startswith("onnx"):
        says = "a .onnx file" if fmt.startswith("onnx") else "a TorchScript file (.pt), not .onnx"
        raise ConfigError(f"--output {output}: --format {fmt} writes {says}; name it so, or pass the other --format")
    target, model_dir = output.resolve(), model_dir.resolve()
    run_dir = model_dir.parent
    if target.is_dir():
        raise ConfigError(f"--output {output} is a folder; name the file to write, e.g. {output / ('model' + SUFFIXES[fmt])}")
    if model_dir in target.parents:
        raise ConfigError(f"--output {output} is inside the run's saved model ({model_dir}); write the export elsewhere")
    if not (run_dir / RECORD_FILE).is_file():
        return
    if run_dir in target.parents and target.parent != run_dir:
        raise ConfigError(f"--output {output} is inside the run folder's {target.relative_to(run_dir).parts[0]}/; write the export elsewhere")
    if target.parent == run_dir and target.exists() and target.name not in {f"model{s}" for s in SUFFIXES.values()}:
        raise ConfigError(f"--output {output} would overwrite the run's own file {target.name}; write the export elsewhere")


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``trimlab-export``: exits 2 on a usage or input error, 1 when the exporter fails, 130 on Ctrl+C."""
    parser = argparse.ArgumentParser(
        prog="trimlab-export",
        description="Export the model a trimlab run kept (or trimlab.save_model saved) as ONNX or TorchScript, then print how far the file's\n"
        "logits are from the PyTorch model's on a fixed example batch.",
        epilog="what the file holds:\n"
        "  inputs   input_ids, [token_type_ids,] attention_mask (text) or pixel_values (images),\n"
        "           batch size dynamic, and sequence length for text; output: logits\n"
        "  dense and structurally pruned models: as they compute (pruned: the smaller weights)\n"
        "  quantized models, onnx: a QDQ graph (QuantizeLinear/DequantizeLinear with the run's calibrated\n"
        "           per-tensor input scales and its int8 weight codes, per output channel) that ONNX Runtime\n"
        "           runs as integer MatMuls (PWLQ: its centre and tail branch side by side, then added);\n"
        "           symmetric weights of at most 8 bits and 8-bit inputs only; Conv2d layers stay in float\n"
        "  quantized models, onnx_float: dequantized float weights, activation fake quantization as float ops\n"
        "  token-pruned models (LTP, SaiT): dropped tokens are masked instead of removed: the same\n"
        "           logits, but every token is computed, so without the token-pruning speedup;\n"
        "           with --gather-tokens: a batch-size-1 graph that removes them (NonZero, Gather), so\n"
        "           later layers run on fewer tokens; a second output kept_tokens [1, layers]\n"
        f"  ONNX needs {EXPORT_EXTRA}; TorchScript needs nothing more\n\n"
        "examples:\n"
        "  trimlab-export outputs/runs/3f2a9c1b0d --format onnx\n"
        "  trimlab-export 3f2a9c1b0d --format torchscript --output model.pt\n\n"
        f"{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run", help="a run folder, a run id under --runs, or a folder trimlab.save_model wrote")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx (.onnx; QDQ for quantized models), onnx_float (.onnx) or torchscript (.pt)")
    parser.add_argument("--runs", type=Path, help="folder of run folders, to find a run id (default: outputs/runs)")
    parser.add_argument(
        "--gather-tokens",
        action="store_true",
        help="token-pruned models: remove dropped tokens in the graph (batch size 1) instead of masking them",
    )
    parser.add_argument(
        "--int8-weights",
        action="store_true",
        help="quantized models, onnx: weight codes as int8 (ONNX Runtime's fast kernel on CPUs with VNNI; "
        "saturates on AVX2 CPUs without it) instead of uint8 (exact on every x86 CPU)",
    )
    parser.add_argument(
        "--output", type=Path, help="the file to write (default: <run folder>/model.onnx or model.pt; <folder>.onnx beside a save_model folder)"
    )
    args = parser.parse_args(argv)
    try:
        from trimlab.saved_model import STRUCTURE_FILE, model_folder, read_model

        folder = model_folder(args.run, args.runs)
        if args.output is not None:
            check_output(args.output, args.format, folder)
        model = read_model(folder)
        batch = synthetic_batch(model, *input_shape(json.loads((folder / STRUCTURE_FILE).read_text())))
        path = export_model(model, batch, args.output or default_output(folder, args.format), args.format, args.gather_tokens, args.int8_weights)
        examples = _one_by_one(batch) if args.gather_tokens else [batch]
        difference = max(max_logit_difference(path, model, example) for example in examples)
        agreement = min(prediction_agreement(path, model, example) for example in examples)
    except (ImportError, ValueError) as err:  # ConfigError is a ValueError
        print(f"trimlab-export: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("trimlab-export: interrupted", file=sys.stderr)
        return 130
    except OSError as err:
        print(f"trimlab-export: error: cannot write {err.filename or args.output} ({err.strerror or err})", file=sys.stderr)
        return 2
    except RuntimeError as err:  # the exporter
        print(f"trimlab-export: the export failed: {type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB); inputs: {', '.join(batch)} → logits")
    print(f"max |logits difference| to the PyTorch model on an example batch: {difference:.2e} (the same prediction on {agreement:.0%} of it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
