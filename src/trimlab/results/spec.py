"""A paper-table spec (``experiments/<paper>.yaml``): its grid of runs, where each run sits in the table, and the paper's numbers.

A spec's run blocks (``runs`` at full scale, ``embedded_runs`` on what ships
offline, ``<name>_runs`` for ablations) are grids: ``common`` overrides plus
axes (``models``, ``datasets``, ``methods``, …), each a mapping of entry name →
overrides. One entry of every axis makes one cell; ``table.rows`` names the
axes that label rows, the axis holding ``table.columns`` gives the columns,
and any other axis joins the row label. Each cell's run id is the one
``trimlab`` gives the same overrides, so records are found without guessing.

``paper_numbers`` holds the paper's number of each cell (model → column, or
model → row entry → column); ``claims`` are judged on a block's cells; a
``paper_tables`` section may keep a paper's other tables as printed, for a
reader (no cell is compared with it).

The specs ship inside the package (``trimlab/experiments``), so ``trimlab-table
pwlq2020`` finds one by name after a plain ``pip install``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from trimlab.config import METRICS, ConfigError


@dataclass(frozen=True)
class Cell:
    """One run of a spec (without its seed): where it sits in the table and the overrides that make it."""

    row: tuple[str, ...]
    column: str
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Claim:
    """A paper's claim, judged on one cell of a run block by the interval of a quantity of ours.

    ``vs_dense``: compressed − dense (× scale) with its paired bootstrap interval;
    ``vs_row``: this cell − the cell of row ``than`` in the same column, the same interval over the seeds
    both ran (a claim against another method, e.g. LTP against top-k);
    ``mean``: the cell's mean with its interval over seeds.
    """

    text: str
    row: tuple[str, ...]
    column: str
    quantity: str
    direction: str
    """``>=`` (``at_least``) or ``<=`` (``at_most``)."""
    threshold: float
    than: tuple[str, ...] = ()
    """``vs_row``: the row compared against."""


@dataclass
class Spec:
    """What ``trimlab-table`` needs from a spec file."""

    path: Path
    title: str
    block: str
    cells: list[Cell]
    rows: list[tuple[str, ...]]
    row_axes: list[str]
    """The axes whose entries label a row, in the row label's order (``models``, ``budgets``, …)."""
    columns: list[str]
    seeds: list[int]
    metric: str
    scale: float
    extra_columns: list[str]
    paper_numbers: dict[str, Any] = field(default_factory=dict)
    common_model: str | None = None
    """The model every run of the block shares (set in ``common``), when the rows do not name it."""
    claims: list[Claim] = field(default_factory=list)
    """The spec's ``claims`` judged on this block."""

    @property
    def digits(self) -> int:
        """Decimals a cell prints: 1 for percent (scale 100), 4 for fractions."""
        return 1 if self.scale >= 100 else 4

    def paper_number(self, cell: Cell) -> float | None:
        """The paper's number for ``cell``: ``paper_numbers`` walked by the row's parts then the column, or None.

        Where the rows do not name the model, the walk may start at the block's common model.
        """
        for keys in ((*cell.row, cell.column), (self.common_model, *cell.row, cell.column)):
            node: Any = self.paper_numbers
            for key in keys:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, (int, float)) and not isinstance(node, bool):
                return float(node)
        return None


def packaged_specs() -> list[str]:
    """The names of the specs that ship with trimlab (``experiments/<name>.yaml``), sorted."""
    return sorted(p.stem for p in _packaged_folder().glob("*.yaml"))


def spec_path(name_or_path: str) -> Path:
    """The spec file ``name_or_path`` means: a bare name (no folder, no ``.yaml``) that is no file here is a packaged spec.

    An unknown name raises :class:`ConfigError` listing the packaged specs; anything else is a path, read as given.
    """
    path = Path(name_or_path)
    if len(path.parts) > 1 or path.suffix in (".yaml", ".yml") or path.is_file():
        return path
    packaged = _packaged_folder() / f"{name_or_path}.yaml"
    if not packaged.is_file():
        raise ConfigError(
            f"no spec named {name_or_path!r}: the packaged specs are {', '.join(packaged_specs())} "
            "(or pass the path of a spec file, e.g. my_specs/paper.yaml)"
        )
    return packaged


