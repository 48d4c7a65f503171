"""Every run a paper-table spec (``experiments/*.yaml``) lists composes into a valid config."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from omegaconf import DictConfig

SPECS = sorted((Path(__file__).parents[1] / "experiments").glob("*.yaml"))


def spec_runs(block: dict) -> list[list[str]]:
    """Overrides of every run of a ``runs`` block: ``common`` + one entry of each other axis (a mapping of lists)."""
    axes = [
        list(v.values())
        for k, v in block.items()
        if k != "common" and isinstance(v, dict) and all(isinstance(entry, list) for entry in v.values())
    ]
    return [list(block.get("common", [])) + [o for entry in combo for o in entry] for combo in itertools.product(*axes)]


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_every_listed_run_composes(spec: Path, compose_cfg: Callable[..., DictConfig]) -> None:
    content = yaml.safe_load(spec.read_text())
    blocks = [block for key, block in content.items() if key == "runs" or key.endswith("_runs")]
    runs = [overrides for block in blocks for overrides in spec_runs(block)]
    assert runs
    for overrides in runs:
        cfg = compose_cfg(*overrides)
        assert cfg.method.name in {o.split("=")[1] for o in overrides if o.startswith("method=")}
    assert set(content.get("paper_numbers") or {}) <= set(content["table"]["row_order"].get("model", []))
