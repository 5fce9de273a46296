"""The network: shapes per arch and head, weight loading, freezing, layer decay, BN folding, model files."""

from __future__ import annotations

import dataclasses
import urllib.error

import pytest
import torch
import torchvision

from galmorph.config import replace
from galmorph.errors import UserError
from galmorph.models import resnet
from galmorph.models.resnet import (
    build_model,
    fold_batchnorm,
    fold_input_standardization,
    load_model,
    param_groups,
    save_model,
    set_trainable,
)
from tests.training_utils import one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture
def cfg(params):
    return replace(params.model, arch="resnet18", weights="none", hidden=16, dropout=0.1)


@pytest.mark.parametrize(
    ("arch", "head", "dim"),
    [("resnet18", "mlp", 512), ("resnet34", "linear", 512), ("resnet101", "linear", 2048)],
)
def test_shapes_per_arch_and_head(cfg, arch, head, dim):
    model = build_model(replace(cfg, arch=arch, head=head)).eval()
    assert model.feature_dim == dim
    with torch.inference_mode():
        assert model.backbone(torch.zeros(2, 3, 32, 32)).shape == (2, dim)
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 2)
    linears = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    if head == "mlp":
        assert [(m.in_features, m.out_features) for m in linears] == [(dim, 16), (16, 2)]
        assert isinstance(model.head[1], torch.nn.ReLU) and isinstance(model.head[2], torch.nn.Dropout)
    else:
        assert isinstance(model.head[0], torch.nn.Dropout) and [(m.in_features, m.out_features) for m in linears] == [
            (dim, 2)
        ]


def test_resnet50_mlp_head_maps_2048_features_to_two_finite_logits(params):
    model = build_model(replace(params.model, arch="resnet50", weights="none", head="mlp", hidden=1024)).eval()
    with torch.inference_mode():
        logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    assert (model.head[0].in_features, model.head[0].out_features, model.head[-1].out_features) == (2048, 1024, 2)


def test_unknown_arch_is_a_user_error(cfg):
    with pytest.raises(UserError, match="model.arch"):
        build_model(dataclasses.replace(cfg, arch="vgg16"))  # past config validation, as a stale file could be


def test_weights_from_a_torchvision_state_dict(cfg, tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "tv.pt"
    torch.save(reference.state_dict(), path)
    model = build_model(replace(cfg, weights=str(path)))
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.backbone.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)


def test_weights_from_a_galmorph_model_file_take_the_head_too(cfg, params, tmp_path):
    torch.manual_seed(1)
    trained = build_model(cfg)
    save_model(tmp_path / "model.pt", trained, cfg, params.preprocess, temperature=1.5)
    torch.manual_seed(2)
    model = build_model(replace(cfg, weights=str(tmp_path / "model.pt")))
    for k, v in trained.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_bad_weights_paths_are_user_errors(cfg, tmp_path):
    with pytest.raises(UserError, match="no such file"):
        build_model(replace(cfg, weights=str(tmp_path / "missing.pt")))
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="not a readable torch state dict"):
        build_model(replace(cfg, weights=str(tmp_path / "junk.pt")))
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pt")
    with pytest.raises(UserError, match="does not fit a resnet18 backbone"):
        build_model(replace(cfg, weights=str(tmp_path / "r34.pt")))


def test_imagenet_missing_says_which_file_goes_where(cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError) as err:
        build_model(replace(cfg, weights="imagenet"))
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "\n" not in message


def test_imagenet_from_the_hub_cache_without_network(cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried the network"))
    _url, path = resnet.imagenet_file("resnet18")
    path.parent.mkdir(parents=True)
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), path)
    model = build_model(replace(cfg, weights="imagenet"))
    assert torch.equal(model.backbone.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)


def test_frozen_stages_do_not_change_and_keep_bn_statistics(cfg):
    torch.manual_seed(0)
    model = build_model(cfg)
    set_trainable(model, "finetune", 2)  # layer3, layer4 and the head train
    model.train()
    assert not any(p.requires_grad for p in model.backbone.layer2.parameters())
    assert all(p.requires_grad for p in model.backbone.layer3.parameters())
    assert not model.backbone.bn1.training and not model.backbone.layer1[0].bn1.training
    assert model.backbone.layer4[0].bn1.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(param_groups(model, 0.1, 0.0, 0.5), lr=0.1)
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    opt.step()
    after = model.state_dict()
    for k in before:
        frozen = k.startswith(("backbone.conv1", "backbone.bn1", "backbone.layer1", "backbone.layer2"))
        assert torch.equal(before[k], after[k]) == frozen or k.endswith("num_batches_tracked"), k


def test_frozen_mode_trains_only_the_head(cfg):
    model = build_model(cfg)
    set_trainable(model, "frozen", 0)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    with pytest.raises(UserError, match="unfreeze_blocks"):
        set_trainable(model, "finetune", 5)


def test_layer_decay_groups(cfg):
    model = build_model(cfg)
    set_trainable(model, "finetune", 0)
    groups = {g["name"]: g for g in param_groups(model, 1.0, 0.01, 0.5)}
    lrs = {name.removesuffix("_no_wd"): g["lr"] for name, g in groups.items()}
    assert lrs == {"head": 1.0, "layer4": 0.5, "layer3": 0.25, "layer2": 0.125, "layer1": 0.0625, "stem": 0.03125}
    assert groups["layer4_no_wd"]["weight_decay"] == 0.0 and groups["layer4"]["weight_decay"] == 0.01
    assert all(p.ndim <= 1 for p in groups["head_no_wd"]["params"])
    n_groups = sum(len(g["params"]) for g in groups.values())
    assert n_groups == len(list(model.parameters()))
    set_trainable(model, "finetune", 1)
    assert {g["name"].removesuffix("_no_wd") for g in param_groups(model, 1.0, 0.0, 0.5)} == {"head", "layer4"}


def test_fold_batchnorm_is_exact(cfg):
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    with torch.no_grad():
        for _ in range(3):  # give BN non-trivial running statistics
            model(torch.randn(8, 3, 32, 32) * 2 + 0.5)
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)


def test_fold_input_standardization_is_exact(cfg):
    model = build_model(cfg).eval()
    x = torch.randn(5, 512) * 3 + 1
    mean, std = x.mean(0), x.std(0) + 0.1
    with torch.inference_mode():
        expected = model.head((x - mean) / std)
        fold_input_standardization(model.head, mean, std)
        torch.testing.assert_close(model.head(x), expected, rtol=1e-4, atol=1e-4)


def test_model_file_round_trip_with_weights_only(cfg, params, tmp_path):
    model = build_model(cfg)
    save_model(tmp_path / "m.pt", model, cfg, params.preprocess, temperature=1.7, metrics={"val_acc": 0.9})
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    assert raw["classes"] == ["spiral", "elliptical"] and raw["temperature"] == pytest.approx(1.7)
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.model_cfg == cfg and loaded.preprocess == params.preprocess and loaded.temperature == 1.7
    assert not loaded.model.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v)
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "nope.pt")
