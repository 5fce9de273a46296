"""Transform presets (torchvision references' presets.py shape) and the dihedral views.

EvalPreset is the only preprocessing of evaluate, predict and serve, so training and serving cannot
drift apart. Galaxies have no preferred orientation, hence any-angle rotation and flips in training and
the eight exact symmetries of the square as free augmentations (embedding cache) and test-time views.
The framing is the fixed centre crop or, with preprocess.framing: adaptive, a square scaled to the central
source (data/framing.py); either way it comes from the preprocess stored in the model file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2 as T

from galmorph.config import AugmentConfig, PreprocessConfig
from galmorph.data.framing import frame_box
from galmorph.data.photometry import sky_steps
from galmorph.data.survey import SurveyAugment
from galmorph.errors import UserError

# ImageNet statistics: right for imagenet weights, harmless for weights trained from scratch.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _centre(cfg: PreprocessConfig) -> list:
    # fixed: resize to 424 (the SDSS cut-out size, so crop means the same pixels whatever the file's size), keep
    # the central crop where the galaxy is, then scale to the network's input; adaptive: the galaxy's own frame
    if cfg.framing == "adaptive":
        return [AdaptiveFrame(cfg, cfg.image_size)]
    if cfg.decode == "draft":
        return [FixedFrame(cfg, cfg.image_size)]
    return [T.Resize(cfg.resize, antialias=True), T.CenterCrop(cfg.crop), T.Resize(cfg.image_size, antialias=True)]


def draft_side(cfg: PreprocessConfig, size: int) -> int | None:
    """The short side a JPEG may be decoded down to (data.images.read_image's `draft`) when the framed square
    becomes `size` px: the smallest framed square (`crop`, or `frame_min` when adaptive) of the `resize` frame
    still has at least `size` pixels, so nothing is ever upsampled. None: decode in full (preprocess.decode)."""
    if cfg.decode != "draft":
        return None
    smallest = cfg.crop if cfg.framing == "fixed" else min(cfg.frame_min, cfg.crop)
    return math.ceil(size * cfg.resize / smallest)


class FixedFrame:
    """PIL image of any size -> the fixed centre crop (`crop` of a `resize` frame) at `size` px in one
    antialiased resample: the same pixels as Resize + CenterCrop + Resize, whatever scale the JPEG was decoded at."""

    def __init__(self, cfg: PreprocessConfig, size: int, context: float = 1.0) -> None:
        self.cfg, self.size, self.context = cfg, size, context

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        side = min(w, h) * min(self.cfg.crop / self.cfg.resize, 1.0)
        left, top = (w - side) / 2, (h - side) / 2
        return resample_box(img, widen((left, top, left + side, top + side), self.context), self.size)


Box = tuple[float, float, float, float]


def widen(box: Box, context: float) -> Box:
    """The square `context` times as wide as `box`, about the same centre (training's view of the sky around
    the frame, augment.context)."""
    left, top, right, bottom = box
    x, y, half = (left + right) / 2, (top + bottom) / 2, context * (right - left) / 2
    return x - half, y - half, x + half, y + half


def resample_box(img: Image.Image, box: Box, size: int) -> Image.Image:
    """`box` of `img` at `size` px in one antialiased resample; where the box runs past the image, black (the
    affine augmentation's fill)."""
    w, h = img.size
    left, top, right, bottom = box
    if left >= 0 and top >= 0 and right <= w and bottom <= h:
        return img.resize((size, size), Image.BILINEAR, box=box)
    per_px = size / (right - left)
    inside = (max(left, 0.0), max(top, 0.0), min(right, float(w)), min(bottom, float(h)))
    x0, y0 = round((inside[0] - left) * per_px), round((inside[1] - top) * per_px)
    x1, y1 = round((inside[2] - left) * per_px), round((inside[3] - top) * per_px)
    out = Image.new(img.mode, (size, size))
    if x1 > x0 and y1 > y0:
        out.paste(img.resize((x1 - x0, y1 - y0), Image.BILINEAR, box=inside), (x0, y0))
    return out


def framed_box(img: Image.Image, cfg: PreprocessConfig) -> tuple[float, float, float, float]:
    """The square of `img` (left, top, right, bottom) that preprocess.framing: adaptive shows the network."""
    return frame_box(img, unit=cfg.resize, fallback=cfg.crop, scale=cfg.frame_scale, min_side=cfg.frame_min)


class AdaptiveFrame:
    """PIL image -> the square that frames its central source (data/framing.py), resized to `size` px in one
    antialiased resample (the crop and the resize at once: no 424-px intermediate)."""

    def __init__(self, cfg: PreprocessConfig, size: int, context: float = 1.0) -> None:
        self.cfg, self.size, self.context = cfg, size, context

    def __call__(self, img: Image.Image) -> Image.Image:
        return resample_box(img, widen(framed_box(img, self.cfg), self.context), self.size)


def _to_tensor() -> list:
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)]


