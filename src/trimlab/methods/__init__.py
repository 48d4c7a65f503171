"""Compression methods, each behind the same small interface so ``run.py`` stays method-agnostic.

A method is one folder ``methods/<name>/``: its code, and a ``schema.py`` that
holds the schema of its options (the keys of ``conf/method/*.yaml`` that name
it) and declares ``KIND``, a :class:`MethodKind`. Nothing else lists methods: a
new one is its folder and one YAML file. Importing this package (and every
``schema.py``) stays free of torch, so composing a config is quick.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from omegaconf import DictConfig, OmegaConf

from trimlab.config import Budget, ConfigError
from trimlab.methods.context import RunContext
from trimlab.plugins import PluginError, load_plugins

if TYPE_CHECKING:
    from torch import nn


@dataclass
class MethodContext:
    """What a method may use besides the model: the run's settings as values, its own budget, data, where to write, a trainer.

    ``budget`` is the method's: the run's budget, or a pipeline step's share of it.
    """

    run: RunContext
    budget: Budget
    datamodule: Any
    run_dir: Path
    make_trainer: Callable[..., Any]
    resume_dir: Path | None = None
    """Where a training method keeps each phase's state between attempts of the run (None: no resuming)."""

    trained_weights: Callable[[tuple[str, ...]], Path] | None = None
    """Where a training method caches its trained weights, given its option keys that do not change them
    (the run's cache, keyed by the config without those keys; None: not cached)."""
    scratch_weights: Callable[[], dict[str, Any]] | None = None
    """The state dict the dense model started from before training (the run's seed; None: unknown, e.g. a user's model)."""

    def resume_state(self, phase: str) -> Path | None:
        """The file where the training phase ``phase`` keeps its state between attempts of the run (None: not resumed)."""
        return self.resume_dir / f"{phase}.ckpt" if self.resume_dir is not None else None


@dataclass
class MethodResult:
    """The compressed model and what the method wants recorded."""

    model: nn.Module
    stats: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)
    """Wall seconds per step of the method."""
    artifacts: dict[str, str] = field(default_factory=dict)
    """Name → path relative to the run folder."""
    unchanged: bool = False
    """The model is the dense one as it came in: the run reuses the dense measurement instead of repeating it."""


class Method(Protocol):
    def check(self, run: RunContext, budget: Budget, model: nn.Module, datamodule: Any) -> None:
        """Raise :class:`ConfigError` for a setting this method cannot run under ``budget``, before any expensive work."""

    def apply(self, model: nn.Module, ctx: MethodContext) -> MethodResult:
        """Compress (or train) ``model`` under ``ctx.budget`` and return the result."""


@dataclass(frozen=True)
class MethodKind:
    """A method as the framework knows it; each ``methods/<name>/schema.py`` declares one as ``KIND``."""

    schema_name: str
    """The schema's name in Hydra's ConfigStore: the first entry of its options' defaults lists."""
    schema: type
    """The dataclass of its options; a composed ``cfg.method`` of this type is built as this method."""
    implementation: str
    """``module:Class`` of the :class:`Method`, imported when a run builds it (so composing a config needs no torch)."""
    composable: bool = False
    """It may be a step of a pipeline (``method.steps``)."""
    label: Callable[[DictConfig], str] | None = None
    """The name records and tables give a configured method (see :func:`method_label`); ``None``: its ``name``."""

    def implementation_class(self) -> type:
        """The class ``implementation`` names (imported now)."""
        module, name = self.implementation.split(":")
        return getattr(importlib.import_module(module), name)

    def build(self, cfg: DictConfig) -> Method:
        return self.implementation_class()(cfg)


def method_kinds() -> dict[str, MethodKind]:
    """Every method's :class:`MethodKind`, by schema name: trimlab's own, then those of plugins."""
    return {**builtin_method_kinds(), **plugin_methods()[0]}


def builtin_method_kinds() -> dict[str, MethodKind]:
    """trimlab's own methods, read from the ``schema.py`` of each folder here."""
    kinds = {}
    for info in pkgutil.iter_modules(__path__):
        module = f"{__name__}.{info.name}.schema"
        if info.ispkg and importlib.util.find_spec(module) is not None:
            kind = importlib.import_module(module).KIND
            kinds[kind.schema_name] = kind
    return kinds


def builtin_method_options() -> list[str]:
    """The ``method=`` options trimlab ships (``conf/method/*.yaml``)."""
    folder = resources.files("trimlab.conf") / "method"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


@functools.cache
def plugin_methods() -> tuple[dict[str, MethodKind], dict[str, DictConfig]]:
    """The methods of plugins (entry-point group ``trimlab.methods``): their kinds by schema name, and their
    options (the ``*.yaml`` beside the module that declares ``KIND``) by option name. Loaded once per process;
    a plugin whose names clash with trimlab's or an earlier plugin's is skipped (see :mod:`trimlab.plugins`)."""
    builtin_kinds, builtin_options = builtin_method_kinds(), set(builtin_method_options())
    kinds: dict[str, MethodKind] = {}
    options: dict[str, DictConfig] = {}

    def register(ep: EntryPoint, loaded: object) -> None:
        kind = getattr(loaded, "KIND", loaded)
        if not isinstance(kind, MethodKind):
            raise PluginError(f"{ep.value} declares no KIND (a trimlab.methods.MethodKind)")
        if kind.schema_name in builtin_kinds or kind.schema_name in kinds:
            raise PluginError(f"its schema name {kind.schema_name} is taken by trimlab or an earlier plugin; rename it")
        folder = Path(sys.modules[ep.module].__file__ or ".").parent
        found = {path.stem: OmegaConf.load(path) for path in sorted(folder.glob("*.yaml"))}
        taken = sorted(found.keys() & (builtin_options | options.keys()))
        if taken:
            raise PluginError(f"method={', '.join(taken)} is already an option of trimlab or an earlier plugin; rename its YAML")
        kinds[kind.schema_name] = kind
        options.update(found)

    load_plugins("trimlab.methods", register)
    return kinds, options


def kind_of(method_cfg: DictConfig) -> MethodKind:
    """The :class:`MethodKind` whose schema types ``method_cfg``."""
    schema = OmegaConf.get_type(method_cfg)
    for kind in method_kinds().values():
        if kind.schema is schema:
            return kind
    raise ConfigError(
        f"method={method_cfg.get('name')} has no method schema; start its YAML's defaults list with one of "
        f"{', '.join(sorted(method_kinds()))}"
    )


def method_label(method_cfg: DictConfig) -> str:
    """The method's name as records, W&B and tables show it: ``name``, plus the tags of options that depart
    from the method's paper (``pwlq+obc``), so a run with an addition is never mistaken for the paper's method."""
    kind = kind_of(method_cfg)
    return kind.label(method_cfg) if kind.label is not None else str(method_cfg.name)


def build_method(method_cfg: DictConfig) -> Method:
    """The method ``method_cfg`` configures (a pipeline builds its steps with :func:`build_step`)."""
    return kind_of(method_cfg).build(method_cfg)


def build_step(step: str, step_cfg: DictConfig) -> Method:
    """Step ``step`` of a pipeline: a method whose kind is composable."""
    kind = kind_of(step_cfg)
    if not kind.composable:
        composable = ", ".join(sorted(k.schema_name for k in method_kinds().values() if k.composable))
        raise ConfigError(
            f"method.steps.{step}: method {step_cfg.name} cannot be a pipeline step; a step's config starts from one of "
            f"{composable} (e.g. '- pwlq@steps.{step}' in the pipeline's defaults list)"
        )
    return kind.build(step_cfg)
