"""Survey and camera augmentations on whole training batches (augment.survey in params.yaml).

A model trained on SDSS cut-outs alone learns what SDSS images look like as much as what galaxies look like
(issue 9: DECaLS and camera photographs differ in PSF, pixel scale, noise, sky level and colour, colour
balance, stretch, saturated cores and star fields). SurveyAugment draws those differences at random on a batch
of float images (B, 3, H, W) in [0, 1], before the ImageNet normalisation: every image gets them with
probability `p` (0: off), then each effect with its own probability and a strength drawn from its range.
Vectorised over the batch (grouped convolutions, batched matmuls, one topk); the only Python loops run over
the effects and over at most PIXEL_LEVELS down-sampling sizes. Random numbers come from one torch.Generator,
so a seeded generator gives the same batch twice (training stays reproducible).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from galmorph.config import SurveyConfig

EFFECTS: tuple[str, ...] = ("stars", "blur", "pixel", "sky", "noise", "colour", "gamma", "saturate", "grey")
"""In the order applied: sources on the sky, then the optics (PSF), the detector (pixels, sky, noise), then
the picture-making (colour balance, stretch, clipping, greyscale)."""
PIXEL_LEVELS = 8
"""Down-sampling factors are drawn from this many evenly spaced values of pixel_scale (one resize per value)."""
LUMA = (0.299, 0.587, 0.114)
"""Rec. 601 weights: the brightness that saturates and the grey of greyscale."""


def only(cfg: SurveyConfig, effect: str) -> SurveyConfig:
    """`cfg` with every image getting `effect` alone (p = 1, its probability 1, every other effect's 0)."""
    if effect not in EFFECTS:
        raise ValueError(f"unknown survey effect {effect!r} (expected one of {', '.join(EFFECTS)})")
    return dataclasses.replace(cfg, p=1.0, **{f"{e}_p": float(e == effect) for e in EFFECTS})


class SurveyAugment:
    """(B, 3, H, W) float in [0, 1] -> the same shape and dtype in [0, 1], with survey differences drawn at random."""

    def __init__(self, cfg: SurveyConfig, generator: torch.Generator | None = None) -> None:
        self.cfg, self.generator = cfg, generator

    # random draws: always on the CPU generator, moved to the batch's device
    def _uniform(self, shape: Sequence[int], lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(tuple(shape), generator=self.generator)

    def _log_uniform(self, shape: Sequence[int], lo: float, hi: float) -> torch.Tensor:
        return torch.exp(self._uniform(shape, math.log(lo), math.log(hi)))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(f"expected a float batch of shape (B, 3, H, W), got {x.dtype} {tuple(x.shape)}")
        n = x.shape[0]
        if self.cfg.p <= 0 or n == 0:
            return x
        active = torch.rand(n, generator=self.generator) < self.cfg.p
        out = x.float().clone()
        for effect in EFFECTS:
            prob = getattr(self.cfg, f"{effect}_p")
            if prob <= 0:
                continue
            chosen = (active & (torch.rand(n, generator=self.generator) < prob)).nonzero().squeeze(1)
            if len(chosen):
                idx = chosen.to(out.device)
                out[idx] = getattr(self, f"_{effect}")(out[idx]).clamp_(0.0, 1.0)
        return out.to(x.dtype)

    def _stars(self, x: torch.Tensor) -> torch.Tensor:
        """A few Gaussian point sources per image (count, peak, width and a slight colour drawn per star)."""
        c = self.cfg
        n, _, h, w = x.shape
        most = c.stars_count[1]
        if most == 0:
            return x
        count = torch.randint(c.stars_count[0], most + 1, (n, 1), generator=self.generator)
        present = (torch.arange(most)[None, :] < count).float()  # (n, most)
        peak = self._uniform((n, most), *c.star_flux) * present
        colour = self._uniform((n, 3, most), 0.7, 1.0)
        amp = (peak[:, None, :] * colour).to(x.device)  # (n, 3, most)
        sigma = self._uniform((n, most, 1), *c.star_sigma).to(x.device)
        cx, cy = (self._uniform((n, most, 1), 0.0, float(s)).to(x.device) for s in (w, h))
        gx = torch.exp(-0.5 * ((torch.arange(w, device=x.device) + 0.5 - cx) / sigma) ** 2)  # (n, most, w)
        gy = torch.exp(-0.5 * ((torch.arange(h, device=x.device) + 0.5 - cy) / sigma) ** 2)  # (n, most, h)
        # sum over stars of amp x gy (outer) gx: one batched matmul (n, 3, h, most) @ (n, 1, most, w)
        return x + (amp[:, :, None, :] * gy.transpose(1, 2)[:, None]) @ gx[:, None]

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        """A Gaussian PSF of random width per image: two 1-D depthwise convolutions (one group per image channel)."""
        n, _, h, w = x.shape
        sigma = self._uniform((n, 1), *self.cfg.blur_sigma).to(x.device)
        r = max(1, min(math.ceil(3 * self.cfg.blur_sigma[1]), h - 1, w - 1))
        t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
        k = torch.exp(-0.5 * (t[None, :] / sigma) ** 2)
        k = (k / k.sum(1, keepdim=True)).repeat_interleave(3, 0)  # (n*3, 2r+1)
        y = F.pad(x.reshape(1, n * 3, h, w), (r, r, r, r), mode="replicate")
        y = F.conv2d(y, k[:, None, None, :], groups=n * 3)
        y = F.conv2d(y, k[:, None, :, None], groups=n * 3)
        return y.reshape(n, 3, h, w)

    def _pixel(self, x: torch.Tensor) -> torch.Tensor:
        """Coarser pixels: down-sampled (antialiased) to a random share of the side, then bilinearly back up."""
        n, _, h, w = x.shape
        lo, hi = self.cfg.pixel_scale
        levels = torch.linspace(lo, hi, PIXEL_LEVELS if hi > lo else 1)
        level = torch.randint(len(levels), (n,), generator=self.generator)
        out = x.clone()
        for i in level.unique().tolist():
            sel = (level == i).nonzero().squeeze(1).to(x.device)
            s = float(levels[i])
            small = (max(1, round(h * s)), max(1, round(w * s)))
            down = F.interpolate(x[sel], size=small, mode="bilinear", antialias=True, align_corners=False)
            out[sel] = F.interpolate(down, size=(h, w), mode="bilinear", align_corners=False)
        return out

    def _sky(self, x: torch.Tensor) -> torch.Tensor:
        """A sky level and colour: an offset per image and channel."""
        return x + self._uniform((x.shape[0], 3, 1, 1), *self.cfg.sky_offset).to(x.device, x.dtype)

    def _noise(self, x: torch.Tensor) -> torch.Tensor:
        """Read noise (Gaussian, random level) plus photon-like noise whose variance grows with the signal."""
        n = x.shape[0]
        read = self._uniform((n, 1, 1, 1), *self.cfg.noise_sigma).to(x.device, x.dtype)
        gain = self._uniform((n, 1, 1, 1), *self.cfg.noise_gain).to(x.device, x.dtype)
        z = torch.randn(tuple(x.shape), generator=self.generator).to(x.device, x.dtype)
        return x + z * torch.sqrt(read**2 + gain * x.clamp(min=0.0))

    def _colour(self, x: torch.Tensor) -> torch.Tensor:
        """Colour balance: a gain per image and channel (log-uniform)."""
        return x * self._log_uniform((x.shape[0], 3, 1, 1), *self.cfg.colour_gain).to(x.device, x.dtype)

    def _gamma(self, x: torch.Tensor) -> torch.Tensor:
        """Another stretch: x ** gamma, gamma log-uniform per image."""
        g = self._log_uniform((x.shape[0], 1, 1, 1), *self.cfg.gamma).to(x.device, x.dtype)
        return x.clamp(min=0.0) ** g

    def _saturate(self, x: torch.Tensor) -> torch.Tensor:
        """Saturated cores, as an over-exposed photograph has them: the image stretched so that the brightest
        share of its pixels (by luminance) clips, and those pixels flat white. An image whose brightest pixels
        are no brighter than its mean (a flat one) is left alone."""
        n, _, h, w = x.shape
        lum = (x * torch.tensor(LUMA, device=x.device, dtype=x.dtype)[:, None, None]).sum(1).reshape(n, h * w)
        share = self._uniform((n,), *self.cfg.saturate_fraction)
        k = (share * h * w).ceil().long().clamp(1, h * w).to(x.device)
        top = lum.topk(int(k.max()), dim=1).values
        threshold = top.gather(1, (k - 1)[:, None])
        core = threshold > lum.mean(1, keepdim=True)  # (n, 1)
        white = ((lum >= threshold) & core).reshape(n, 1, h, w)
        gain = torch.where(core, 1.0 / threshold.clamp(min=1e-6), torch.ones_like(threshold))
        return torch.where(white, torch.ones_like(x), x * gain[:, :, None, None])

    def _grey(self, x: torch.Tensor) -> torch.Tensor:
        """Greyscale: all three channels the luminance."""
        lum = (x * torch.tensor(LUMA, device=x.device, dtype=x.dtype)[:, None, None]).sum(1, keepdim=True)
        return lum.expand_as(x).clone()


def survey_images(images: Sequence[Image.Image], cfg: SurveyConfig, generator: torch.Generator) -> list[Image.Image]:
    """Same-sized 8-bit RGB pictures -> the same with SurveyAugment applied as one batch: what the docs' grids and
    the camera-look benchmark show, through the training code's own effects."""
    x = torch.from_numpy(np.stack([np.asarray(img) for img in images])).permute(0, 3, 1, 2).float() / 255.0
    y = SurveyAugment(cfg, generator)(x)
    return [Image.fromarray(a) for a in (y * 255).round().byte().permute(0, 2, 3, 1).numpy()]


def augment_normalised(
    aug: SurveyAugment, x: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """`aug` on a batch the presets already normalised ((x - mean) / std): undone, augmented, redone."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device)[:, None, None]
    s = torch.tensor(std, dtype=x.dtype, device=x.device)[:, None, None]
    return (aug((x * s + m).clamp_(0.0, 1.0)) - m) / s


def survey_batches(
    batches: Iterable[tuple], aug: SurveyAugment, mean: Sequence[float], std: Sequence[float]
) -> Iterator[tuple]:
    """The training loader's (images, *rest) batches with `aug` applied to the (normalised) images."""
    for x, *rest in batches:
        yield (augment_normalised(aug, x, mean, std), *rest)
