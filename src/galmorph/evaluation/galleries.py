"""Image grids of the model's successes and failures, for people to look at.

Numbers say how often the model is wrong; galleries say *how*: edge-on spirals called elliptical, mergers,
stars, bad cut-outs. Each tile shows the galaxy framed as the model sees it (the eval preset's resize and
centre crop, at display resolution) and is captioned with its id, the catalogue class, the model's
probability for that class and the citizen-science vote fraction.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from PIL import Image

from galmorph.config import CLASSES, AugmentConfig, FitsConfig, PreprocessConfig, SurveyConfig, replace
from galmorph.data.images import load_rgb
from galmorph.data.photometry import normalise_sky
from galmorph.data.survey import EFFECTS, only, survey_images
from galmorph.data.transforms import MEAN, STD, BatchAugment, FramedUint8, framed_box
from galmorph.evaluation.plots import CLASS_COLOURS, plt, save_figure

COLOUR_NAMES = {CLASS_COLOURS["spiral"]: "blue", CLASS_COLOURS["elliptical"]: "red"}
DISPLAY_SIZE = 192
"""Tile resolution in pixels: large enough to see spiral arms, small enough for a page of tiles."""


@dataclasses.dataclass(frozen=True)
class GallerySpec:
    """One grid: its file stem, title, and which galaxies (indices into the scored catalogue)."""

    name: str
    title: str
    indices: np.ndarray


def select_galleries(probs: np.ndarray, labels: np.ndarray, size: int, classes: Sequence[str] = CLASSES) -> list:
    """The standard set: per true class, the most confident correct and the most confident wrong calls;
    and the galaxies the model is least sure about (top probability nearest 1/K). Empty ones are kept,
    so the report can say "no confident mistakes" instead of silently leaving a grid out."""
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    specs = []
    for k, name in enumerate(classes):
        for right, word in ((True, "correct"), (False, "wrong")):
            sel = np.flatnonzero((labels == k) & ((pred == k) == right))
            order = sel[np.argsort(-conf[sel], kind="stable")][:size]
            what = (
                f"most confident correct: {name}s"
                if right
                else f"most confident mistakes: {name}s called {_others(classes, k)}"
            )
            specs.append(GallerySpec(f"{word}_{name}", what.capitalize(), order))
    uncertain = np.argsort(conf, kind="stable")[:size]
    specs.append(GallerySpec("uncertain", "Least certain: top probability nearest 0.5", uncertain))
    return specs


def _others(classes: Sequence[str], k: int) -> str:
    return " or ".join(c for i, c in enumerate(classes) if i != k)


def display_image(
    path: str | os.PathLike, preprocess: PreprocessConfig, size: int = DISPLAY_SIZE, fits: FitsConfig | None = None
) -> Image.Image:
    """The eval preset's sky normalisation and framing (resize the short side, centre crop; or the adaptive
    frame) at display resolution."""
    img = load_rgb(path, fits=fits)
    if preprocess.sky == "border":
        img = normalise_sky(img, preprocess.sky_border, preprocess.sky_percentile, preprocess.sky_level)
    if preprocess.framing == "adaptive":
        return img.resize((size, size), Image.BICUBIC, box=framed_box(img, preprocess))
    scale = preprocess.resize / min(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)
    crop = min(preprocess.crop, img.width, img.height)
    left, top = (img.width - crop) // 2, (img.height - crop) // 2
    return img.crop((left, top, left + crop, top + crop)).resize((size, size), Image.BICUBIC)


def caption(row: pd.Series, probs: np.ndarray, classes: Sequence[str] = CLASSES) -> str:
    """Three short lines: id; catalogue class with its vote fraction; the model's call and probability."""
    gid = str(row["galaxy_id"])
    gid = gid if len(gid) <= 22 else "…" + gid[-21:]
    label_id = int(row["label_id"]) if "label_id" in row and pd.notna(row["label_id"]) else -1
    true = classes[label_id] if 0 <= label_id < len(classes) else str(row.get("label", "?"))
    k = int(np.argmax(probs))
    return f"{gid}\n{true} · {_votes(row, true, classes)}\nmodel P({classes[k]}) {probs[k]:.2f}"


