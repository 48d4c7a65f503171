"""Fuzzing what users and other people's files hand trimlab: every refusal is one line naming the key or file.

Random override sets over the config schema, random bytes and truncations of
records, saved models, specs and checkpoints, and random batches for
``compress()``: each is accepted or refused with a one-line
:class:`~trimlab.config.ConfigError` (Hydra's own composition errors as
:func:`~trimlab.config.composition_error` turns them into one), never another
exception, and nothing else on disk changes.

CI runs a few examples per test (seeded: the same ones every time);
``TRIMLAB_FUZZ=long pytest tests/test_fuzz.py`` runs 25 times as many, random.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import string
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig

from trimlab.checkpoints import load_checkpoint, save_checkpoint
from trimlab.cli import register_resolvers
from trimlab.config import ConfigError, composition_error, validate
from trimlab.results.record import RunRecord, read_record, write_record
from trimlab.results.spec import load_spec

LONG = os.environ.get("TRIMLAB_FUZZ") == "long"
settings.register_profile("trimlab-ci", deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
settings.register_profile("trimlab-long", deadline=None, suppress_health_check=list(HealthCheck))
PROFILE = settings.get_profile("trimlab-long" if LONG else "trimlab-ci")


def examples(ci: int) -> settings:
    """``ci`` examples in CI; 25 times as many with ``TRIMLAB_FUZZ=long``."""
    return settings(PROFILE, max_examples=ci * 25 if LONG else ci)


def assert_one_line(err: ConfigError, *named: str) -> None:
    text = str(err)
    assert text and "\n" not in text, text
    for name in named:
        assert name in text, text


def files_in(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder per example (hypothesis runs many examples inside one test)."""
    with tempfile.TemporaryDirectory(prefix="trimlab-fuzz-") as tmp:
        yield Path(tmp)


# ---------------------------------------------------------------- (a) overrides over the config schema
GROUPS = {
    "model": ["minilm_l6", "vit_digits", "cnn_digits", "deit_tiny", "efficientnet_lite0"],
    "dataset": ["tweets", "digits", "photos", "sst2", "imagenet"],
    "method": ["dense", "fisher_prune", "pwlq", "uniform_ptq", "ltp", "sait", "mait", "fisher_prune_pwlq"],
    "budget": ["none", "flops_60", "latency_70", "tokens_50", "bits_4"],
    "trainer": ["cpu", "gpu", "ddp"],
    "logger": ["wandb", "csv", "none"],
}


def _leaf_keys(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in node:
        child = node._get_node(key)
        keys += _leaf_keys(child, f"{prefix}{key}.") if isinstance(child, DictConfig) else [f"{prefix}{key}"]
    return keys


@pytest.fixture(scope="module")
def schema_keys() -> list[str]:
    """Every key of the default run and of a few other group choices (a key the chosen options lack is a fuzz input too)."""
    register_resolvers()
    GlobalHydra.instance().clear()
    keys: set[str] = set()
    with initialize_config_module("trimlab.conf", version_base="1.3"):
        for overrides in ([], ["model=vit_digits", "dataset=digits", "method=pwlq"], ["method=ltp"], ["model=cnn_digits", "method=fisher_prune_pwlq"]):
            keys |= {k for k in _leaf_keys(compose("config", overrides=overrides)) if not k.startswith(("paths.", "hydra."))}
    GlobalHydra.instance().clear()
    return sorted(keys)


def _float_text(x: float) -> str:
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf") if math.isinf(x) else repr(x)


VALUES = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(_float_text),
    st.sampled_from(["true", "false", "null", "''", "abc", "../up", "a/b", "1e3", "[]", "{}", "[1,2]", "[a,b]", "${oops}", "'x y'", "-1", "0"]),
    st.text(alphabet=string.ascii_letters + string.digits + "._-/ ,=[]{}'", max_size=12),
)


@st.composite
def override_sets(draw: st.DrawFn, keys: list[str]) -> list[str]:
    groups = draw(st.lists(st.sampled_from(list(GROUPS)), max_size=3, unique=True))
    overrides = [f"{g}={draw(st.sampled_from(GROUPS[g]))}" for g in groups]
    for key in draw(st.lists(st.sampled_from(keys), min_size=1, max_size=4, unique=True)):
        overrides.append(f"{key}={draw(VALUES)}")
    return overrides


