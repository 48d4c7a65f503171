"""``conf/``, ``experiments/`` and ``sweeps/`` ship inside the package, and ``trimlab-table`` finds a packaged spec by name."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from fnmatch import fnmatch
from importlib.resources import files
from pathlib import Path

import pytest

from trimlab.results.spec import packaged_specs, spec_path
from trimlab.results.table import main as table_main

ROOT = Path(__file__).parents[1]
SHIPPED = ("conf", "experiments", "sweeps")
"""The top-level folders that ship as package data (``src/trimlab/<name>`` links to each)."""


def shipped_files() -> list[str]:
    """Every file of the shipped folders, relative to the repository (``experiments/pwlq2020.yaml``, …)."""
    return sorted(
        p.relative_to(ROOT).as_posix()
        for folder in SHIPPED
        for p in (ROOT / folder).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )


def package_data_globs() -> list[str]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["trimlab"]


def matches(relative: str, pattern: str) -> bool:
    """setuptools' package-data glob: ``*`` stays within one folder."""
    parts, pattern_parts = relative.split("/"), pattern.split("/")
    return len(parts) == len(pattern_parts) and all(fnmatch(p, q) for p, q in zip(parts, pattern_parts))


@pytest.mark.parametrize("relative", [f for f in shipped_files() if not f.endswith(".py")])
def test_every_shipped_file_is_package_data(relative: str) -> None:
    assert (files("trimlab") / relative).read_bytes() == (ROOT / relative).read_bytes()
    assert any(matches(relative, g) for g in package_data_globs()), f"{relative} matches no package-data glob in pyproject.toml"


def test_the_wheel_holds_every_shipped_file(tmp_path: Path) -> None:
    """A real build (about 10 s): the links under src/trimlab and the package-data globs put the folders in the wheel."""
    pytest.importorskip("setuptools")
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("src", *SHIPPED):
        shutil.copytree(ROOT / folder, source / folder, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "wheel"), str(source)],
        capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "wheel").glob("trimlab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in shipped_files() if f"trimlab/{f}" not in names]
    assert not missing, f"not in the wheel: {missing}"


def test_a_bare_name_is_the_packaged_spec_wherever_you_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert packaged_specs() == sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml"))
    assert "pwlq2020" in packaged_specs()
    assert spec_path("pwlq2020").read_text() == (ROOT / "experiments" / "pwlq2020.yaml").read_text()


def test_a_path_stays_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert spec_path("experiments/pwlq2020.yaml") == Path("experiments/pwlq2020.yaml")  # read from here, not the package
    assert spec_path("pwlq2020.yaml") == Path("pwlq2020.yaml")
    (tmp_path / "pwlq2020").write_text("a local file wins over the packaged name")
    assert spec_path("pwlq2020") == Path("pwlq2020")


def test_an_unknown_name_is_one_line_listing_the_packaged_specs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert table_main(["pwlq2021", "--runs", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trimlab-table: error: no spec named 'pwlq2021'") and err.count("\n") == 1
    assert all(name in err for name in packaged_specs())


def test_help_names_the_packaged_specs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        table_main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "trimlab-table pwlq2020" in out
    assert all(name in out for name in packaged_specs())
