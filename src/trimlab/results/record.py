"""``RunRecord``: the one local file per run that tables are built from.

The run id is a short hash of the resolved config without paths and logging
knobs, plus the content fingerprint of every local file or folder the run reads,
so the same experiment always lands in the same folder, a finished run is never
done twice (dora's idea), and other weights or data never find its result. Records are written atomically, so a
crash never leaves a half-written ``record.json``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from trimlab.config import AugmentConfig, ConfigError
from trimlab.files import atomic_write_text, fingerprint

RECORD_FILE = "record.json"
IGNORED_FOR_ID = ("paths", "logger", "force", "hydra")
"""Top-level keys that do not change what a run computes."""
IGNORED_TRAINER_KEYS = ("progress_bar", "log_every_n_steps")
NEUTRAL_FOR_ID = {
    "trainer": {"num_nodes": 1, "gradient_clip_val": 0.0, "accumulate_grad_batches": 1},
    "model": {"packed": True, "revision": ""},
    "measure": {"device": "cpu", "deployed": True},
    "finetune": {"schedule": "linear", "augment": asdict(AugmentConfig())},
}
"""Keys added after runs were recorded: at these values they leave a run's id as it was, so finished runs stay found."""


def without_neutral(group: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` of a config group less the keys at their :data:`NEUTRAL_FOR_ID` value."""
    neutral = NEUTRAL_FOR_ID.get(group, {})
    return {k: v for k, v in values.items() if neutral.get(k, object()) != v}


def config_hash(node: Any, length: int = 10) -> str:
    """Short stable hash of a (resolved) config node or plain container."""
    data = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    blob = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:length]


LOCATION_KEYS = (
    "model.path",
    "dataset.data_dir",
    "dataset.path",
    "dataset.data_files.train",
    "dataset.data_files.validation",
    "dataset.data_files.test",
    "method.teacher",
)
"""Keys that may name a local file or folder the run reads (weights, data, a teacher checkpoint)."""
INPUTS_KEY = "inputs"
"""Where the content fingerprints of those files enter the id (absent when a run reads none, so such ids stay as they were)."""


def run_id(cfg: DictConfig) -> str:
    """The id of a run: hash of everything that changes its result, including the content of local inputs, never their location.

    A local file or folder stands for what the option names (its packaged
    value, e.g. the hub id) plus the fingerprint of its content: the same
    weights copied elsewhere keep the id, other weights or data get another.
    """
    data = {k: _plain(cfg[k]) for k in cfg if k not in IGNORED_FOR_ID}
    data["trainer"] = {k: v for k, v in data.get("trainer", {}).items() if k not in IGNORED_TRAINER_KEYS}
    for group in NEUTRAL_FOR_ID:
        data[group] = without_neutral(group, data[group])
    if data["dataset"].get("source") == "hf":  # counted from the data the fingerprints (or the hub name) cover: 0 or the count alike
        data["dataset"].pop("num_labels", None)
    read = locations(cfg)
    for key in read:
        group, *names = key.split(".")
        node = data[group]
        for name in names[:-1]:
            node = node[name]
        node[names[-1]] = _packaged_value(group, cfg[group].name, ".".join(names))
    if read:
        data[INPUTS_KEY] = input_fingerprints(read)
    return config_hash(data)


def locations(cfg: DictConfig) -> dict[str, dict[str, str]]:
    """The local files and folders a run reads (``model.path``, ...), each with the fingerprint of its content, for the record."""
    cache = Path(str(cfg.paths.cache_dir)).expanduser() if "paths" in cfg else None
    found = {}
    for key in LOCATION_KEYS:
        value = str(OmegaConf.select(cfg, key, default="") or "")
        if value and Path(value).expanduser().exists():  # what ``from_pretrained`` and the loaders read as a local path
            path = Path(value).expanduser().resolve()
            found[key] = {"path": str(path), "fingerprint": fingerprint(path, cache)}
    return found


def input_fingerprints(found: dict[str, dict[str, str]]) -> dict[str, str]:
    """Key → content fingerprint of the local inputs in ``locations`` (a completed run is reused only when they match)."""
    return {key: entry["fingerprint"] for key, entry in found.items() if "fingerprint" in entry}


@functools.cache
def _packaged_value(group: str, option: str, key: str) -> Any:
    """The value ``conf/<group>/<option>.yaml`` gives ``key`` (empty when trimlab ships no such option)."""
    resource = resources.files("trimlab.conf") / group / f"{option}.yaml"
    if not resource.is_file():
        return ""
    return OmegaConf.select(OmegaConf.create(resource.read_text()), key, default="")


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


@dataclass
class RunRecord:
    """Everything a table or dashboard needs about one run."""

    run_id: str
    status: str
    """``running``, ``completed``, ``failed`` or ``interrupted`` (a signal, or a ``running`` record whose process is gone)."""
    model: str
    dataset: str
    method: str
    budget: dict[str, Any]
    seed: int
    config: dict[str, Any]
    dense: dict[str, Any] = field(default_factory=dict)
    """Metrics of the uncompressed model: task metric, flops, params, latency."""
    compressed: dict[str, Any] = field(default_factory=dict)
    """The same metrics after the method."""
    ratios: dict[str, float] = field(default_factory=dict)
    """compressed / dense (flops, params, latency) and speedups."""
    stages: dict[str, float] = field(default_factory=dict)
    """Wall seconds of each stage (fine-tune, method steps, measurement)."""
    method_cost_s: float = 0.0
    """Wall seconds the method itself took (without the dense fine-tune)."""
    artifacts: dict[str, str] = field(default_factory=dict)
    """Name → path (relative to the run folder) of masks, plots, thresholds."""
    environment: dict[str, Any] = field(default_factory=dict)
    started_at: str = ""
    finished_at: str = ""
    error: str = ""
    stage: str = ""
    """The stage the run was in when this record was written (``finetune``, ``method``, ...): where it stopped."""
    locations: dict[str, dict[str, str]] = field(default_factory=dict)
    """Local weights and data read: path (not part of the id) and content fingerprint (part of it) of each;
    for hub weights, the hub id and the commit loaded (``{"hub": ..., "revision": ...}``)."""
    wandb_run_id: str = ""
    """The W&B run's own id: trimlab's run id, except where a ``wandb agent`` chose it."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_record(run_dir: Path, record: RunRecord, name: str = RECORD_FILE) -> Path:
    """Write the record atomically (temp file + rename in the same folder) as ``run_dir/name``."""
    path = run_dir / name
    atomic_write_text(path, json.dumps(record.to_dict(), indent=2, sort_keys=False, default=str))
    return path


def read_record(path: Path) -> RunRecord:
    """Load a record; an unreadable, truncated or foreign file raises :class:`ConfigError` naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return RunRecord(**data)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as err:
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise ConfigError(f"{path} is not a readable trimlab record ({reason}); move it away to run that run again") from err


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def environment() -> dict[str, Any]:
    """Versions, hardware, git commit and a digest of trimlab's source files (which an uncommitted edit changes),
    so a number can be traced to where it was made."""
    import torch

    versions = {}
    for pkg in ("trimlab", "torch", "lightning", "transformers", "timm", "hydra-core", "onnxruntime"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = ""
    cpuinfo = _cpuinfo()
    return {
        "versions": versions,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": _cpu_name(cpuinfo),
        "cpu_flags": cpu_int8_flags(cpuinfo),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "",
        "git_commit": _git_commit(),
        "trimlab_source": source_digest(),
    }


@functools.cache
def source_digest(package: Path = Path(__file__).parents[1]) -> str:
    """sha256 over the path and content of every Python file under ``package`` (trimlab's own; read once per process)."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _cpuinfo() -> str:
    """Linux's ``/proc/cpuinfo`` ("" where it cannot be read)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _cpu_name(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp")
"""The CPU features that decide which int8 kernels run, and how fast (VNNI: exact uint8 × int8 sums)."""


def cpu_int8_flags(cpuinfo: str) -> list[str]:
    """Which of :data:`INT8_FLAGS` the CPU that ``cpuinfo`` (Linux's ``/proc/cpuinfo``) describes has."""
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            present = set(line.split(":", 1)[1].split())
            return [flag for flag in INT8_FLAGS if flag in present]
    return []


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
