"""``trimlab-table``: a paper's table from the records, with the paper's numbers beside ours.

``trimlab-table <paper>`` (a spec that ships with trimlab, by name, or the path of
any spec file) finds each cell's runs by the run id
``trimlab`` would give them (one per seed), averages the seeds, prints the
table in the paper's layout (ours, the paper's number, the difference), lists
each missing run with the command that makes it (``--run-missing`` runs them, here
or on a Hydra launcher with ``--launcher``),
and writes Markdown, LaTeX, CSV and the Pareto plot. Without a spec it lists
every completed run.

Each cell carries the 95% interval of its mean over seeds (Student t) and,
from the runs' ``predictions.npz``, the 95% paired-bootstrap interval of
compressed − dense on the same test examples, widened by the seeds' spread
where there are several; a cell whose interval includes 0 is marked ``≈``:
its test set and seeds do not tell it from the dense model.
Records without predictions (older runs, W&B) show no such interval.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import math
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from trimlab.config import ConfigError, composition_error
from trimlab.results.aggregate import CellResult, aggregate
from trimlab.results.collect import Scan, collect_wandb, scan
from trimlab.results.intervals import includes_zero, paired_bootstrap, verdict
from trimlab.results.multirun import grid_sweeps
from trimlab.results.predictions import Predictions, load_predictions
from trimlab.results.record import RECORD_FILE, RunRecord
from trimlab.results.run_folder import completed_folder
from trimlab.results.spec import Spec, cell_run_ids, default_block, load_spec, packaged_specs, run_overrides, spec_path

COLUMNS = ("run", "model", "dataset", "method", "budget", "metric", "dense", "compressed", "flops ratio", "speedup b1")
UNDECIDED = "≈"
"""Marks a cell whose compressed − dense interval includes 0."""
EXIT_CODES = (
    "exit codes:\n"
    "  0    the table was printed and written\n"
    "  1    --run-missing: a run failed (each is listed; its record.json says why), or on --launcher did not complete\n"
    "  2    a usage or input error: a bad argument, a spec or record that cannot be read (one line says which)\n"
    "  130  interrupted (Ctrl+C; 128 + the signal's number, e.g. 143 for SIGTERM, when a run was stopped)"
)
LEGEND = f"{UNDECIDED}: the 95% paired-bootstrap interval of compressed − dense (same test examples) includes 0: no difference shown."


def markdown(records: Iterable[RunRecord], predictions: Mapping[str, Predictions] | None = None) -> str:
    """Every completed run, one row each (the listing without a spec); with predictions, compressed − dense and its interval."""
    records, predictions = list(records), predictions or {}
    columns = (*COLUMNS, "Δ [95% CI]") if predictions else COLUMNS
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in records:
        budget = f"{r.budget.get('kind')} {r.budget.get('target'):g}"
        cells = (
            r.run_id,
            r.model,
            r.dataset,
            r.method,
            budget,
            str(r.dense.get("metric_name", "")),
            f"{r.dense.get('metric', float('nan')):.4f}",
            f"{r.compressed.get('metric', float('nan')):.4f}",
            f"{r.ratios.get('flops', float('nan')):.3f}",
            f"{r.ratios.get('speedup_b1', float('nan')):.2f}",
        )
        if predictions:
            p = predictions.get(r.run_id)
            vs_dense = None if p is None or r.method == "dense" else paired_bootstrap(p.labels, p.dense, p.compressed, p.metric)
            cells = (*cells, _fmt_vs_dense(vs_dense, 4))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", LEGEND] if predictions else lines)


def trimlab_run_ids(spec: Spec) -> dict:
    """The run id ``trimlab`` gives each (cell, seed) of ``spec``, from its composed config."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException

    from trimlab.cli import register_resolvers
    from trimlab.results.record import run_id

    register_resolvers()
    with initialize_config_module("trimlab.conf", version_base="1.3"):

        def compose_id(overrides: list[str]) -> str:
            try:
                return run_id(compose("config", overrides=overrides))
            except HydraException as err:
                raise ConfigError(f"{spec.path}: the run `trimlab {' '.join(overrides)}` does not compose: {composition_error(err)}") from err

        return cell_run_ids(spec, compose_id)


