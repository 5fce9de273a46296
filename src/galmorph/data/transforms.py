"""Transform presets (torchvision references' presets.py shape).

EvalPreset is the only preprocessing of evaluate, predict and serve, so training and serving cannot
drift apart. Galaxies have no preferred orientation, hence any-angle rotation and flips in training.
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import v2 as T

from galmorph.config import AugmentConfig, PreprocessConfig

# ImageNet statistics: right for imagenet weights, harmless for weights trained from scratch.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _centre(cfg: PreprocessConfig) -> list:
    # The seed's framing: resize to 424 (SDSS cut-out size), keep the central 256, then scale to the input.
    return [T.Resize(cfg.resize, antialias=True), T.CenterCrop(cfg.crop), T.Resize(cfg.image_size, antialias=True)]


def _to_tensor() -> list:
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)]


class EvalPreset:
    """PIL RGB image -> normalised float tensor (3, image_size, image_size)."""

    def __init__(self, cfg: PreprocessConfig) -> None:
        self.transforms = T.Compose(_centre(cfg) + _to_tensor())

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.transforms(img)


class TrainPreset:
    """EvalPreset's framing plus rotation, flips, small scale/translation and a small colour jitter."""

    def __init__(self, cfg: PreprocessConfig, aug: AugmentConfig) -> None:
        ops: list = [T.Resize(cfg.resize, antialias=True), T.CenterCrop(cfg.crop)]
        if cfg.crop > 2 * cfg.image_size:
            # augment at twice the input size, not at the crop: after the final resize the difference is only
            # resampling order, and the affine/jitter cost ~30% less per image (the loader must keep up on 2 cores)
            ops.append(T.Resize(2 * cfg.image_size, antialias=True))
        if aug.rotation or aug.translate or aug.scale != [1.0, 1.0]:
            ops.append(
                T.RandomAffine(
                    degrees=aug.rotation,
                    translate=(aug.translate, aug.translate),
                    scale=tuple(aug.scale),
                    interpolation=T.InterpolationMode.BILINEAR,
                )
            )
        if aug.flip:
            ops += [T.RandomHorizontalFlip(), T.RandomVerticalFlip()]
        if aug.color_jitter:
            # colour carries morphology (spirals are bluer), so the jitter stays small and hue-free
            j = aug.color_jitter
            ops.append(T.ColorJitter(brightness=j, contrast=j, saturation=j))
        ops.append(T.Resize(cfg.image_size, antialias=True))
        self.transforms = T.Compose(ops + _to_tensor())

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.transforms(img)
