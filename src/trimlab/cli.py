"""``trimlab``: the Hydra entry point. Thin: compose → run."""

from __future__ import annotations

import logging
import sys
import warnings

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from trimlab.config import ConfigError, register_configs
from trimlab.results.record import run_id


def _run_id_resolver(*, _root_: DictConfig) -> str:
    return run_id(_root_)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> float:
    """One run; returns the compressed model's task metric, the objective a search sweeper (Optuna) maximises."""
    from trimlab.distributed import check_launch
    from trimlab.run import run

    _route_library_logs()
    try:
        check_launch(cfg, multirun=HydraConfig.get().mode == RunMode.MULTIRUN)
        return float(run(cfg).compressed["metric"])
    except ConfigError as err:
        print(f"trimlab: error: {err}", file=sys.stderr)
        sys.exit(2)


def _route_library_logs() -> None:
    """Send Lightning's messages through Hydra's handlers (console + run log) once, minus its banner chatter."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=Warning)


def register_resolvers() -> None:
    """Schemas in the ConfigStore and the ``${run_id:}`` resolver that names run folders."""
    register_configs()
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", _run_id_resolver)


def main() -> None:
    """Console script ``trimlab``."""
    register_resolvers()
    _app()


if __name__ == "__main__":
    main()