def test_random_overrides_compose_and_validate_or_fail_in_one_line(schema_keys: list[str]) -> None:
    register_resolvers()

    @examples(40)
    @given(override_sets(schema_keys))
    def check(overrides: list[str]) -> None:
        with scratch() as tmp:
            output = tmp / "outputs"
            try:
                try:
                    cfg = compose("config", overrides=[f"paths.output_dir={output}", *overrides])
                except HydraException as err:
                    raise composition_error(err) from err
                validate(cfg)
            except ConfigError as err:
                assert_one_line(err)
            assert not output.exists() and [p.name for p in tmp.iterdir()] == []

    GlobalHydra.instance().clear()
    with initialize_config_module("trimlab.conf", version_base="1.3"):
        check()
    GlobalHydra.instance().clear()


# ---------------------------------------------------------------- (b) files other people made
@st.composite
def damaged(draw: st.DrawFn, good: bytes) -> bytes:
    """Random bytes, a truncation of ``good``, or ``good`` with a few bytes overwritten."""
    how = draw(st.sampled_from(["random", "truncated", "overwritten"]))
    if how == "random":
        return draw(st.binary(max_size=512))
    if how == "truncated":
        return good[: draw(st.integers(0, max(len(good) - 1, 0)))]
    data = bytearray(good)
    for _ in range(draw(st.integers(1, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


RECORD = RunRecord("abc123", "completed", "cnn_digits", "digits", "dense", {"kind": "none", "target": 1.0}, 0, {"seed": 0})
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@examples(60)
@given(st.one_of(damaged(json.dumps(RECORD.to_dict()).encode()), JSON.map(lambda v: json.dumps(v).encode())))
def test_a_damaged_record_is_refused_naming_it(data: bytes) -> None:
    with scratch() as tmp:
        path = write_record(tmp, RECORD)
        path.write_bytes(data)
        before = files_in(tmp)
        try:
            assert isinstance(read_record(path), RunRecord)
        except ConfigError as err:
            assert_one_line(err, str(path))
        assert files_in(tmp) == before


@pytest.fixture(scope="module")
def saved_cnn() -> Iterator[Path]:
    """A small CNN's saved model folder (``structure.json`` + ``weights.safetensors``)."""
    from trimlab.models.build import build_model
    from trimlab.saved_model import save_model

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_module("trimlab.conf", version_base="1.3"):
        cfg = compose("config", overrides=["model=cnn_digits", "dataset=digits"])
    GlobalHydra.instance().clear()
    torch.manual_seed(0)
    with scratch() as tmp:
        yield save_model(build_model(cfg.model, 10).model.eval(), tmp / "model", cfg.model, 10).path


SMALL_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 300) | st.floats(-5, 300) | st.text(string.ascii_letters + "._", max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(string.ascii_letters + "_", max_size=8), inner, max_size=3),
    max_leaves=8,
)
"""JSON values whose numbers stay small: a crafted size could ask for any amount of memory, which no check can refuse in time."""


@st.composite
def structures(draw: st.DrawFn, good: bytes) -> bytes:
    """``structure.json`` damaged, or with one value (top level or the model's config) replaced by another JSON value."""
    if draw(st.booleans()):
        return draw(damaged(good))
    structure = json.loads(good)
    node = structure["model"] if draw(st.booleans()) else structure
    node[draw(st.sampled_from(sorted(node)))] = draw(SMALL_JSON)
    return json.dumps(structure).encode()


@pytest.mark.parametrize("damaged_file", ["structure.json", "weights.safetensors"])
def test_a_damaged_saved_model_is_refused_naming_it(saved_cnn: Path, damaged_file: str) -> None:
    from trimlab.saved_model import read_model

    good = (saved_cnn / damaged_file).read_bytes()

    @examples(25)
    @given(structures(good) if damaged_file == "structure.json" else damaged(good))
    def check(data: bytes) -> None:
        with scratch() as tmp:
            folder = Path(shutil.copytree(saved_cnn, tmp / "model"))
            (folder / damaged_file).write_bytes(data)
            before = files_in(tmp)
            try:
                assert isinstance(read_model(folder), torch.nn.Module)
            except ConfigError as err:
                assert_one_line(err, str(folder))
            assert files_in(tmp) == before

    check()


SPEC = (Path(__file__).parent / "fixtures" / "table" / "spec.yaml").read_text()
YAML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(string.ascii_letters + "_=.", max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(string.ascii_letters + "_", max_size=8), inner, max_size=3),
    max_leaves=10,
)


