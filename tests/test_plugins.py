"""A package outside trimlab adds a method (entry-point group ``trimlab.methods``) or a token selector
(``trimlab.selectors``); a broken one is skipped."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import trimlab
from trimlab.config import ConfigError
from trimlab.methods import method_kinds, plugin_methods
from trimlab.models.build import build_model
from trimlab.results.record import RECORD_FILE, read_record
from trimlab.saved_model import MODEL_DIR, STRUCTURE_FILE, read_model, save_model, selector_forms

FIXTURE = Path(__file__).parent / "fixtures" / "plugin_pkg"


def install(site: Path, distribution: str, entry_points: str, package: str | None = None) -> None:
    """What pip leaves in site-packages, written by hand: the package (copied from the fixture) and its dist-info."""
    if package is not None:
        shutil.copytree(FIXTURE / package, site / package)
    info = site / f"{distribution}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(entry_points)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on ``sys.path`` to install plugins into; the plugin registry is read afresh in it and after it."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    plugin_methods.cache_clear()
    selector_forms.cache_clear()
    yield folder
    plugin_methods.cache_clear()
    selector_forms.cache_clear()
    for name in [m for m in sys.modules if m.startswith("trimlab_")]:
        del sys.modules[name]


def test_a_plugin_method_runs_from_the_command_line(site: Path, tmp_path: Path, tiny_run: tuple[str, ...]) -> None:
    install(site, "trimlab_magnitude", "[trimlab.methods]\nmagnitude = trimlab_magnitude.schema\n", "trimlab_magnitude")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(Path(trimlab.__file__).parents[1])])}
    overrides = [o for o in tiny_run if not o.startswith("method=")]
    workdir = tmp_path / "work"
    workdir.mkdir()

    def trimlab_cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "trimlab.cli", *args]
        return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)

    listed = trimlab_cli("--help")
    assert "magnitude" in next(line for line in listed.stdout.splitlines() if line.startswith("method:"))
    refused = trimlab_cli(*overrides, "method=magnitude", "method.amount=1.5")
    assert refused.returncode == 2 and "method.amount=1.5 is out of range" in refused.stderr
    done = trimlab_cli(*overrides, "method=magnitude", "method.amount=0.3")
    assert done.returncode == 0, done.stderr[-3000:]
    (record_file,) = (workdir / "outputs" / "runs").glob(f"*/{RECORD_FILE}")
    record = read_record(record_file)
    assert record.status == "completed" and record.method == "magnitude"
    assert record.config["method"]["amount"] == 0.3 and record.compressed["zeroed"] > 0


def test_a_broken_plugin_is_skipped_with_one_line_naming_it(site: Path, caplog: pytest.LogCaptureFixture) -> None:
    install(site, "trimlab_magnitude", "[trimlab.methods]\nmagnitude = trimlab_magnitude.schema\n", "trimlab_magnitude")
    install(site, "broken_import", "[trimlab.methods]\nghost = trimlab_ghost.schema\n")
    install(site, "no_kind", "[trimlab.methods]\nplain = trimlab_magnitude.method\n")
    install(site, "clash", "[trimlab.methods]\nagain = trimlab_magnitude.schema:KIND\n")
    with caplog.at_level(logging.WARNING, logger="trimlab.plugins"):
        kinds = method_kinds()
    assert "magnitude_schema" in kinds and "fisher_prune_schema" in kinds  # the good plugin and trimlab's own
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    expected = {
        "broken_import": "'ghost = trimlab_ghost.schema' of broken_import: ModuleNotFoundError: No module named 'trimlab_ghost'",
        "no_kind": "'plain = trimlab_magnitude.method' of no_kind: trimlab_magnitude.method declares no KIND",
        "clash": "'again = trimlab_magnitude.schema:KIND' of clash: its schema name magnitude_schema is taken",
    }
    for dist, text in expected.items():
        assert any(text in line and line.startswith("trimlab: skipped the plugin trimlab.methods entry point") for line in lines), (dist, lines)


def test_a_plugin_cannot_take_a_builtin_name(site: Path, caplog: pytest.LogCaptureFixture) -> None:
    package = site / "trimlab_shadow"
    shutil.copytree(FIXTURE / "trimlab_magnitude", package)
    (package / "schema.py").write_text((package / "schema.py").read_text().replace('"magnitude_schema"', '"shadow_schema"'))
    (package / "magnitude.yaml").rename(package / "dense.yaml")
    install(site, "shadow", "[trimlab.methods]\nshadow = trimlab_shadow.schema\n")
    with caplog.at_level(logging.WARNING, logger="trimlab.plugins"):
        assert "shadow_schema" not in method_kinds()
    assert "method=dense is already an option of trimlab" in caplog.text


def test_a_plugin_selector_is_saved_under_its_key_and_rebuilt(site: Path, compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg("model=vit_digits", "dataset=digits", "method=dense", "budget=none")
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.dataset.num_labels).model.eval()
    images = {"pixel_values": torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(1))}
    shutil.copytree(FIXTURE / "trimlab_magnitude", site / "trimlab_magnitude")
    from trimlab_magnitude.selector import EveryOtherToken

    model.encoder.token_selector = EveryOtherToken(2)
    with pytest.raises(TypeError, match="EveryOtherToken has no stored form; register .* group trimlab.selectors"):
        save_model(model, tmp_path / "unregistered", cfg.model, cfg.dataset.num_labels)
    install(site, "trimlab_magnitude", "[trimlab.selectors]\nevery_other = trimlab_magnitude.selector:FORM\n")
    selector_forms.cache_clear()  # the registry is read once per process: as if trimlab started after the install
    saved = save_model(model, tmp_path / MODEL_DIR, cfg.model, cfg.dataset.num_labels)
    structure = json.loads((saved.path / STRUCTURE_FILE).read_text())
    assert structure["token_selector"] == {"kind": "every_other", "at": 2}
    rebuilt = read_model(saved.path)
    assert type(rebuilt.encoder.token_selector) is EveryOtherToken and rebuilt.encoder.token_selector.at == 2
    expected, out = model(images), rebuilt(images)
    assert torch.equal(out.logits, expected.logits)
    assert out.encoder.kept_tokens[-1].float().mean() < expected.encoder.kept_tokens[0].float().mean()  # it removed tokens
    selector_forms.cache_clear()
    for name in [m for m in sys.modules if m.startswith("trimlab_")]:
        del sys.modules[name]
    (site / "trimlab_magnitude-0.1.0.dist-info").rename(tmp_path / "uninstalled")
    with pytest.raises(ConfigError, match="token_selector.kind='every_other' is not one of thresholds, topk, sait .*installed"):
        read_model(saved.path)