def _votes(row: pd.Series, true: str, classes: Sequence[str]) -> str:
    def fraction(c: str) -> float:
        v = row.get(f"p_{c}", np.nan)
        return float(v) if v is not None and pd.notna(v) else float("nan")

    if true in classes:
        v = fraction(true)
        return f"votes {v:.2f}" if np.isfinite(v) else "votes n/a"
    parts = [f"{c[:2]} {fraction(c):.2f}" for c in classes if np.isfinite(fraction(c))]
    return "votes " + " ".join(parts) if parts else "votes n/a"


def heat_rgba(heat: np.ndarray, max_alpha: float = 0.55) -> np.ndarray:
    """A heat map in [0, 1] as an RGBA layer whose opacity follows the heat: where the model did not look,
    the galaxy stays visible as it is (a uniform tint would hide faint arms and companions)."""
    rgba = plt.get_cmap("inferno")(np.clip(heat, 0.0, 1.0))
    rgba[..., 3] = max_alpha * np.clip(heat, 0.0, 1.0)
    return rgba


def gallery_figure(
    images: Sequence[Image.Image | None],
    captions: Sequence[str],
    title: str,
    *,
    colours: Sequence[str] | None = None,
    ncols: int = 4,
    overlays: Sequence[np.ndarray | None] | None = None,
) -> Figure:
    """A grid of captioned tiles; a frame colour per tile (the model's call) and an optional heat map over it
    (contours at 50% and 80% of its peak).

    A tile whose image is None (unreadable since the split was made) shows the reason in its caption.
    Captions and the title are shown as written: a `$` in an id or a file name is not math text."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.3 * ncols, 2.95 * nrows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, (img, text) in enumerate(zip(images, captions, strict=True)):
        ax = axes.ravel()[i]
        if img is None:
            ax.text(0.5, 0.5, "image unreadable", ha="center", va="center", fontsize=8, transform=ax.transAxes)
        else:
            ax.imshow(np.asarray(img))
            if overlays is not None and overlays[i] is not None:
                ax.imshow(heat_rgba(overlays[i]), extent=(-0.5, img.width - 0.5, img.height - 0.5, -0.5))
                ax.contour(
                    np.linspace(0, img.width - 1, overlays[i].shape[1]),
                    np.linspace(0, img.height - 1, overlays[i].shape[0]),
                    overlays[i],
                    levels=[0.5, 0.8],
                    colors=["#ffd54f", "#ffffff"],
                    linewidths=0.8,
                )
            colour = colours[i] if colours is not None else "black"
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3)
        # parse_math=False: ids and file names are text; a `$` pair must not become (invalid) math text
        ax.set_title(text, fontsize=7, family="monospace", loc="left", parse_math=False)
    fig.suptitle(title, fontsize=11, parse_math=False)
    fig.tight_layout(h_pad=1.2)
    return fig


def render_gallery(
    catalogue: pd.DataFrame,
    probs: np.ndarray,
    spec: GallerySpec,
    path: str | os.PathLike,
    preprocess: PreprocessConfig,
    *,
    root: str | os.PathLike = ".",
    overlays: Sequence[np.ndarray | None] | None = None,
    classes: Sequence[str] = CLASSES,
    fits: FitsConfig | None = None,
) -> int:
    """Write `spec`'s grid to `path` (PNG); returns the number of tiles (0 writes nothing). `fits`: how FITS
    images are read, as they were scored."""
    if len(spec.indices) == 0:
        return 0
    images, captions, colours = [], [], []
    for i in spec.indices:
        row = catalogue.iloc[int(i)]
        try:
            images.append(display_image(Path(root) / row["image_path"], preprocess, fits=fits))
        except (OSError, ValueError):
            images.append(None)
        captions.append(caption(row, probs[int(i)], classes))
        colours.append(CLASS_COLOURS.get(classes[int(np.argmax(probs[int(i)]))], "black"))
    title = f"{spec.title}\n{_legend_words(classes)}"
    fig = gallery_figure(images, captions, title, colours=colours, overlays=overlays)
    save_figure(fig, path, dpi=110)
    return len(images)


def _legend_words(classes: Sequence[str]) -> str:
    parts = [f"{COLOUR_NAMES.get(CLASS_COLOURS.get(c, ''), 'black')} = {c}" for c in classes]
    return "frame: the model's call (" + ", ".join(parts) + ")"


def survey_columns(survey: SurveyConfig) -> dict[str, SurveyConfig]:
    """The augment grid's columns: each survey effect alone, then all of them at once (every effect on)."""
    columns = {effect: only(survey, effect) for effect in EFFECTS}
    columns["all"] = dataclasses.replace(survey, p=1.0, **{f"{e}_p": 1.0 for e in EFFECTS})
    return columns