class EvalPreset:
    """PIL RGB image -> normalised float tensor (3, image_size, image_size). `draft`: how small the loader may
    decode a JPEG for it (pass it to data.images; None = in full)."""

    def __init__(self, cfg: PreprocessConfig) -> None:
        self.transforms = T.Compose(sky_steps(cfg) + _centre(cfg) + _to_tensor())
        self.draft = draft_side(cfg, cfg.image_size)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.transforms(img)


def context_side(cfg: PreprocessConfig, aug: AugmentConfig) -> int:
    """Side in px of a training image with its context: EvalPreset's square at twice image_size (where the
    augmentation works) widened by augment.context, with an even margin so the square itself is whole pixels."""
    side = 2 * cfg.image_size
    return side + 2 * round(side * (aug.context - 1.0) / 2)


def train_frame(cfg: PreprocessConfig, aug: AugmentConfig) -> list:
    """The framing of training images: EvalPreset's square at twice image_size with augment.context around it."""
    side = context_side(cfg, aug)
    context = side / (2 * cfg.image_size)
    if cfg.framing == "adaptive":  # the augmentation scales and translates around the framed crop
        return [AdaptiveFrame(cfg, side, context)]
    if cfg.decode == "draft" or side != 2 * cfg.image_size:
        return [FixedFrame(cfg, side, context)]
    return [T.Resize(cfg.resize, antialias=True), T.CenterCrop(cfg.crop), T.Resize(2 * cfg.image_size, antialias=True)]


class FramedUint8:
    """PIL image -> uint8 tensor (3, S, S) framed for training, S = context_side (twice image_size, widened by
    augment.context): what train.loader: cache keeps in memory, decoded once per run instead of once per epoch.
    The pixels per frame are those of twice image_size, so the JPEG draft is the same."""

    def __init__(self, cfg: PreprocessConfig, aug: AugmentConfig) -> None:
        self.transforms = T.Compose([*sky_steps(cfg), *train_frame(cfg, aug), T.PILToTensor()])
        self.draft = draft_side(cfg, 2 * cfg.image_size)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.transforms(img)


class RandomSqueeze:
    """augment.squeeze on a PIL image: its x axis shrunk about the centre to a share drawn from [low, high] (black
    fill, as RandomAffine's); the rotation after it points the short axis anywhere."""

    def __init__(self, squeeze: Sequence[float]) -> None:
        self.low, self.high = squeeze

    def __call__(self, img: Image.Image) -> Image.Image:
        q = float(torch.empty(1).uniform_(self.low, self.high))
        cx = img.width / 2
        # output (x, y) <- input (x / q + cx (1 - 1 / q), y)
        return img.transform(img.size, Image.Transform.AFFINE, (1 / q, 0, cx - cx / q, 0, 1, 0), Image.BILINEAR)


