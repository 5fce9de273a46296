"""Where the model looked: Grad-CAM (captum's LayerGradCam) heat maps for the galaxies it got wrong.

A confident mistake is most useful to a person when it shows *what* drove it: a bright companion, a
foreground star, a dust lane, the bulge instead of the arms. Grad-CAM weights the feature maps of a
residual stage by the gradient of the predicted class's logit and keeps the positive part.

The stage is the deepest one whose feature map is still at least MIN_CAM_SIZE pixels across: at the
project's 64-pixel default input, layer4's map is 2x2, far too coarse to point at anything, so a
shallower stage is used; at 224 pixels it is layer4 (7x7), Grad-CAM's usual choice.
"""

from __future__ import annotations

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

MIN_CAM_SIZE = 7
_STRIDES = {"layer4": 32, "layer3": 16, "layer2": 8, "layer1": 4}


def cam_layer(model: nn.Module, image_size: int) -> tuple[str, nn.Module]:
    """The residual stage Grad-CAM reads for inputs of `image_size` pixels (see the module docstring)."""
    backbone = model.backbone
    for name, stride in _STRIDES.items():
        if image_size // stride >= MIN_CAM_SIZE or name == "layer1":
            return name, getattr(backbone, name)
    raise AssertionError("unreachable")


def grad_cam(model: nn.Module, images: torch.Tensor, targets: np.ndarray | None = None) -> np.ndarray:
    """Heat maps (N, H, W) in [0, 1] at the input's resolution, for class `targets` (default: the
    predicted class). Each map is normalised to its own maximum (an all-zero map stays zero)."""
    model = model.eval()
    size = images.shape[-1]
    _, layer = cam_layer(model, size)
    if targets is None:
        with torch.no_grad():
            targets = model(images).argmax(dim=1).numpy()
    explainer = LayerGradCam(model, layer)
    # gradients are needed even when the network's weights are frozen; captum asks for them on the input
    with torch.enable_grad():
        attr = explainer.attribute(
            images.detach().clone(), target=torch.as_tensor(targets).long().tolist(), relu_attributions=True
        )
    maps = LayerAttribution.interpolate(attr.detach(), (images.shape[-2], size), interpolate_mode="bilinear")
    maps = maps[:, 0].clamp(min=0).numpy()
    peak = maps.reshape(len(maps), -1).max(axis=1)
    return np.where(peak[:, None, None] > 0, maps / np.maximum(peak, 1e-12)[:, None, None], 0.0)
