"""model.backbone.pretrained=imagenet (#19): torchvision's ImageNet weights through the
torch hub cache, with no network in the tests (any download attempt fails loudly)."""

from __future__ import annotations

import pytest
import torch
import torch.hub
from torchvision.models import resnet18, resnet50

from e2emfd.config import BackboneConfig, load_config
from e2emfd.models.backbone import SharedBackbone, imagenet_cache_file


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """A fresh TORCH_HOME whose hub cache starts empty; downloading raises."""

    def no_download(url, *args, **kwargs):
        raise AssertionError(f"test tried to download {url}")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def test_cached_imagenet_weights_load_without_network(offline_hub):
    reference = resnet18()
    file = offline_hub / "resnet18-f37072fd.pth"
    file.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), file)
    backbone = SharedBackbone(BackboneConfig(depth=18, width=64, pretrained="imagenet"))
    torch.testing.assert_close(backbone.trunk.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(
        backbone.trunk.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var
    )


def test_versions_name_their_own_files(offline_hub):
    assert imagenet_cache_file("imagenet", 50).name == "resnet50-11ad3fa6.pth"  # DEFAULT = V2
    assert imagenet_cache_file("imagenet:V1", 50).name == "resnet50-0676ba61.pth"
    assert imagenet_cache_file("imagenet:v2", 50).name == "resnet50-11ad3fa6.pth"
    assert imagenet_cache_file("imagenet", 34).name == "resnet34-b627a593.pth"
    assert imagenet_cache_file("imagenet", 50).parent == offline_hub
    # the V1 file loads into a width-64 ResNet-50 from the cache too
    offline_hub.mkdir(parents=True)
    torch.save(resnet50().state_dict(), offline_hub / "resnet50-0676ba61.pth")
    SharedBackbone(BackboneConfig(depth=50, width=64, pretrained="imagenet:V1"))


def test_offline_without_cache_names_the_file_and_folder(offline_hub):
    with pytest.raises(FileNotFoundError) as info:
        SharedBackbone(BackboneConfig(depth=50, width=64, pretrained="imagenet"))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(offline_hub / "resnet50-11ad3fa6.pth"))
    assert f"put it in {offline_hub}" in message
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in message


def test_other_widths_and_unknown_versions_are_errors(offline_hub):
    with pytest.raises(ValueError, match=r"base width 64.*model\.backbone\.width=16"):
        SharedBackbone(BackboneConfig(depth=18, width=16, pretrained="imagenet"))
    with pytest.raises(ValueError, match=r"torchvision has V1 ImageNet weights for ResNet-18"):
        SharedBackbone(BackboneConfig(depth=18, width=64, pretrained="imagenet:V2"))


def test_broken_cached_file_is_named(offline_hub):
    offline_hub.mkdir(parents=True)
    file = offline_hub / "resnet18-f37072fd.pth"
    file.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"resnet18-f37072fd\.pth: not a loadable state dict"):
        SharedBackbone(BackboneConfig(depth=18, width=64, pretrained="imagenet"))


def test_inference_loading_does_not_read_pretrained_weights(offline_hub, tmp_path):
    from e2emfd.config import config_to_dict
    from e2emfd.engine.checkpoint import load_model_for_inference, save_checkpoint
    from e2emfd.models import build_model

    cfg = load_config(
        None,
        [
            "model.backbone.depth=18",
            "model.backbone.width=8",
            "model.backbone.out_channels=16",
            "model.detection.enabled=false",
            "model.fusion.hidden=16",
            "model.fusion.pixel_channels=4",
        ],
    )
    model = build_model(cfg.model)
    cfg.model.backbone.pretrained = "imagenet"  # as a run that started from ImageNet records it
    path = save_checkpoint(
        tmp_path / "c.pt", {"model": model.state_dict(), "config": config_to_dict(cfg), "step": 1}
    )
    loaded, loaded_cfg = load_model_for_inference(path)  # no cache file, no network: fine
    assert loaded_cfg.model.backbone.pretrained == ""
