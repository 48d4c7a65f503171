"""``trimlab``: the Hydra entry point. Thin: compose → run."""

from __future__ import annotations

import difflib
import logging
import os
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trimlab.config import ConfigError, composition_error
from trimlab.config_store import register_configs
from trimlab.interrupt import RunInterrupted
from trimlab.results.record import now, run_id


def _run_id_resolver(*, _root_: DictConfig) -> str:
    return run_id(_root_)


@dataclass
class JobOutcome:
    """How one job of this process's multirun ended, for the summary at its end."""

    number: int
    overrides: list[str]
    status: str
    """``completed``, ``skipped`` (completed before), ``busy`` (another process runs it) or ``failed``."""
    message: str = ""


JOBS_STARTED: list[int] = []
"""Jobs this process has entered; none when Hydra stopped at the command line (an override that does not compose)."""

OUTCOMES: list[JobOutcome] = []
"""Multirun jobs that ran in this process (Hydra's basic launcher runs them one after another here;
launchers that run jobs elsewhere, Submitit and Ray, leave it empty: their records say how each ended)."""


@hydra.main(config_path="pkg://trimlab.conf", config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> float:
    """One run; returns the compressed model's task metric, the objective a search sweeper (Optuna) maximises.

    In a multirun a job that fails (its checks, or later) is recorded and the sweep
    goes on; the summary at the end names it. A signal stops the whole sweep.
    """
    from trimlab.distributed import check_launch, is_primary
    from trimlab.results.run_folder import RunBusy, discard_hydra_job
    from trimlab.run import record_refused, run

    JOBS_STARTED.append(1)
    _route_library_logs()
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    hydra_job = Path(hydra_cfg.runtime.output_dir)
    try:
        check_optional_choices(hydra_cfg.runtime.choices)
        check_launch(cfg, multirun=multirun)
    except ConfigError as err:
        discard_hydra_job(hydra_job)
        _exit_with(err)
    job = JobOutcome(hydra_cfg.job.get("num", 0), list(hydra_cfg.overrides.task), "running")
    started = now()
    try:
        record = run(cfg, hydra_job=hydra_job)
    except ConfigError as err:
        if not multirun or isinstance(err, RunBusy):
            discard_hydra_job(hydra_job)
        if not multirun:
            _exit_with(err)
        print(f"trimlab: error: {err}", file=sys.stderr)
        job.status, job.message = ("busy", str(err)) if isinstance(err, RunBusy) else ("failed", str(err))
        if job.status == "failed":
            record_refused(cfg, str(err), hydra_job)
        OUTCOMES.append(job)
        return float("nan")
    except Exception as err:  # noqa: BLE001 — recorded by run(); the sweep goes on
        if not multirun:
            raise
        logging.getLogger(__name__).exception("job %d failed", job.number)
        job.status, job.message = "failed", f"{type(err).__name__}: {err}"
        OUTCOMES.append(job)
        return float("nan")
    skipped = record.started_at < started
    if skipped and is_primary():
        discard_hydra_job(hydra_job)
    if multirun:
        job.status = "skipped" if skipped else "completed"
        OUTCOMES.append(job)
    return float(record.compressed["metric"])


def check_optional_choices(choices: Mapping[str, str | None]) -> None:
    """Refuse an option Hydra would skip in silence: ``experiment`` is optional, so ``experiment=typo`` would
    run the default experiment instead."""
    chosen = choices.get("experiment")
    if chosen is None:
        return
    options = GlobalHydra.instance().config_loader().get_group_options("experiment")
    if chosen not in options:
        near = difflib.get_close_matches(chosen, options, n=1)
        hint = f"did you mean experiment={near[0]}? " if near else ""
        raise ConfigError(f"experiment={chosen} does not exist; {hint}the experiments are {', '.join(sorted(options))}")


def _exit_with(err: ConfigError) -> None:
    print(f"trimlab: error: {err}", file=sys.stderr)
    sys.exit(2)


def sweep_summary(outcomes: list[JobOutcome]) -> str:
    """Counts of completed / skipped / busy / failed jobs, then one line per job that did not complete here."""
    counts = {status: sum(o.status == status for o in outcomes) for status in ("completed", "skipped", "busy", "failed")}
    head = (
        f"trimlab: multirun of {len(outcomes)} job(s): {counts['completed']} completed, {counts['skipped']} skipped "
        f"(completed before), {counts['busy']} running in another process, {counts['failed']} failed"
    )
    common = set.intersection(*(set(o.overrides) for o in outcomes)) if outcomes else set()
    lines = [head]
    for o in outcomes:
        if o.status in ("busy", "failed"):
            own = " ".join(x for x in o.overrides if x not in common) or "(no overrides of its own)"
            lines.append(f"  {o.status} job #{o.number} {own}: {o.message.splitlines()[0] if o.message else ''}")
    return "\n".join(lines)


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
    """Console script ``trimlab``: exits 2 on a config error, 1 when a multirun job failed, 128 + N on signal N."""
    if sys.argv[1:] == ["--version"]:  # Hydra's own flag would print Hydra's version
        print(f"trimlab {metadata.version('trimlab')}")
        return
    if any(arg.split("=")[0] == "--experimental-rerun" for arg in sys.argv[1:]):
        print(
            "trimlab: error: --experimental-rerun is refused: Hydra unpickles that file, which runs any code it holds. "
            "Rerun a run with its overrides (its record.json lists them under config) or `trimlab-table --run-missing`",
            file=sys.stderr,
        )
        sys.exit(2)
    register_resolvers()
    user_wants_trace = os.environ.get("HYDRA_FULL_ERROR") == "1"  # Hydra's switch for full stack traces
    os.environ["HYDRA_FULL_ERROR"] = "1"  # composition errors reach us, to be said in one line
    try:
        _app()
    except (HydraException, OmegaConfBaseException, ConfigError) as err:
        if JOBS_STARTED or user_wants_trace:
            raise
        # Hydra refused the command line (unknown key, wrong type, a missing option) before any job started
        message = err if isinstance(err, ConfigError) else composition_error(err)
        print(f"trimlab: error: {message} (`trimlab --help` lists the groups and keys)", file=sys.stderr)
        sys.exit(2)
    except SystemExit as done:
        if done.code == 1 and not JOBS_STARTED:  # Hydra stopped at the command line and said why
            sys.exit(2)
        raise
    except RunInterrupted as err:
        where = f"; {err.record_path} says so" if err.record_path else ""
        print(
            f"trimlab: interrupted by {err.signal_name} during {err.stage or 'start-up'}{where}. "
            "Run the same command again to resume: completed runs are skipped, cached checkpoints reused.",
            file=sys.stderr,
        )
        if OUTCOMES:
            print(sweep_summary(OUTCOMES), file=sys.stderr)
        sys.exit(err.exit_code)
    if OUTCOMES:
        print(sweep_summary(OUTCOMES), file=sys.stderr)
    if any(o.status == "failed" for o in OUTCOMES):
        sys.exit(1)


if __name__ == "__main__":
    main()