def _packaged_folder() -> Path:
    """``trimlab/experiments`` where trimlab is installed (a wheel or a source folder: on the file system)."""
    return Path(str(files("trimlab") / "experiments"))


def default_block(path: Path) -> str:
    """``embedded_runs`` (what runs offline) when the spec has it, else ``runs``."""
    return "embedded_runs" if "embedded_runs" in _read(path) else "runs"


def load_spec(path: Path, block: str = "runs") -> Spec:
    """Read ``path`` and lay out the cells of its run block ``block``; a malformed spec raises :class:`ConfigError`."""
    content = _read(path)
    try:
        return _layout(path, content, block)
    except ConfigError:
        raise
    except (AttributeError, TypeError, ValueError, KeyError, IndexError) as err:  # a value of the wrong shape
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(
            f"{path} is not a well-formed spec ({detail}); lay it out as experiments/*.yaml are: "
            "<block>_runs: {common: [...], <axis>: {<entry>: [overrides]}}, table: {rows: [...], columns: [...]}"
        ) from err


def _layout(path: Path, content: dict[str, Any], block: str) -> Spec:
    """The cells, rows and columns of run block ``block`` of the spec ``content`` read from ``path``."""
    blocks = [key for key in content if key == "runs" or key.endswith("_runs")]
    if block not in blocks:
        raise ConfigError(f"{path} has no run block {block!r}; it has {', '.join(blocks) or 'none'} (choose one with --block)")
    table = content.get("table") or {}
    if not table.get("columns") or not table.get("rows"):
        raise ConfigError(f"{path}: table.rows and table.columns must be set")
    runs = content[block]
    axes = {name: entries for name, entries in runs.items() if name not in ("common", "seeds") and _is_axis(entries)}
    column_axis = _column_axis(axes, table["columns"], content.get("runs", {}), path)
    row_axes = [_axis_of(row, axes) for row in table["rows"]]
    row_axes = [a for a in row_axes if a is not None and a != column_axis]
    row_axes += [a for a in axes if a not in row_axes and a != column_axis]
    common = list(runs.get("common") or [])
    order = table.get("row_order") or {}

    cells = []
    for combo in itertools.product(*(list(axes[a].items()) for a in [*row_axes, column_axis])):
        *row_entries, (column, column_overrides) = combo
        row = tuple(name for name, _ in row_entries) or (_common_model(common) or "all",)
        overrides = [*common, *(o for _, entry in row_entries for o in entry), *column_overrides]
        cells.append(Cell(row, column, tuple(str(o) for o in overrides)))

    columns = [c for c in table["columns"] if c in axes[column_axis]] or list(axes[column_axis])
    columns += [c for c in axes[column_axis] if c not in columns]
    rows = sorted({c.row for c in cells}, key=lambda r: _row_rank(r, row_axes, order, axes))
    return Spec(
        path=path,
        title=(content.get("paper") or {}).get("title", path.stem),
        block=block,
        cells=cells,
        rows=rows,
        row_axes=row_axes,
        columns=columns,
        seeds=[int(s) for s in runs.get("seeds") or content.get("seeds") or [0]],  # a block's own seeds first
        metric=_metric_name(table, columns, path),
        scale=_scale(table, path),
        extra_columns=[str(c) for c in table.get("extra_columns") or []],
        paper_numbers=content.get("paper_numbers") or {},
        common_model=_common_model(common),
        claims=_claims(content.get("claims") or [], block, path),
    )


def _metric_name(table: dict[str, Any], columns: list[str], path: Path) -> str:
    """The table's ``metric``, or the one metric (ours) that ``metrics`` gives every column of this block."""
    if "metric" in table:
        if table["metric"] not in METRICS:
            raise ConfigError(f"{path}: table.metric {table['metric']!r} is not a metric trimlab measures; use one of {', '.join(METRICS)}")
        return str(table["metric"])
    per_column = table.get("metrics") or {}
    ours = {str((per_column.get(c) or {}).get("trimlab", "")) for c in columns}
    return ours.pop() if len(ours) == 1 and "" not in ours else "metric"


