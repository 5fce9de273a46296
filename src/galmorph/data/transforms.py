"""Transform presets (torchvision references' presets.py shape) and the dihedral views.

EvalPreset is the only preprocessing of evaluate, predict and serve, so training and serving cannot
drift apart. Galaxies have no preferred orientation, hence any-angle rotation and flips in training and
the eight exact symmetries of the square as free augmentations (embedding cache) and test-time views.
The framing is the fixed centre crop or, with preprocess.framing: adaptive, a square scaled to the central
source (data/framing.py); either way it comes from the preprocess stored in the model file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torchvision.transforms import v2 as T

from galmorph.config import AugmentConfig, PreprocessConfig
from galmorph.data.framing import frame_box
from galmorph.errors import UserError

# ImageNet statistics: right for imagenet weights, harmless for weights trained from scratch.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _centre(cfg: PreprocessConfig) -> list:
    # fixed: resize to 424 (the SDSS cut-out size, so crop means the same pixels whatever the file's size), keep
    # the central crop where the galaxy is, then scale to the network's input; adaptive: the galaxy's own frame
    if cfg.framing == "adaptive":
        return [AdaptiveFrame(cfg, cfg.image_size)]
    return [T.Resize(cfg.resize, antialias=True), T.CenterCrop(cfg.crop), T.Resize(cfg.image_size, antialias=True)]


def framed_box(img: Image.Image, cfg: PreprocessConfig) -> tuple[float, float, float, float]:
    """The square of `img` (left, top, right, bottom) that preprocess.framing: adaptive shows the network."""
    return frame_box(img, unit=cfg.resize, fallback=cfg.crop, scale=cfg.frame_scale, min_side=cfg.frame_min)


class AdaptiveFrame:
    """PIL image -> the square that frames its central source (data/framing.py), resized to `size` px in one
    antialiased resample (the crop and the resize at once: no 424-px intermediate)."""

    def __init__(self, cfg: PreprocessConfig, size: int) -> None:
        self.cfg, self.size = cfg, size

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.resize((self.size, self.size), Image.BILINEAR, box=framed_box(img, self.cfg))


def _to_tensor() -> list:
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)]


class EvalPreset:
    """PIL RGB image -> normalised float tensor (3, image_size, image_size)."""

    def __init__(self, cfg: PreprocessConfig) -> None:
        self.transforms = T.Compose(_centre(cfg) + _to_tensor())

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.transforms(img)


class TrainPreset:
    """EvalPreset's framing (fixed or adaptive) plus rotation, flips, small scale/translation and a small colour jitter."""

    def __init__(self, cfg: PreprocessConfig, aug: AugmentConfig) -> None:
        ops: list = [T.Resize(cfg.resize, antialias=True), T.CenterCrop(cfg.crop)]
        if cfg.framing == "adaptive":  # the augmentation scales and translates around the framed crop
            ops = [AdaptiveFrame(cfg, 2 * cfg.image_size)]
        elif cfg.crop > 2 * cfg.image_size:
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