def survey_augment_grid(
    paths: Sequence[str | os.PathLike],
    preprocess: PreprocessConfig,
    survey: SurveyConfig,
    path: str | os.PathLike,
    *,
    seed: int = 0,
    fits: FitsConfig | None = None,
) -> int:
    """Write a PNG grid (one row per image of `paths`) of what training with augment.survey shows the network:
    the image as the eval preset frames it at preprocess.image_size, preprocess.sky: border's version of it,
    each survey effect alone and all together (data/survey.py, seeded). Returns the number of rows."""
    size = preprocess.image_size
    originals = [display_image(p, preprocess, size=size, fits=fits) for p in paths]
    skies = [display_image(p, dataclasses.replace(preprocess, sky="border"), size=size, fits=fits) for p in paths]
    columns: dict[str, list[Image.Image]] = {"original": originals, "sky: border": skies}
    for name, cfg in survey_columns(survey).items():
        columns[name] = survey_images(originals, cfg, torch.Generator().manual_seed(seed))
    images = [columns[name][i] for i in range(len(originals)) for name in columns]
    captions = [name if i < len(columns) else "" for i, name in enumerate(list(columns) * len(originals))]
    fig = gallery_figure(
        images, captions, f"augment.survey on real SDSS cut-outs, {size} px (seed {seed})", ncols=len(columns)
    )
    save_figure(fig, path, dpi=50, palette=True)  # 64-px tiles need no more; keeps the PNG small
    return len(originals)


def context_augment_grid(
    paths: Sequence[str | os.PathLike],
    preprocess: PreprocessConfig,
    augment: AugmentConfig,
    contexts: Sequence[float],
    path: str | os.PathLike,
    *,
    draws: int = 6,
    seed: int = 0,
) -> int:
    """Write a PNG grid of what training shows the network (train.loader: cache's frames through BatchAugment,
    without the survey effects) for each image of `paths` at each augment.context: one row per (image,
    context), the same seeded turns, scales and shifts along a row's `draws` columns, so the rows of one image
    differ only in what fills the corners. Returns the number of rows."""
    plain = dataclasses.replace(augment, survey=replace(augment.survey, p=0.0))
    images: list[Image.Image] = []
    captions: list[str] = []
    for p in paths:
        img = load_rgb(p)
        for context in contexts:
            aug = replace(plain, context=context)
            x = FramedUint8(preprocess, aug)(img)[None].expand(draws, -1, -1, -1)
            y = BatchAugment(preprocess, aug)(x, torch.Generator().manual_seed(seed))
            y = y * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
            images += [Image.fromarray(a) for a in (y.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()]
            captions += [f"context {context:g}"] + [""] * (draws - 1)
    squeeze = augment.squeeze
    shape = f"squeeze {squeeze[0]:g}-{squeeze[1]:g}, " if augment.squeezes else ""
    title = (
        f"augment: rotation {augment.rotation:g}, scale {augment.scale[0]:g}-{augment.scale[1]:g}, {shape}"
        f"{preprocess.image_size} px (seed {seed})"
    )
    save_figure(gallery_figure(images, captions, title, ncols=draws), path, dpi=50, palette=True)
    return len(paths) * len(contexts)
