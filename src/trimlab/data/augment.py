"""DeiT's training augmentation for the grey image sets, built from timm's own implementations.

Per image: timm's ``create_transform`` (random resized crop, flip, RandAugment,
random erasing), applied to the stored image at the model's resolution. Per
batch: timm's ``Mixup`` (mixup or CutMix), whose soft targets take
``SoftTargetCrossEntropy``. See :class:`trimlab.config.AugmentConfig` for the keys.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from timm.data import Mixup, create_transform


def check_rand_augment(spec: str) -> None:
    """Raise ``ValueError`` when timm cannot parse ``spec`` or one of its ops can draw a posterize to 0 bits.

    DeiT's ``rand-m9-mstd0.5-inc1`` can: its magnitude noise reaches timm's cap of 10, where
    ``PosterizeIncreasing`` keeps 0 bits, which Pillow ≥ 10 refuses mid-training (and which would
    black the image out); ``-mmax9`` caps the magnitude at 9 (1 bit kept).
    """
    from timm.data.auto_augment import rand_augment_transform

    for op in rand_augment_transform(spec, {}).ops:
        if "Posterize" not in op.name:
            continue
        upper = op.magnitude_max or 10  # timm's clip of the drawn magnitude
        reach = (0.0, upper) if op.magnitude_std > 0 else (min(op.magnitude, upper),)
        if min(op.level_fn(m, op.hparams)[0] for m in reach) < 1:
            raise ValueError(f"its {op.name} can keep 0 bits at magnitude {upper}; cap the magnitude with -mmax{upper - 1}")


def transforms_images(rand_augment: str, crop_scale: float, hflip: float, random_erasing: float) -> bool:
    """Whether these settings change the training images (else they are used as evaluation sees them)."""
    return bool(rand_augment) or crop_scale < 1.0 or hflip > 0 or random_erasing > 0


def train_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    rand_augment: str,
    crop_scale: float,
    hflip: float,
    random_erasing: float,
) -> Callable[[Any], torch.Tensor]:
    """PIL image → normalised ``[C, H, W]`` tensor through timm's training pipeline (DeiT's, with these settings)."""
    return create_transform(
        image_size,
        is_training=True,
        scale=(crop_scale, 1.0),
        ratio=(3 / 4, 4 / 3) if crop_scale < 1.0 else (1.0, 1.0),  # crop_scale 1.0: the whole image
        hflip=hflip,
        auto_augment=rand_augment or None,
        interpolation="bicubic",
        mean=tuple(mean),
        std=tuple(std),
        re_prob=random_erasing,
        re_mode="pixel",
        re_count=1,
    )


def batch_mixer(mixup: float, cutmix: float, label_smoothing: float, num_classes: int) -> Mixup | None:
    """timm's ``Mixup`` for these alphas (``None`` when both are 0); it smooths the labels itself."""
    if mixup <= 0 and cutmix <= 0:
        return None
    return Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing, num_classes=num_classes)
