"""Files other people made stay data: a pickle handed to trimlab never runs its code."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import timm

from trimlab.config import ConfigError
from trimlab.models.weight_sources import load_timm_file


class _Touch:
    """Unpickling this creates ``path``: the side effect a hostile file would have."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_timm_weights_file_that_would_run_code_is_refused_without_running_it(tmp_path: Path) -> None:
    witness = tmp_path / "ran"
    weights = tmp_path / "weights.pth"
    weights.write_bytes(pickle.dumps({"state_dict": _Touch(witness)}))
    net = timm.create_model("resnet10t", pretrained=False, num_classes=2)
    with pytest.raises(ConfigError, match="weights.pth"):
        load_timm_file(net, str(weights), "resnet10t")
    assert not witness.exists()


def test_the_cli_refuses_hydras_rerun_flag_before_reading_the_file(tmp_path: Path) -> None:
    witness = tmp_path / "ran"
    config = tmp_path / "config.pickle"
    config.write_bytes(pickle.dumps(_Touch(witness)))
    trimlab = Path(sys.executable).with_name("trimlab")
    result = subprocess.run(
        [str(trimlab), "--experimental-rerun", str(config)], capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
    )
    assert result.returncode == 2
    assert "--experimental-rerun is refused" in result.stderr
    assert not witness.exists()


def test_a_saved_model_naming_a_module_never_imports_it(tmp_path: Path, compose_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    """``structure.json`` is data: a crafted one whose ``model.path`` names an installed package with a side effect
    (as a module on the path would) is refused with the folder named, and the package's code never runs."""
    import json

    from omegaconf import OmegaConf
    from safetensors.torch import save_file
    import torch

    from trimlab.saved_model import read_model

    witness = tmp_path / "ran"
    package = tmp_path / "site" / "evil_weights"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"open({str(witness)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    model_cfg = OmegaConf.to_container(compose_cfg("model=minilm_l6").model, resolve=True) | {"path": "evil_weights"}
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "structure.json").write_text(json.dumps({"format": 1, "model": model_cfg, "num_labels": 2}))
    save_file({"x": torch.zeros(1)}, str(folder / "weights.safetensors"))
    with pytest.raises(ConfigError, match="evil_weights"):
        read_model(folder)
    assert not witness.exists()


def test_a_checkpoint_write_failing_inside_safetensors_costs_the_cache_not_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """safetensors raises its own error type for a failed write; the run's cache step must treat it as the disk error it is."""
    from safetensors import SafetensorError
    from torch import nn

    import trimlab.checkpoints as checkpoints
    from trimlab.run import _cache_dense

    def failing_save(*args: object, **kwargs: object) -> None:
        raise SafetensorError("Error while serializing: IoError(No space left on device)")

    monkeypatch.setattr(checkpoints, "save_file", failing_save)
    with pytest.raises(OSError, match="safetensors could not write"):
        checkpoints.save_checkpoint(nn.Linear(2, 2), tmp_path / "dense.safetensors")
    _cache_dense(nn.Linear(2, 2), tmp_path / "dense.safetensors")  # logs a warning, raises nothing
    assert list(tmp_path.iterdir()) == []  # no temporary left behind


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"model": {"trust_remote_code": True}}, "trust_remote_code"),  # a key no schema has
        ({"model": {"family": "os.system"}}, "model.family='os.system'"),  # not a family trimlab loads
        ({"model": {"weights": "pickle"}}, "model.weights='pickle'"),  # not a weights kind
        ({"model": {"max_length": "long"}}, "max_length"),  # a value of the wrong type
        ({"token_selector": {"kind": "subprocess.run"}}, "token_selector.kind='subprocess.run'"),
        ({"quantized": {"classifier": {"scheme": "eval"}}}, "quantized.classifier.scheme='eval'"),
    ],
)
def test_a_saved_model_names_its_parts_by_trimlabs_own_keys(
    change: dict, named: str, tmp_path: Path, compose_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each name in ``structure.json`` is checked against trimlab's own lists (the model config by its schema)
    before anything is built: the builder is never reached, and the error names the file and the key."""
    import json

    from omegaconf import OmegaConf
    from safetensors.torch import save_file
    import torch

    import trimlab.saved_model as saved_model

    model_cfg = OmegaConf.to_container(compose_cfg("model=minilm_l6").model, resolve=True)
    structure = {"format": 1, "model": model_cfg, "num_labels": 2, "quantized": {}, "input_quantizers": {}, "token_selector": None}
    for key, value in change.items():
        structure[key] = structure[key] | value if isinstance(structure[key], dict) else value
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "structure.json").write_text(json.dumps(structure))
    save_file({"x": torch.zeros(1)}, str(folder / "weights.safetensors"))

    def never(*args, **kwargs):
        raise AssertionError("the model was built from an unchecked structure")

    monkeypatch.setattr(saved_model, "build_model", never)
    with pytest.raises(ConfigError, match="structure.json") as caught:
        saved_model.read_model(folder)
    assert named in str(caught.value)