def _scale(table: dict[str, Any], path: Path) -> float:
    """``table.scale``: what a cell's metric is multiplied by (100 for percent)."""
    scale = table.get("scale", 1)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < float("inf"):
        raise ConfigError(f"{path}: table.scale {scale!r} must be a positive number (100 prints percent, 1 fractions)")
    return float(scale)


def _claims(entries: list[dict[str, Any]], block: str, path: Path) -> list[Claim]:
    """The claims whose ``block`` is this one: ``{claim, block, row: [...], column, quantity, at_least | at_most}``,
    and ``than: [...]`` (a row) with ``quantity: vs_row``."""
    claims = []
    for entry in entries:
        if entry.get("block") != block:
            continue
        bound = [(d, entry[k]) for k, d in (("at_least", ">="), ("at_most", "<=")) if k in entry]
        quantity = entry.get("quantity", "vs_dense")
        if len(bound) != 1 or quantity not in ("vs_dense", "vs_row", "mean") or not entry.get("claim") or "column" not in entry:
            raise ConfigError(
                f"{path}: claim {entry.get('claim')!r} needs `claim`, `row`, `column`, quantity vs_dense, vs_row or mean, "
                "and one of at_least / at_most"
            )
        if (quantity == "vs_row") != bool(entry.get("than")):
            raise ConfigError(f"{path}: claim {entry['claim']!r}: `than` (the row compared against) goes with quantity vs_row, and only there")
        claims.append(Claim(str(entry["claim"]), _row_key(entry.get("row")), str(entry["column"]), quantity, bound[0][0],
                            float(bound[0][1]), _row_key(entry.get("than"))))
    return claims


def _row_key(row: Any) -> tuple[str, ...]:
    """A claim's row, written as one name or a list of the row's parts."""
    row = row or []
    return tuple(str(r) for r in ([row] if isinstance(row, str) else row))


def _read(path: Path) -> dict[str, Any]:
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read the spec {path}: {' '.join(str(err).split())}") from err
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: a spec must be a mapping (runs:, table:, …) at its top level, not a {type(content).__name__}")
    return content


def run_overrides(cell: Cell, seed: int) -> list[str]:
    """The ``trimlab`` overrides of ``cell`` at ``seed``."""
    return [*cell.overrides, f"seed={seed}"]


def cell_run_ids(spec: Spec, compose: Callable[[list[str]], str]) -> dict[tuple[Cell, int], str]:
    """Run id of every (cell, seed); ``compose`` maps overrides to the id ``trimlab`` would give them."""
    return {(cell, seed): compose(run_overrides(cell, seed)) for cell in spec.cells for seed in spec.seeds}


def _is_axis(entries: Any) -> bool:
    return isinstance(entries, dict) and bool(entries) and all(isinstance(v, list) for v in entries.values())


def _axis_of(row: str, axes: dict[str, Any]) -> str | None:
    for name in (row, f"{row}s", f"{row}es"):
        if name in axes:
            return name
    return None


def _column_axis(axes: dict[str, Any], columns: list[str], main_runs: dict[str, Any], path: Path) -> str:
    """The axis whose entries are the table's columns (in this block, or named so in the main ``runs`` block)."""
    for name, entries in axes.items():
        if any(c in entries for c in columns):
            return name
    for name, entries in (main_runs or {}).items():
        if name in axes and _is_axis(entries) and any(c in entries for c in columns):
            return name
    raise ConfigError(f"{path}: no axis of the run block holds the table's columns {columns}")


def _common_model(common: list[str]) -> str | None:
    for override in common:
        key, _, value = str(override).partition("=")
        if key == "model":
            return value
    return None


def _row_rank(row: tuple[str, ...], row_axes: list[str], order: dict[str, list[str]], axes: dict[str, Any]) -> tuple:
    """Rows in ``table.row_order`` order where it lists them, else in the spec's own order."""
    rank = []
    for axis, part in zip(row_axes, row):
        singular = axis[:-1] if axis.endswith("s") else axis
        listed = list(order.get(singular) or order.get(axis) or [])
        own = list(axes[axis])
        rank.append(listed.index(part) if part in listed else len(listed) + own.index(part))
    return tuple(rank)