class TrainPreset:
    """EvalPreset's framing (fixed or adaptive) plus rotation, flips, small scale/translation and a small colour jitter."""

    def __init__(self, cfg: PreprocessConfig, aug: AugmentConfig) -> None:
        self.draft = draft_side(cfg, 2 * cfg.image_size)
        ops: list = [*sky_steps(cfg), T.Resize(cfg.resize, antialias=True), T.CenterCrop(cfg.crop)]
        side = context_side(cfg, aug)
        if cfg.framing == "adaptive" or cfg.decode == "draft" or side != 2 * cfg.image_size:
            ops = sky_steps(cfg) + train_frame(cfg, aug)
        elif cfg.crop > 2 * cfg.image_size:
            # augment at twice the input size, not at the crop: after the final resize the difference is only
            # resampling order, and the affine/jitter cost ~30% less per image (the loader must keep up on 2 cores)
            ops.append(T.Resize(2 * cfg.image_size, antialias=True))
        if aug.squeezes:
            ops.append(RandomSqueeze(aug.squeeze))
        if aug.rotation or aug.translate or aug.scale != [1.0, 1.0]:
            ops.append(
                T.RandomAffine(
                    degrees=aug.rotation,
                    translate=(aug.translate, aug.translate),
                    scale=tuple(aug.scale),
                    interpolation=T.InterpolationMode.BILINEAR,
                )
            )
        if side != 2 * cfg.image_size:  # the frame itself, out of its turned and scaled context
            ops.append(T.CenterCrop(2 * cfg.image_size))
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


class BatchAugment:
    """TrainPreset's augmentation on whole batches: uint8 (B, 3, S, S) framed images (FramedUint8) -> normalised
    float (B, 3, image_size, image_size). One affine resample per batch (rotation, flips, scale and translation
    in one matrix, which also cuts the frame out of its augment.context), the same small hue-free jitter, then an
    antialiased resize: tensor ops on the training process's threads instead of PIL per image in loader
    processes that compete with the network for 2 cores. Black fill, as RandomAffine's."""

    def __init__(self, cfg: PreprocessConfig, aug: AugmentConfig) -> None:
        self.size, self.aug = cfg.image_size, aug
        self.context = context_side(cfg, aug) / (2 * cfg.image_size)  # FramedUint8's square over the frame's
        self.mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(STD).view(1, 3, 1, 1)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        a, b, dev = self.aug, x.shape[0], x.device
        x = x.float().div_(255.0)

        def uniform(lo: float, hi: float) -> torch.Tensor:  # drawn on the CPU generator: the same on any device
            return (lo + (hi - lo) * torch.rand(b, generator=generator)).to(dev)

        def sign() -> torch.Tensor:
            flips = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0) if a.flip else torch.ones(b)
            return flips.to(dev)

        angle = uniform(-a.rotation, a.rotation) * (math.pi / 180.0)
        scale = uniform(*a.scale)
        squeeze = uniform(*a.squeeze) if a.squeezes else torch.ones(b, device=dev)  # the input's x axis, pre-rotation
        shift = [uniform(-2 * a.translate, 2 * a.translate) for _ in range(2)]  # normalised coords span 2
        flip = [sign(), sign()]
        # the cached square spans `context` frames: in its normalised coordinates the frame is 1 / context wide
        context = self.context
        if a.rotation or a.translate or a.flip or list(a.scale) != [1.0, 1.0] or a.squeezes or context != 1.0:
            # output -> input coordinates: un-flip, un-rotate, un-scale, un-shift, un-squeeze, into the context
            cos, sin = torch.cos(angle) / (scale * context), torch.sin(angle) / (scale * context)
            theta = torch.stack(
                [
                    torch.stack([cos * flip[0] / squeeze, sin * flip[1] / squeeze, -shift[0] / (context * squeeze)], 1),
                    torch.stack([-sin * flip[0], cos * flip[1], -shift[1] / context], 1),
                ],
                1,
            )
            side = round(x.shape[-1] / context)
            grid = F.affine_grid(theta, [b, x.shape[1], side, side], align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if a.color_jitter:
            j = a.color_jitter
            x = x * uniform(1 - j, 1 + j).view(b, 1, 1, 1)  # brightness
            grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
            mean = grey.mean((2, 3), keepdim=True)
            x = (x - mean) * uniform(1 - j, 1 + j).view(b, 1, 1, 1) + mean  # contrast
            grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
            x = ((x - grey) * uniform(1 - j, 1 + j).view(b, 1, 1, 1) + grey).clamp_(0.0, 1.0)  # saturation
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        x = SurveyAugment(self.aug.survey, generator)(x)  # other telescopes' look (augment.survey; off at p 0)
        return (x - self.mean.to(dev)) / self.std.to(dev)


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
