"""model.weights from timm and the Hugging Face hub (Zoobot's encoders): a timm ResNet saved the way the hub
serves it, loaded with no network from the hub cache, a local folder or a safetensors file, and the one-line
errors (not in the cache while offline, a wrong architecture, not a ResNet)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch

from galmorph.config import ModelConfig
from galmorph.errors import UserError
from galmorph.models.resnet import build_model
from tests.training_utils import one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)
ZOOBOT = "mwalmsley/zoobot-encoder-resnet50"
CFG = ModelConfig(arch="resnet50", weights="none", head="linear", hidden=8, dropout=0.0)


@pytest.fixture
def offline(tmp_path, monkeypatch) -> Path:
    """An empty hub cache of our own and no network: HF_HUB_OFFLINE as huggingface_hub read it at import."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def _random_timm(arch: str, folder: Path, **kwargs) -> torch.nn.Module:
    """A timm model with random weights, written as a hub repo holds it (config.json + model.safetensors)."""
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, **kwargs)
    folder.mkdir(parents=True, exist_ok=True)
    timm.models.save_for_hf(model, str(folder), model_args=kwargs or None, safe_serialization=True)
    model.reset_classifier(0)
    return model.eval()


def _same_features(net: torch.nn.Module, reference: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None = None):
    with torch.no_grad():
        torch.testing.assert_close(net.eval().backbone(x), reference(x if y is None else y), rtol=1e-4, atol=1e-5)


def test_zoobot_id_loads_from_the_hub_cache_offline_onto_the_torchvision_resnet(offline):
    # placed by hand exactly as the offline error tells a user to
    repo = offline / f"models--{ZOOBOT.replace('/', '--')}"
    reference = _random_timm("resnet50", repo / "snapshots" / "main")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("main")
    net = build_model(dataclasses.replace(CFG, weights=f"hf_hub:{ZOOBOT}"))
    _same_features(net, reference, torch.randn(2, 3, 64, 64))


def test_a_local_folder_or_safetensors_file_of_a_timm_resnet_loads(offline, tmp_path):
    folder = tmp_path / "zoobot"
    reference = _random_timm("resnet18", folder)
    x = torch.randn(2, 3, 48, 48)
    cfg = dataclasses.replace(CFG, arch="resnet18")
    for weights in (f"local-dir:{folder}", str(folder), str(folder / "model.safetensors")):
        _same_features(build_model(dataclasses.replace(cfg, weights=weights)), reference, x)


def test_a_greyscale_encoder_takes_rgb_copies_of_grey_images(offline, tmp_path):
    reference = _random_timm("resnet18", tmp_path / "grey", in_chans=1)
    net = build_model(dataclasses.replace(CFG, arch="resnet18", weights=f"local-dir:{tmp_path / 'grey'}"))
    grey = torch.randn(2, 1, 48, 48)
    _same_features(net, reference, grey.repeat(1, 3, 1, 1), grey)


def test_offline_without_the_files_is_one_line_naming_the_cache_folder_and_files(offline):
    with pytest.raises(UserError) as err:
        build_model(dataclasses.replace(CFG, weights=f"hf_hub:{ZOOBOT}"))
    message = str(err.value)
    assert "\n" not in message
    folder = offline / "models--mwalmsley--zoobot-encoder-resnet50"
    assert f"{folder}/snapshots/main/" in message and f"{folder}/refs/main" in message
    assert "config.json and model.safetensors" in message and f"https://huggingface.co/{ZOOBOT}" in message
    with pytest.raises(UserError, match=r"timm:resnet50\.a1_in1k: .*huggingface\.co/timm/resnet50\.a1_in1k"):
        build_model(dataclasses.replace(CFG, weights="timm:resnet50.a1_in1k"))


def test_wrong_arch_and_non_resnet_encoders_are_refused_by_name(offline, tmp_path):
    _random_timm("resnet18", tmp_path / "r18")
    with pytest.raises(UserError, match="does not fit a resnet50 backbone"):
        build_model(dataclasses.replace(CFG, weights=f"local-dir:{tmp_path / 'r18'}"))
    _random_timm("mobilenetv3_small_050", tmp_path / "mobile")
    with pytest.raises(UserError, match="not a ResNet with torchvision's layout"):
        build_model(dataclasses.replace(CFG, weights=f"local-dir:{tmp_path / 'mobile'}"))
    with pytest.raises(UserError, match="config.json"):
        build_model(dataclasses.replace(CFG, weights=f"local-dir:{tmp_path / 'nothing'}"))