@st.composite
def spec_texts(draw: st.DrawFn) -> bytes:
    """The fixture spec damaged, a random YAML document, or the fixture with one of its values replaced."""
    how = draw(st.sampled_from(["damaged", "random", "replaced"]))
    if how == "damaged":
        return draw(damaged(SPEC.encode()))
    if how == "random":
        return yaml.safe_dump(draw(YAML_VALUES)).encode()
    spec = yaml.safe_load(SPEC)
    path = draw(st.sampled_from([("table", "rows"), ("table", "columns"), ("table", "scale"), ("table", "metric"), ("table", "row_order"),
                                 ("embedded_runs", "models"), ("embedded_runs", "common"), ("seeds",), ("paper_numbers",), ("claims",)]))
    node = spec
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = draw(YAML_VALUES)
    return yaml.safe_dump(spec).encode()


@examples(60)
@given(spec_texts())
def test_a_damaged_spec_is_refused_naming_it(data: bytes) -> None:
    with scratch() as tmp:
        path = tmp / "spec.yaml"
        path.write_bytes(data)
        try:
            load_spec(path, "embedded_runs")
        except ConfigError as err:
            assert_one_line(err, str(path))
        assert files_in(tmp) == {"spec.yaml": data}


def _tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))


def _checkpoint_bytes(suffix: str) -> bytes:
    with scratch() as tmp:
        path = tmp / f"c{suffix}"
        save_checkpoint(_tiny(), path) if suffix == ".safetensors" else torch.save(_tiny().state_dict(), path)
        return path.read_bytes()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_damaged_checkpoint_is_refused_naming_it(suffix: str) -> None:
    @examples(25)
    @given(damaged(_checkpoint_bytes(suffix)))
    def check(data: bytes) -> None:
        with scratch() as tmp:
            path = tmp / f"dense{suffix}"
            path.write_bytes(data)
            try:
                load_checkpoint(_tiny(), path)
            except ConfigError as err:
                assert_one_line(err, str(path))
            assert files_in(tmp) == {path.name: data}

    check()


# ---------------------------------------------------------------- (c) batches for compress()
DTYPES = [torch.long, torch.int32, torch.uint8, torch.bool, torch.float32, torch.float16, torch.float64]


@st.composite
def tensors(draw: st.DrawFn, batch: int) -> torch.Tensor:
    ndim = draw(st.integers(0, 4))
    shape = [draw(st.sampled_from([batch, batch, 0, 1, 3]))] + [draw(st.integers(0, 20)) for _ in range(ndim - 1)] if ndim else []
    dtype = draw(st.sampled_from(DTYPES))
    values = torch.randint(-3, 120, shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**16))))
    return values.to(dtype) if dtype != torch.bool else values > 50


@st.composite
def batches(draw: st.DrawFn) -> dict[str, object]:
    """A well-formed text batch with some keys replaced, removed or added."""
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    good = {"input_ids": torch.randint(1, 100, (4, 12), generator=gen), "attention_mask": torch.ones(4, 12, dtype=torch.long),
            "labels": torch.randint(0, 3, (4,), generator=gen)}
    keys = ["input_ids", "attention_mask", "token_type_ids", "labels", "pixel_values", "extra"]
    for key in draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)):
        change = draw(st.sampled_from(["tensor", "remove", "other"]))
        if change == "remove":
            good.pop(key, None)
        elif change == "tensor":
            good[key] = draw(tensors(4))
        else:
            good[key] = draw(st.sampled_from([None, 3, "text", [1, 2, 3], 2.5]))
    return good


def test_random_batches_compress_or_fail_in_one_line() -> None:
    from transformers import BertConfig, BertForSequenceClassification

    from trimlab.api import compress

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=24, num_labels=3)
    model = BertForSequenceClassification(config).eval()

    @examples(12)
    @given(st.lists(batches(), min_size=1, max_size=2))
    def check(data: list[dict[str, object]]) -> None:
        try:
            compress(model, "fisher_prune", 0.6, data, options={"tune": False, "rearrange": False})
        except ConfigError as err:
            assert_one_line(err)

    check()
