"""Grad-CAM over a tiny ResNet: the layer choice follows the input size, maps are normalised heat maps."""

from __future__ import annotations

import numpy as np
import torch

from galmorph.config import ModelConfig
from galmorph.evaluation.saliency import cam_layer, grad_cam
from galmorph.models.resnet import build_model


def tiny_model():
    torch.manual_seed(0)
    cfg = ModelConfig(arch="resnet18", weights="none", head="mlp", hidden=16, dropout=0.0)
    model = build_model(cfg).eval()
    model.freeze(("stem", "layer1", "layer2", "layer3", "layer4"))  # frozen mode: no weight needs a gradient
    return model


def test_cam_layer_is_the_deepest_stage_with_a_usable_map():
    model = tiny_model()
    assert cam_layer(model, 224)[0] == "layer4"
    assert cam_layer(model, 112)[0] == "layer3"
    assert cam_layer(model, 64)[0] == "layer2"
    assert cam_layer(model, 16)[0] == "layer1"


def test_grad_cam_maps_are_input_sized_and_normalised_even_for_a_frozen_backbone():
    model = tiny_model()
    x = torch.randn(3, 3, 64, 64)
    x[0, :, 40:56, 8:24] += 4.0  # a bright blob off-centre
    maps = grad_cam(model, x)
    assert maps.shape == (3, 64, 64)
    assert np.all(maps >= 0) and np.all(maps <= 1 + 1e-6)
    peaks = maps.reshape(3, -1).max(axis=1)
    assert np.all(np.isclose(peaks, 1.0) | (peaks == 0)) and np.isclose(peaks, 1.0).any()  # each to its own max
    # the default target is the predicted class; the other class gives other maps
    with torch.no_grad():
        predicted = model(x).argmax(dim=1).numpy()
    np.testing.assert_allclose(grad_cam(model, x, targets=predicted), maps, atol=1e-6)
    other = grad_cam(model, x, targets=1 - predicted)
    assert not any(np.allclose(other[i], maps[i], atol=1e-3) for i in range(3))
    assert not any(p.grad is not None for p in model.parameters())
