"""Where tables get their records: run folders on disk, or a W&B project through its public API."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trimlab.config import ConfigError
from trimlab.results.record import RECORD_FILE, RunRecord, read_record
from trimlab.results.run_folder import effective_status


@dataclass
class Scan:
    """What a runs folder holds: completed records, the runs that are not (yet), and files that cannot be read."""

    completed: list[RunRecord] = field(default_factory=list)
    folders: dict[str, Path] = field(default_factory=dict)
    """Run id → the folder of its completed record, where its other files (predictions, masks) lie."""
    unfinished: list[tuple[Path, str]] = field(default_factory=list)
    """Record file and status: ``running`` (its process is alive), ``interrupted`` or ``failed``."""
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    """Record file and why it cannot be read; one bad file never hides the others."""

    def report(self) -> str:
        """Lines for the user about what is not in the table, or an empty string."""
        lines = [f"unreadable record (left out): {reason}" for _, reason in self.unreadable]
        lines += [f"{status} run (left out): {path}" for path, status in self.unfinished if status != "failed"]
        return "\n".join(lines)


def scan(runs_dir: Path) -> Scan:
    """Every ``record.json`` under ``runs_dir`` (any depth, hidden folders such as attempts' staging left out);
    completed ones sorted by model, dataset, method."""
    found = Scan()
    for path in sorted(runs_dir.rglob(RECORD_FILE)):
        if any(part.startswith(".") for part in path.relative_to(runs_dir).parts):
            continue
        try:
            record = read_record(path)
        except ConfigError as err:
            found.unreadable.append((path, str(err)))
            continue
        status = effective_status(record, path.parent)
        if status == "completed":
            found.completed.append(record)
            found.folders[record.run_id] = path.parent
        else:
            found.unfinished.append((path, status))
    found.completed.sort(key=lambda r: (r.model, r.dataset, r.method, str(r.budget)))
    return found


def collect(runs_dir: Path) -> list[RunRecord]:
    """Completed records under ``runs_dir`` (any depth), sorted by model, dataset, method; unreadable files left out."""
    return scan(runs_dir).completed


def collect_wandb(project: str) -> list[RunRecord]:
    """Completed runs of the W&B project ``ENTITY/PROJECT`` as records (their ids are trimlab's run ids)."""
    try:
        import wandb

        runs = list(wandb.Api().runs(project))
    except Exception as exc:  # noqa: BLE001 — no login, no network and a wrong path all need the same fix
        raise ConfigError(f"cannot read the W&B project {project!r}: {exc}. Log in (`wandb login`) and check ENTITY/PROJECT") from exc
    return wandb_records(runs)


def wandb_records(runs: list[Any]) -> list[RunRecord]:
    """Completed W&B runs as records under trimlab's run id (a ``wandb agent`` gives the W&B run its own id)."""
    records = [record_from_wandb(run.config.get("trimlab_run_id", run.id), dict(run.config), dict(run.summary)) for run in runs]
    return [r for r in records if r.status == "completed"]


def record_from_wandb(run_id: str, config: dict[str, Any], summary: dict[str, Any]) -> RunRecord:
    """A record rebuilt from a W&B run's flattened config and the summary keys ``Tracker`` logs."""

    def section(prefix: str) -> dict[str, Any]:
        return {k.removeprefix(prefix): v for k, v in summary.items() if k.startswith(prefix) and "." not in k.removeprefix(prefix)}

    return RunRecord(
        run_id=run_id,
        status=str(summary.get("status", "")),
        model=str(config.get("model.name", "")),
        dataset=str(config.get("dataset.name", "")),
        method=str(config.get("trimlab_method", config.get("method.name", ""))),
        budget={"kind": config.get("budget.kind"), "target": config.get("budget.target")},
        seed=int(config.get("seed", 0)),
        config=config,
        dense=section("dense."),
        compressed=section("compressed."),
        ratios=section("ratio."),
        method_cost_s=float(summary.get("method_cost_s", 0.0)),
    )
