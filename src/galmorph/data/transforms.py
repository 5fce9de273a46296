"""Transform presets (torchvision references' presets.py shape) and the dihedral views.

EvalPreset is the only preprocessing of evaluate, predict and serve, so training and serving cannot
drift apart. Galaxies have no preferred orientation, hence any-angle rotation and flips in training and
the eight exact symmetries of the square as free augmentations (embedding cache) and test-time views.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torchvision.transforms import v2 as T

from galmorph.config import AugmentConfig, PreprocessConfig
from galmorph.errors import UserError

# ImageNet statistics: right for imagenet weights, harmless for weights trained from scratch.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _centre(cfg: PreprocessConfig) -> list:
    # Resize to 424 (the SDSS cut-out size, so crop means the same pixels whatever the file's size), keep the
    # central crop where the galaxy is, then scale to the network's input.
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


VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "rot90": lambda x: torch.rot90(x, 1, (-2, -1)),
    "rot180": lambda x: torch.rot90(x, 2, (-2, -1)),
    "rot270": lambda x: torch.rot90(x, 3, (-2, -1)),
    "hflip": lambda x: torch.flip(x, (-1,)),
    "vflip": lambda x: torch.flip(x, (-2,)),
    "transpose": lambda x: x.transpose(-2, -1),
    "antitranspose": lambda x: torch.rot90(x, 2, (-2, -1)).transpose(-2, -1),
}
"""The eight symmetries of the square (the dihedral group D4), applied to (..., H, W) image tensors."""


def check_views(views: Sequence[str], where: str = "embed.views") -> list[str]:
    unknown = [v for v in views if v not in VIEWS]
    if unknown or not views:
        raise UserError(f"params: {where}: expected a non-empty list of {', '.join(VIEWS)}, got {list(views)!r}")
    if len(set(views)) != len(views):
        raise UserError(f"params: {where}: views repeat: {list(views)!r}")
    return list(views)


def apply_view(x: torch.Tensor, view: str) -> torch.Tensor:
    return VIEWS[view](x)
