"""Where tables get their records: run folders on disk, or a W&B project through its public API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trimlab.config import ConfigError
from trimlab.results.record import RECORD_FILE, RunRecord, read_record


def collect(runs_dir: Path) -> list[RunRecord]:
    """Completed records under ``runs_dir`` (any depth), sorted by model, dataset, method."""
    records = [r for r in (read_record(p) for p in sorted(runs_dir.rglob(RECORD_FILE))) if r.status == "completed"]
    return sorted(records, key=lambda r: (r.model, r.dataset, r.method, str(r.budget)))


def collect_wandb(project: str) -> list[RunRecord]:
    """Completed runs of the W&B project ``ENTITY/PROJECT`` as records (their ids are trimlab's run ids)."""
    try:
        import wandb

        runs = list(wandb.Api().runs(project))
    except Exception as exc:  # noqa: BLE001 — no login, no network and a wrong path all need the same fix
        raise ConfigError(f"cannot read the W&B project {project!r}: {exc}. Log in (`wandb login`) and check ENTITY/PROJECT") from exc
    records = [record_from_wandb(run.id, dict(run.config), dict(run.summary)) for run in runs]
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
        method=str(config.get("method.name", "")),
        budget={"kind": config.get("budget.kind"), "target": config.get("budget.target")},
        seed=int(config.get("seed", 0)),
        config=config,
        dense=section("dense."),
        compressed=section("compressed."),
        ratios=section("ratio."),
        method_cost_s=float(summary.get("method_cost_s", 0.0)),
    )