def spec_markdown(spec: Spec, results: list[CellResult]) -> str:
    """The paper's layout (cells: ours mean ± 95% CI, then the paper's number and ours − paper), a per-cell detail table
    with compressed − dense and its interval, the missing runs."""
    by_cell = {(r.cell.row, r.cell.column): r for r in results}
    head = _row_head(spec)
    seeds = f"{len(spec.seeds)} seed{'s' if len(spec.seeds) > 1 else ''}"
    lines = [
        f"## {spec.title} ({spec.block}, {spec.metric} × {spec.scale:g})",
        "",
        f"Cells: ours (mean ± 95% CI half-width over {seeds}, Student t) [paper, ours − paper]; — not run yet.",
        "",
        "| " + " | ".join([head, *spec.columns]) + " |",
        "|" + "---|" * (len(spec.columns) + 1),
    ]
    for row in spec.rows:
        cells = [_cell_text(by_cell.get((row, column)), spec.digits) for column in spec.columns]
        lines.append("| " + " | ".join([" / ".join(row), *cells]) + " |")
    if any(r.vs_dense is not None for r in results):
        lines += ["", f"{LEGEND} Seeds share one resample of the test examples; Δ is their mean; with several seeds the interval "
                  "also covers their spread (calibration sample, training order): half-widths added in quadrature."]
    columns = [head, "column", "ours", "std", "95% CI", "paper", "ours − paper", "compressed − dense [95% CI]", "seeds", *spec.extra_columns]
    lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in results:
        if r.records or r.paper is not None:
            extras = [_fmt_extra(r.extra(name)) for name in spec.extra_columns]
            d = spec.digits
            row = [" / ".join(r.cell.row), r.cell.column, _fmt(r.mean, d), _fmt(r.std, d), _fmt_range(r.interval, d), _fmt(r.paper, d),
                   _fmt(r.delta, d, signed=True), _fmt_vs_dense(r.vs_dense, d)]
            lines.append("| " + " | ".join([*row, str(len(r.records)), *extras]) + " |")
    if spec.claims:
        lines += ["", "The paper's claims, judged by our intervals (met: the whole interval satisfies it; not met: none of it):", ""]
        lines += [f"- {line}" for line in claim_verdicts(spec, results)]
    missing = [(r, seed) for r in results for seed in r.missing_seeds]
    if missing:
        lines += ["", f"Missing runs ({len(missing)}; `--run-missing` runs them):", ""]
        lines += [f"- {' / '.join(r.cell.row)} · {r.cell.column} · seed {seed}: `{command(r, seed)}`" for r, seed in missing]
    return "\n".join(lines)


def claim_verdicts(spec: Spec, results: list[CellResult]) -> list[str]:
    """One line per claim: the paper's words, the verdict, and our value with the interval it rests on."""
    by_cell = {(r.cell.row, r.cell.column): r for r in results}
    lines = []
    for claim in spec.claims:
        result = by_cell.get((claim.row, claim.column))
        where = f"{' / '.join(claim.row)} · {claim.column}"
        bound = f"{claim.quantity} {claim.direction} {claim.threshold:+g}"
        if result is None:
            lines.append(f"{claim.text} — no such cell ({where})")
            continue
        if claim.quantity == "mean":
            value, interval = result.mean, result.interval
        else:
            other = by_cell.get((claim.than, claim.column))
            if claim.quantity == "vs_row":
                where += f" − {' / '.join(claim.than)} · {claim.column}"
            difference = result.vs_dense if claim.quantity == "vs_dense" else (None if other is None else result.versus(other))
            value, interval = (None, None) if difference is None else (difference[0], difference[1:])
        if value is None:
            lines.append(f"{claim.text} — not run yet ({where}: {bound})")
            continue
        low, high = interval if interval is not None else (math.nan, math.nan)
        d = spec.digits
        lines.append(
            f"{claim.text} — **{verdict(low, high, claim.threshold, claim.direction)}**: "
            f"ours {_fmt(value, d, signed=claim.quantity != 'mean')} {_fmt_range(interval, d, signed=claim.quantity != 'mean')} ({where}: {bound})"
        )
    return lines


