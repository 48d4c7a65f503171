"""Methods declare themselves beside their code; a pipeline hands each step its budget as a value."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

import trimlab.methods
from trimlab.config import Budget, ConfigError
from trimlab.config_store import register_configs
from trimlab.methods import build_method, kind_of, method_kinds
from trimlab.methods.pipeline.method import PipelineMethod
from trimlab.methods.pipeline.schema import PipelineConfig
from trimlab.methods.pwlq.schema import QuantizeConfig
from trimlab.methods.sait.schema import SaiTConfig

METHOD_OPTIONS = sorted(p.stem for p in (Path(trimlab.__file__).parent / "conf" / "method").glob("*.yaml"))


@pytest.mark.parametrize("option", METHOD_OPTIONS)
def test_every_method_option_builds_the_method_its_schema_names(compose_cfg, option) -> None:
    cfg = compose_cfg(f"method={option}")
    method = build_method(cfg.method)
    assert type(method).__name__ == kind_of(cfg.method).implementation.split(":")[1]
    if isinstance(method, PipelineMethod):
        assert list(method.steps) == list(cfg.method.steps)
        assert all(kind_of(step).composable for step in cfg.method.steps.values())


def test_a_new_method_is_its_folder_and_nothing_else(tmp_path, monkeypatch) -> None:
    """A folder under trimlab/methods with a schema.py declaring KIND is registered: its schema reaches Hydra."""
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "__init__.py").write_text('"""A toy method."""\n')
    (folder / "schema.py").write_text(
        "from dataclasses import dataclass, field\n"
        "from trimlab.methods import MethodKind\n\n\n"
        "@dataclass\nclass ToyConfig:\n    name: str = 'toy'\n    budgets: list[str] = field(default_factory=lambda: ['none'])\n\n\n"
        "KIND = MethodKind('toy_schema', ToyConfig, 'trimlab.methods.dense.method:DenseMethod')\n"
    )
    monkeypatch.setattr(trimlab.methods, "__path__", [*trimlab.methods.__path__, str(tmp_path)])
    try:
        assert "toy_schema" in method_kinds()
        register_configs()
        stored = ConfigStore.instance().repo["method"]["toy_schema.yaml"].node
        assert OmegaConf.get_type(stored).__name__ == "ToyConfig"
    finally:
        ConfigStore.instance().repo["method"].pop("toy_schema.yaml", None)
        for name in ("trimlab.methods.toy.schema", "trimlab.methods.toy"):
            sys.modules.pop(name, None)


def test_a_step_that_cannot_compose_is_refused_naming_the_schemas_that_can() -> None:
    cfg = OmegaConf.structured(PipelineConfig(name="odd", steps={"quantize": QuantizeConfig(), "tokens": SaiTConfig()}))
    with pytest.raises(ConfigError, match=r"method.steps.tokens: method sait cannot be a pipeline step.*fisher_prune_schema, ltp_schema, quantize_schema"):
        build_method(cfg)


class RecordingStep:
    """Stands in for a step: records what its check was given."""

    def __init__(self, seen: list) -> None:
        self.seen = seen

    def check(self, cfg, budget, model, datamodule) -> None:
        self.seen.append((cfg, budget))


def test_the_pipeline_hands_each_step_its_share_of_the_budget_and_the_run_config_as_it_is(compose_cfg) -> None:
    cfg = compose_cfg("method=fisher_ltp_pwlq", "budget=flops_30", "method.split=0.5")
    pipeline = build_method(cfg.method)
    seen: dict[str, list] = {name: [] for name in pipeline.steps}
    pipeline.steps = {name: RecordingStep(seen[name]) for name in pipeline.steps}
    budget = Budget("flops", 0.36)
    pipeline.check(cfg, budget, None, None)
    assert all(run_cfg is cfg for (run_cfg, _), in seen.values())  # no per-step copy of the run config
    (prune,), (tokens,) = [[b for _, b in seen[step]] for step in ("prune", "tokens")]
    assert (prune.kind, prune.target) == ("flops", pytest.approx(0.6))  # 0.36 ** 0.5
    assert (tokens.kind, tokens.target) == ("tokens", pytest.approx(0.6))  # LTP takes tokens budgets: the planned share
    assert seen["quantize"][0][1] is budget  # a quantizer keeps the run's budget (its bits are its own key)