def spec_latex(spec: Spec, results: list[CellResult]) -> str:
    """The main table as a LaTeX tabular (ours ± 95% CI half-width, ≈ where dense is not told apart, the paper's number in parentheses)."""
    by_cell = {(r.cell.row, r.cell.column): r for r in results}
    lines = [
        "\\begin{tabular}{l" + "c" * len(spec.columns) + "}",
        "\\hline",
        " & ".join(_tex(c) for c in [_row_head(spec), *spec.columns]) + " \\\\",
        "\\hline",
    ]
    for row in spec.rows:
        cells = [_tex(" / ".join(row))]
        for column in spec.columns:
            r = by_cell.get((row, column))
            d = spec.digits
            text = "--" if r is None or r.mean is None else f"{r.mean:.{d}f}" + (f" $\\pm$ {r.half_width:.{d}f}" if r.half_width is not None else "")
            if r is not None and r.undecided:
                text += " $\\approx$"
            if r is not None and r.paper is not None:
                text += f" ({r.paper:.{d}f})"
            cells.append(text)
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\hline", "\\end{tabular}"]
    if any(r.vs_dense is not None for r in results):
        lines.append(_tex(LEGEND).replace(UNDECIDED, "$\\approx$"))
    return "\n".join(lines)


def spec_csv(spec: Spec, results: list[CellResult]) -> str:
    """One line per cell: row parts, column, ours (mean, std, seeds), paper, ours − paper (``delta``), the 95% interval
    over seeds, compressed − dense with its paired-bootstrap interval, extra columns."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    intervals = ["ci_low", "ci_high", "delta_vs_dense", "delta_vs_dense_ci_low", "delta_vs_dense_ci_high"]
    writer.writerow([*(a.removesuffix("s") for a in spec.row_axes), "column", "mean", "std", "seeds", "paper", "delta", *intervals, *spec.extra_columns])
    for r in results:
        extras = [_raw(r.extra(name)) for name in spec.extra_columns]
        ci = [_raw(v) for v in r.interval or (None, None)]
        vs_dense = [_raw(v) for v in r.vs_dense or (None, None, None)]
        writer.writerow([*r.cell.row, r.cell.column, _raw(r.mean), _raw(r.std), len(r.records), _raw(r.paper), _raw(r.delta), *ci, *vs_dense, *extras])
    return out.getvalue()


def command(result: CellResult, seed: int) -> str:
    """The ``trimlab`` command that makes one missing run."""
    return "trimlab " + " ".join(_quote(o) for o in run_overrides(result.cell, seed))


def run_missing(results: list[CellResult], output_dir: Path) -> list[tuple[CellResult, int]]:
    """Run every missing (cell, seed) one after another; a failing run is reported and the rest go on.

    Returns the (cell, seed) pairs whose run failed. A run stopped by a signal stops the rest:
    :class:`RunStopped` carries its exit code.
    """
    failed = []
    todo = [(r, seed) for r in results for seed in r.missing_seeds]
    for i, (result, seed) in enumerate(todo, 1):
        overrides = [*run_overrides(result.cell, seed), f"paths.output_dir={output_dir}"]
        print(f"[{i}/{len(todo)}] trimlab {' '.join(overrides)}", file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, "-m", "trimlab.cli", *overrides], check=False)
        if done.returncode < 0 or done.returncode > 128:  # killed by a signal (< 0), or exited 128 + its number
            raise RunStopped(128 - done.returncode if done.returncode < 0 else done.returncode)
        if done.returncode != 0:
            failed.append((result, seed))
    return failed


def run_missing_on_launcher(results: list[CellResult], output_dir: Path, launcher: str, launcher_overrides: Sequence[str]) -> None:
    """Hand every missing (cell, seed) to the Hydra launcher ``launcher``: one ``trimlab -m`` per grid of runs
    (:func:`grid_sweeps`), one multirun after another, each waiting for its jobs.

    The jobs report through their records, so which runs completed is read from those afterwards. A multirun
    stopped by a signal stops the rest: :class:`RunStopped` carries its exit code.
    """
    sweeps = grid_sweeps([run_overrides(r.cell, seed) for r in results for seed in r.missing_seeds])
    for i, sweep in enumerate(sweeps, 1):
        # absolute: a job may start in another folder or on another machine
        argv = ["-m", f"hydra/launcher={launcher}", *launcher_overrides, *sweep, f"paths.output_dir={output_dir.resolve()}"]
        print(f"[multirun {i}/{len(sweeps)}] trimlab {' '.join(_quote(a) for a in argv)}", file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, "-m", "trimlab.cli", *argv], check=False)
        if done.returncode < 0 or done.returncode > 128:
            raise RunStopped(128 - done.returncode if done.returncode < 0 else done.returncode)


def launcher_overrides(launcher: str, settings: Sequence[str]) -> list[str]:
    """``hydra.launcher.KEY=VALUE`` for each ``KEY=VALUE`` of ``--launcher-arg`` (``+KEY=VALUE`` adds a key the
    launcher's schema lacks), checked by composing them with ``hydra/launcher=<launcher>`` before any run starts."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    from trimlab.cli import register_resolvers

    overrides = []
    for setting in settings:
        if "=" not in setting:
            raise ConfigError(f"--launcher-arg {setting}: write KEY=VALUE, a key of hydra.launcher (e.g. --launcher-arg timeout_min=60)")
        plus = setting[: len(setting) - len(setting.lstrip("+"))]
        overrides.append(f"{plus}hydra.launcher.{setting[len(plus):]}")
    register_resolvers()
    with initialize_config_module("trimlab.conf", version_base="1.3"):
        installed = GlobalHydra.instance().config_loader().get_group_options("hydra/launcher")
        if launcher not in installed:
            raise ConfigError(
                f"--launcher {launcher}: no such Hydra launcher is installed; the installed ones are {', '.join(installed)} "
                "(Submitit: pip install hydra-submitit-launcher; Ray: pip install hydra-ray-launcher)"
            )
        try:
            compose("config", overrides=[f"hydra/launcher={launcher}", *overrides], return_hydra_config=True)
        except HydraException as err:
            raise ConfigError(f"--launcher-arg: {composition_error(err)}") from err
    return overrides


class RunStopped(Exception):
    """A run of ``--run-missing`` was stopped by a signal; the table stops with the same exit code."""

    def __init__(self, exit_code: int) -> None:
        self.exit_code = exit_code
        super().__init__(f"a run was interrupted (exit code {exit_code}); the remaining runs were not started")


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``trimlab-table``."""
    parser = argparse.ArgumentParser(
        prog="trimlab-table",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        epilog="examples:\n"
        "  trimlab-table                                   # every completed run under outputs/runs\n"
        "  trimlab-table pwlq2020                          # the paper's table from the offline runs (embedded_runs)\n"
        "  trimlab-table pwlq2020 --block runs --wandb me/trimlab   # full scale, from W&B\n"
        "  trimlab-table mait2022 --run-missing            # run what is missing, then print the table\n"
        "  trimlab-table mait2022 --run-missing --launcher submitit_slurm --launcher-arg partition=gpu --launcher-arg timeout_min=60\n"
        "  trimlab-table pwlq2020 --block runs --with dataset.path=/data/imagenet\n"
        "  trimlab-table my_specs/paper.yaml               # a spec file of your own, by its path\n\n"
        f"{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "spec", nargs="?",
        help=f"a paper-table spec: the name of one that ships with trimlab ({', '.join(packaged_specs())}) or a spec file's path",
    )
    parser.add_argument("--runs", type=Path, default=Path("outputs/runs"), help="folder of run folders (default: outputs/runs)")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the records from a W&B project instead (online)")
    parser.add_argument("--block", help="the spec's run block: embedded_runs (default when the spec has it), runs, or <name>_runs")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds to average (default: the spec's `seeds`, else 0)")
    parser.add_argument("--out", type=Path, help="where table.md/.tex/.csv and pareto.png/.svg go (default: outputs/tables/<spec>-<block>)")
    parser.add_argument("--run-missing", action="store_true", help="run the missing runs first (needs --runs <output_dir>/runs)")
    parser.add_argument(
        "--launcher", metavar="NAME",
        help="with --run-missing: hand the runs to this Hydra launcher (submitit_local, submitit_slurm, ray, ...: "
        "one `trimlab -m` per grid of runs) instead of running them here one after another",
    )
    parser.add_argument(
        "--launcher-arg", dest="launcher_args", metavar="KEY=VALUE", action="append", default=[],
        help="a setting of the launcher, hydra.launcher.KEY=VALUE (repeat it), e.g. timeout_min=60, partition=gpu; "
        "+KEY=VALUE adds a key its schema lacks",
    )
    parser.add_argument(
        "--with", dest="with_overrides", metavar="KEY=VALUE", action="append", default=[],
        help="an override added to every run of the spec, e.g. where your data lie: --with dataset.path=/data/imagenet "
        "(run ids cover the content of local weights and data, so the spec finds runs made on them only so)",
    )
    args = parser.parse_args(argv)
    try:
        if args.spec is None:
            return _list_runs(args.runs)
        return _paper_table(args)
    except ConfigError as err:
        print(f"trimlab-table: error: {err}", file=sys.stderr)
        return 2
    except RunStopped as err:
        print(f"trimlab-table: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("trimlab-table: interrupted", file=sys.stderr)
        return 130


def _list_runs(runs_dir: Path) -> int:
    if not runs_dir.is_dir():
        print(f"trimlab-table: no runs folder at {runs_dir}; run `trimlab` first or pass --runs", file=sys.stderr)
        return 2
    found = _scan(runs_dir)
    _report(found)
    print(markdown(found.completed, load_predictions(found.completed, found.folders)) if found.completed else f"no completed runs under {runs_dir}")
    return 0


def _paper_table(args: argparse.Namespace) -> int:
    path = spec_path(args.spec)
    spec = load_spec(path, args.block or default_block(path))
    if args.seeds:
        spec.seeds = args.seeds
    spec.cells = [dataclasses.replace(c, overrides=(*c.overrides, *args.with_overrides)) for c in spec.cells]
    if args.run_missing and (args.wandb or args.runs.name != "runs"):
        raise ConfigError("--run-missing writes runs where trimlab does: pass --runs <output_dir>/runs (and no --wandb)")
    if (args.launcher or args.launcher_args) and not (args.run_missing and args.launcher):
        raise ConfigError("--launcher NAME hands the missing runs to a Hydra launcher: pass it with --run-missing (--launcher-arg needs both)")
    on_launcher = launcher_overrides(args.launcher, args.launcher_args) if args.launcher else None
    run_ids = trimlab_run_ids(spec)
    results = aggregate(spec, run_ids, *_records(args))
    failed = []
    if args.run_missing and any(r.missing_seeds for r in results):
        todo = sum(len(r.missing_seeds) for r in results)
        if on_launcher is None:
            failed = run_missing(results, args.runs.parent)
        else:
            run_missing_on_launcher(results, args.runs.parent, args.launcher, on_launcher)
        results = aggregate(spec, run_ids, *_records(args))
        if on_launcher is not None:  # the jobs ran elsewhere: a run their records do not show completed failed
            failed = [(r, seed) for r in results for seed in r.missing_seeds]
    text = spec_markdown(spec, results)
    print(text)
    out = args.out or Path("outputs/tables") / f"{spec.path.stem}-{spec.block}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(text + "\n")
        (out / "table.tex").write_text(spec_latex(spec, results) + "\n")
        (out / "table.csv").write_text(spec_csv(spec, results))
    except OSError as err:
        raise ConfigError(f"cannot write the table to {out} ({err.strerror or err}); pass --out <a folder you can write>") from err
    from trimlab.results.plot import pareto_plot

    pareto_plot(results, out / "pareto", f"{spec.title} ({spec.block})", f"{spec.metric} (×{spec.scale:g})")
    print(f"\nwritten: {out}/table.md, table.tex, table.csv, pareto.png, pareto.svg", file=sys.stderr)
    if failed:
        why = "their records say why (status failed)" if on_launcher is None else (
            f"their records say why; a run with none did not start: see the launcher's logs (Submitit's in {args.runs}/.attempts/.submitit)"
        )
        print(f"trimlab-table: {len(failed)} of {todo} run(s) failed; {why}:", file=sys.stderr)
        print("\n".join(f"- {' / '.join(r.cell.row)} · {r.cell.column} · seed {seed}: `{command(r, seed)}`" for r, seed in failed), file=sys.stderr)
        return 1
    return 0


def _records(args: argparse.Namespace) -> tuple[dict[str, RunRecord], dict[str, Predictions]]:
    """Completed records by run id, and the predictions of those whose folder holds them (none from W&B)."""
    if args.wandb:
        return {r.run_id: r for r in collect_wandb(args.wandb)}, {}
    if not args.runs.is_dir():
        return {}, {}
    found = _scan(args.runs)
    _report(found)
    return {r.run_id: r for r in found.completed}, load_predictions(found.completed, found.folders)


def _scan(runs_dir: Path) -> Scan:
    """The runs under ``runs_dir``; a single run folder given as ``--runs`` must hold a completed run."""
    if (runs_dir / RECORD_FILE).exists():
        completed_folder(runs_dir)
    return scan(runs_dir)


def _report(found: Scan) -> None:
    if found.report():
        print(found.report(), file=sys.stderr)


def _row_head(spec: Spec) -> str:
    return " / ".join(a.removesuffix("s") for a in spec.row_axes) or "model"


def _cell_text(result: CellResult | None, digits: int) -> str:
    if result is None:
        return ""
    ours = "—" if result.mean is None else _fmt(result.mean, digits) + (f" ± {_fmt(result.half_width, digits)}" if result.half_width is not None else "")
    if result.undecided:
        ours += f" {UNDECIDED}"
    if result.records and result.missing_seeds:
        ours += f" ({len(result.records)}/{len(result.records) + len(result.missing_seeds)} seeds)"
    if result.paper is None:
        return ours
    delta = "" if result.delta is None else f", {_fmt(result.delta, digits, signed=True)}"
    return f"{ours} [{_fmt(result.paper, digits)}{delta}]"


def _fmt(value: float | None, digits: int = 1, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _fmt_range(bounds: tuple[float, float] | None, digits: int, signed: bool = False) -> str:
    return "" if bounds is None else f"[{_fmt(bounds[0], digits, signed)}, {_fmt(bounds[1], digits, signed)}]"


def _fmt_vs_dense(vs_dense: tuple[float, float, float] | None, digits: int) -> str:
    """``Δ [low, high]``, marked where the interval includes 0."""
    if vs_dense is None:
        return ""
    text = f"{_fmt(vs_dense[0], digits, signed=True)} {_fmt_range(vs_dense[1:], digits, signed=True)}"
    return f"{text} {UNDECIDED}" if includes_zero(*vs_dense[1:]) else text


def _fmt_extra(value: float | None) -> str:
    """Counts (params, FLOPs) with thousands separators, ratios with 3 decimals."""
    if value is None:
        return ""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3f}"


def _raw(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _tex(text: str) -> str:
    return text.replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("%", "\\%").replace("&", "\\&")


def _quote(override: str) -> str:
    """Quote an override the shell would split or glob (a list value, a space)."""
    return f"'{override}'" if "[" in override or " " in override else override


if __name__ == "__main__":
    sys.exit(main())
