"""Typed view of params.yaml.

Each section is a frozen dataclass; functions take their own section, never the whole file. Unknown or
missing keys are errors (nanoGPT's "unknown config key" habit) so a typo in params.yaml fails loudly
instead of silently training with a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from galmorph.errors import UserError

CLASSES: tuple[str, ...] = ("spiral", "elliptical")
"""Class order of every probability vector the project writes: P(spiral), P(elliptical)."""


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    n_galaxies: int
    mapping_fraction: float
    missing_image_fraction: float
    image_size: int
    seed: int


@dataclasses.dataclass(frozen=True)
class GalaxyZooConfig:
    table2_url: str
    mapping_url: str
    images_url: str
    zenodo_api_url: str | None
    table2_md5: str | None
    retries: int
    timeout_s: float
    backoff_s: float


@dataclasses.dataclass(frozen=True)
class LocalConfig:
    dir: str


@dataclasses.dataclass(frozen=True)
class ManifestConfig:
    path: str
    image_root: str | None
    path_column: str
    id_column: str | None
    label_column: str | None
    label_map: dict[str, str]
    vote_columns: dict[str, str] | None
    vote_threshold: float
    count_columns: dict[str, str] | None = None  # {spiral: col, elliptical: col}: vote counts (train.loss dirichlet)
    total_votes_column: str | None = None  # or counts = vote_columns' fractions x this column's total votes


@dataclasses.dataclass(frozen=True)
class CoordsConfig:
    """A catalogue of positions with labels or votes; its images are cut-outs fetched into raw_dir (sources/coords)."""

    path: str
    ra_column: str
    dec_column: str
    id_column: str | None
    size_column: str | None
    service: str | None
    max_rows: int | None
    label_column: str | None
    label_map: dict[str, str]
    vote_columns: dict[str, str] | None
    vote_threshold: float
    count_columns: dict[str, str] | None
    total_votes_column: str | None


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: Literal["synthetic", "galaxyzoo", "local", "manifest", "coords"]
    raw_dir: str
    synthetic: SyntheticConfig
    galaxyzoo: GalaxyZooConfig
    local: LocalConfig
    manifest: ManifestConfig
    coords: CoordsConfig


@dataclasses.dataclass(frozen=True)
class JoinConfig:
    label_rule: Literal["flags", "debiased"]
    threshold: float
    out: str
    uncertain_out: str
    report: str


@dataclasses.dataclass(frozen=True)
class SelectConfig:
    verify: Literal["exists", "decode"]
    workers: int
    class_folders: str | None
    out: str
    dropped: str
    report: str
    same_content: bool = True  # rows whose files hold the same bytes are one galaxy (data/select.py same_content)


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    seed: int
    val_fraction: float
    test_fraction: float
    repeats: int
    out: str
    report: str


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    resize: int
    crop: int
    image_size: int
    # fixed: the centre `crop`; adaptive: a square of frame_scale x the central source's Petrosian radius
    # (data/framing.py), at least frame_min px, at most the frame, `crop` when no central source is found.
    # The defaults are the fixed crop, what a model file written before framing existed means (stored_preprocess).
    framing: Literal["fixed", "adaptive"] = "fixed"
    frame_scale: float = 2.5
    frame_min: int = 48
    # full: decode every pixel; draft: a JPEG is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (libjpeg,
    # PIL's Image.draft) down to the smallest scale that still covers the network's input, and the fixed crop
    # and the resize are one resample. Stored in the model file, so training and serving decode alike.
    decode: Literal["full", "draft"] = "full"
    # none: the pixels as decoded; border: per channel, the sky (median of the outer sky_border of each side)
    # subtracted and the sky_percentile-th percentile stretched to sky_level x 255 (data/photometry.py), first,
    # before any framing. A model file written before this existed lacks the keys: none (stored_preprocess).
    sky: Literal["none", "border"] = "none"
    sky_border: float = 0.1
    sky_percentile: float = 99.5
    sky_level: float = 0.9

    def __post_init__(self) -> None:
        if not 0.0 < self.frame_scale < float("inf"):
            raise UserError(f"params: preprocess.frame_scale: expected a number > 0, got {self.frame_scale!r}")
        if self.frame_min < 1:  # above `resize` it is the whole frame (the crop never exceeds the frame)
            raise UserError(f"params: preprocess.frame_min: expected an integer >= 1, got {self.frame_min!r}")
        if not 0.0 < self.sky_border < 0.5:
            raise UserError(f"params: preprocess.sky_border: expected a fraction in (0, 0.5), got {self.sky_border!r}")
        if not 50.0 < self.sky_percentile <= 100.0:
            raise UserError(
                f"params: preprocess.sky_percentile: expected a percentile in (50, 100], got {self.sky_percentile!r}"
            )
        if not 0.0 < self.sky_level <= 1.0:
            raise UserError(f"params: preprocess.sky_level: expected a number in (0, 1], got {self.sky_level!r}")


def stored_preprocess(raw: Any, where: str = "preprocess") -> PreprocessConfig:
    """A model file's preprocess; one written before adaptive framing lacks the framing keys: the fixed crop."""
    defaults = {f.name: f.default for f in dataclasses.fields(PreprocessConfig) if f.default is not dataclasses.MISSING}
    return from_dict(PreprocessConfig, {**defaults, **raw} if isinstance(raw, dict) else raw, where)


def _range(lo: float, hi: float) -> Any:
    return dataclasses.field(default_factory=lambda: [lo, hi])


@dataclasses.dataclass(frozen=True)
class SurveyConfig:
    """Survey and camera differences applied to training batches (data/survey.py): each image gets them with
    probability `p` (0: off, today's training), then each effect with its own probability, its strength drawn
    uniformly from its [low, high] range. Sizes are pixels of the network's input."""

    p: float = 0.0
    blur_p: float = 0.5
    blur_sigma: list[float] = _range(0.3, 1.5)  # Gaussian PSF, px
    pixel_p: float = 0.3
    pixel_scale: list[float] = _range(0.35, 0.9)  # down-sampled to this share of the side, then back up
    noise_p: float = 0.5
    noise_sigma: list[float] = _range(0.0, 0.04)  # Gaussian read noise (of 1)
    noise_gain: list[float] = _range(0.0, 0.02)  # Poisson-like: variance += gain x signal
    sky_p: float = 0.5
    sky_offset: list[float] = _range(-0.02, 0.12)  # added per image and channel (sky level and colour)
    colour_p: float = 0.5
    colour_gain: list[float] = _range(0.75, 1.3)  # per image and channel (colour balance)
    gamma_p: float = 0.5
    gamma: list[float] = _range(0.6, 1.6)  # x ** gamma, log-uniform
    saturate_p: float = 0.2
    saturate_fraction: list[float] = _range(0.001, 0.01)  # brightest share of pixels: stretched to flat white
    stars_p: float = 0.3
    stars_count: list[int] = dataclasses.field(default_factory=lambda: [1, 8])
    star_flux: list[float] = _range(0.2, 1.0)  # peak, of 1
    star_sigma: list[float] = _range(0.5, 1.5)  # px
    grey_p: float = 0.1

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "p" or f.name.endswith("_p"):
                if not 0.0 <= value <= 1.0:
                    raise UserError(f"params: augment.survey.{f.name}: expected a probability in [0, 1], got {value!r}")
                continue
            lowest = {"noise_sigma": 0.0, "noise_gain": 0.0, "sky_offset": -1.0, "stars_count": 0}.get(f.name)
            top = 1.0 if f.name in ("pixel_scale", "saturate_fraction", "sky_offset") else float("inf")
            ok = len(value) == 2 and value[0] <= value[1] and value[1] <= top and value[1] < float("inf")
            if not (ok and (value[0] >= lowest if lowest is not None else value[0] > 0)):
                low = f"{lowest} <= low" if lowest is not None else "0 < low"
                high = f" <= {top:g}" if top < float("inf") else ""
                raise UserError(
                    f"params: augment.survey.{f.name}: expected [low, high], {low} <= high{high}; got {value!r}"
                )


MAX_CONTEXT = 3.0
"""augment.context's ceiling: sqrt(2) / the smallest augment.scale covers any rotation and zoom-out in use."""


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    rotation: float
    flip: bool
    scale: list[float]
    translate: float
    color_jitter: float
    survey: SurveyConfig = dataclasses.field(default_factory=SurveyConfig)  # off unless survey.p > 0
    # training images are framed this many times wider than the eval frame and cut back out after the affine, so
    # rotated corners and zoomed-out edges show the sky around the galaxy instead of black (1 = no context)
    context: float = 1.0
    # one axis of each training image shrunk to this share (uniform in [low, high]) before the random rotation:
    # a galaxy seen at another inclination or a flatter ellipsoid, so elongation alone does not say "disc"
    squeeze: list[float] = dataclasses.field(default_factory=lambda: [1.0, 1.0])

    def __post_init__(self) -> None:
        if not 1.0 <= self.context <= MAX_CONTEXT:
            raise UserError(f"params: augment.context: expected a number in [1, {MAX_CONTEXT:g}], got {self.context!r}")
        q = self.squeeze
        if not (len(q) == 2 and 0.0 < q[0] <= q[1] <= 1.0):
            raise UserError(f"params: augment.squeeze: expected [low, high] with 0 < low <= high <= 1, got {q!r}")

    @property
    def squeezes(self) -> bool:
        """augment.squeeze is on (not [1, 1]): only then is a share drawn, so seeded runs without it are unchanged."""
        return list(self.squeeze) != [1.0, 1.0]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    arch: Literal["resnet18", "resnet34", "resnet50", "resnet101"]
    weights: str
    head: Literal["mlp", "linear"]
    hidden: int
    dropout: float


@dataclasses.dataclass(frozen=True)
class EmbedConfig:
    views: list[str]
    batch_size: int
    num_workers: int
    seed: int
    out: str


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    mode: Literal["frozen", "finetune"]
    unfreeze_blocks: int
    layer_decay: float
    epochs: int
    batch_size: int
    optimizer: Literal["adamw", "sgd"]
    lr: float
    weight_decay: float
    warmup_epochs: int
    schedule: Literal["cosine", "constant"]
    loss: Literal["ce", "soft", "dirichlet"]
    class_weights: Literal["balanced", "none"]
    label_smoothing: float
    early_stopping_patience: int
    val_tta: bool
    device: str
    precision: Literal["auto", "bf16", "fp32"]
    channels_last: bool
    num_workers: int
    seed: int
    deterministic: bool
    checkpoint_dir: str
    out: str
    metrics: str
    curves: str
    label_votes: float = 1.0  # dirichlet: the votes a galaxy with a label but no vote counts stands for
    # finetune: files (decode + augment every image every epoch in num_workers processes) | cache (decode and
    # frame each image once into memory as uint8 at twice image_size, then augment whole batches as tensors)
    loader: Literal["files", "cache"] = "files"
    # decay of an exponential moving average of the weights, updated every step (e.g. 0.999); validation, the
    # best epoch and the saved model use the average. Blank: off (the last step's weights)
    ema: float | None = None
    # Beta alphas of mixup (whole images or features blended) and CutMix (a box pasted) on training batches,
    # each row's loss blended alike (training/engine.BatchMix); 0: off, both > 0: one of them per batch
    mixup: float = 0.0
    cutmix: float = 0.0
    # the out-of-distribution detector (models.ood) fitted after training: the share of validation galaxies whose
    # score stays under 1 (ood_score > 1 = "unlike training data"); 0: no detector
    ood_quantile: float = 0.99
    # progressive resizing (finetune): training images shown at progressive_start px in the first epoch, growing
    # in steps of 8 px to preprocess.image_size by progressive_until of the epochs and kept there (validation
    # and the saved model always use image_size). Blank: off
    progressive_start: int | None = None
    progressive_until: float = 0.7
    # raise glibc's mmap and trim thresholds for the training process, so freed activations are reused instead
    # of mapped afresh every step (training/memory.py; ResNet-18 1.12-1.18x on 2 cores); a no-op without glibc
    keep_freed_memory: bool = True
    # outlier exposure (Hendrycks et al. 2019): a CSV whose image_path column lists images that are neither class
    # (mergers, artefacts); outlier_batch of them join every training batch with a uniform target, weighted
    # outlier_weight, so the model learns to be unsure on such things. Blank: off. Needs train.loader: cache
    outliers: str | None = None
    outlier_batch: int = 8
    outlier_weight: float = 0.5
    # self-training (Xie et al. 2020, "Noisy Student"): `galmorph predict`'s table of a teacher model's verdicts on
    # images nobody labelled (path, p_<class>, label); the rows whose verdict is a class join the training split
    # with that label (train.loss: soft trains toward the teacher's probabilities). predict --threshold decides
    # which verdicts are sure enough. Blank: off. Needs train.mode: finetune (the embedding cache holds only
    # the splits' images)
    pseudo: str | None = None

    def __post_init__(self) -> None:
        # checked with the rest of params.yaml, so a bad value stops `galmorph train` before its MLflow run opens
        self._check_outliers()
        if self.pseudo and self.mode != "finetune":
            raise UserError("params: train.pseudo needs images (train.mode: finetune); blank it in frozen mode")
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            raise UserError(
                f"params: train.ema: expected a decay between 0 and 1 (e.g. 0.999) or blank, got {self.ema!r}"
            )
        for name in ("mixup", "cutmix"):
            alpha = getattr(self, name)
            if not 0.0 <= alpha < float("inf"):
                raise UserError(f"params: train.{name}: expected a Beta alpha >= 0 (0 = off, e.g. 0.2), got {alpha!r}")
        if self.progressive_start is not None and self.progressive_start < 16:
            raise UserError(
                f"params: train.progressive_start: expected a side in px >= 16 (e.g. 48) or blank, "
                f"got {self.progressive_start!r}"
            )
        if not 0.0 < self.progressive_until <= 1.0:
            raise UserError(
                "params: train.progressive_until: expected a share of the epochs in (0, 1], "
                f"got {self.progressive_until!r}"
            )
        if self.progressive_start is not None and self.mode == "frozen":
            raise UserError(
                "params: train.progressive_start needs images (train.mode: finetune); blank it in frozen mode"
            )
        if self.cutmix and self.mode == "frozen":
            raise UserError("params: train.cutmix needs images (train.mode: finetune); frozen mode can use train.mixup")

    def _check_outliers(self) -> None:
        if not (isinstance(self.outlier_batch, int) and self.outlier_batch >= 1):
            raise UserError(f"params: train.outlier_batch: expected an integer >= 1, got {self.outlier_batch!r}")
        if not 0.0 < self.outlier_weight < float("inf"):
            raise UserError(
                f"params: train.outlier_weight: expected a weight > 0 (e.g. 0.5), got {self.outlier_weight!r}"
            )
        if not self.outliers:
            return
        needs = {
            "train.mode: finetune": self.mode == "finetune",
            "train.loader: cache": self.loader == "cache",
            "train.loss ce or soft (a uniform target is no vote count)": self.loss in ("ce", "soft"),
            "train.mixup and train.cutmix 0": not (self.mixup or self.cutmix),
        }
        missing = [what for what, ok in needs.items() if not ok]
        if missing:
            raise UserError(f"params: train.outliers needs {'; '.join(missing)}; or blank train.outliers")


@dataclasses.dataclass(frozen=True)
class MlflowConfig:
    experiment: str
    tracking_uri: str | None
    registered_model: str
    system_metrics_s: float | None = 10.0


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    n_trials: int
    epochs: int
    metric: Literal["val_macro_f1", "val_acc", "val_loss"]
    sampler: Literal["tpe", "random"]
    pruner: Literal["median", "hyperband", "none"]
    startup_trials: int
    pruner_warmup_epochs: int
    seed: int
    study_name: str
    storage: str | None
    space: dict[str, dict[str, Any]]
    out: str
    plots_dir: str


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    out_dir: str
    metrics: str
    ece_bins: int
    bootstrap: int
    seed: int
    abstain_threshold: float
    tta: bool
    tta_views: list[str]
    stability: bool
    gallery_size: int
    saliency: bool
    uncertain_limit: int | None
    ood_manifest: str | None
    batch_size: int
    num_workers: int
    device: str
    subset_column: str | None = "dataset"
    vote_bins: list[float] = dataclasses.field(default_factory=lambda: [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    confident_fraction: float = 0.8


@dataclasses.dataclass(frozen=True)
class RegisterConfig:
    promote_margin: float
    max_ece: float
    report: str
    headline: str = "reports/metrics.json"
    links: str = "reports/mlflow.json"


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """What `galmorph web` accepts (the REST model reads GALMORPH_* variables instead: README "Security")."""

    max_pixels: int
    max_decodes: int
    follow_s: float | None


@dataclasses.dataclass(frozen=True)
class FitsConfig:
    """How a FITS image becomes the RGB the model sees (data.fits; README "FITS images"): which HDU, and the
    Lupton asinh stretch (make_lupton_rgb) of one band (grey) or three (colour). The defaults are params.yaml's
    (a test checks it): the REST model, which has no params.yaml, uses them unless its model_config says so."""

    hdu: int | str | None = None  # None: the first HDU with a 2-D image or a 3-plane cube; an index or EXTNAME
    level_percentile: float = 99.5
    q: float = 8.0
    stretch: float = 0.2
    minimum: float = 0.0
    band_scales: list[float] = dataclasses.field(default_factory=lambda: [1.0, 1.0, 1.0])
    relative: bool = True

    def __post_init__(self) -> None:
        problems = {
            "hdu": self.hdu is not None
            and not (isinstance(self.hdu, int) and not isinstance(self.hdu, bool) and self.hdu >= 0)
            and not (isinstance(self.hdu, str) and self.hdu.strip()),
            "level_percentile": not 0.0 < self.level_percentile <= 100.0,
            "q": not 0.0 <= self.q < 1e6,
            "stretch": not 0.0 < self.stretch < float("inf"),
            "minimum": not abs(self.minimum) < float("inf"),
            "band_scales": len(self.band_scales) != 3 or not all(0.0 < s < float("inf") for s in self.band_scales),
        }
        expected = {
            "hdu": "an HDU number >= 0, an EXTNAME or blank",
            "level_percentile": "a percentile in (0, 100]",
            "q": "a number >= 0",
            "stretch": "a number > 0",
            "minimum": "a finite number",
            "band_scales": "three numbers > 0 (blue, green, red band)",
        }
        for key, bad in problems.items():
            if bad:
                raise UserError(f"params: fits.{key}: expected {expected[key]}, got {getattr(self, key)!r}")

    def with_hdu(self, hdu: str | int | None) -> FitsConfig:
        """This config with the HDU a command line chose (`--hdu 1`, `--hdu SCI`); None keeps the configured one."""
        if hdu is None:
            return self
        text = str(hdu).strip()
        if not text or (text.lstrip("+-").isdigit() and int(text) < 0):
            raise UserError(f"--hdu {hdu!r}: expected an HDU number (0 = the primary HDU) or an EXTNAME")
        return dataclasses.replace(self, hdu=int(text) if text.lstrip("+").isdigit() else text)


@dataclasses.dataclass(frozen=True)
class CutoutServiceConfig:
    """One cut-out service: a URL template with {ra} {dec} (degrees), {scale} (arcsec/px) and {size} (px)."""

    url: str
    pixscale: float
    size: int


@dataclasses.dataclass(frozen=True)
class CutoutsConfig:
    """Images fetched by sky position (galmorph.data.cutouts): which service, how fast, where they are kept."""

    service: str
    services: dict[str, CutoutServiceConfig]
    size_column: str | None
    scale_per_arcsec: float
    cache_dir: str
    workers: int
    rate_per_s: float | None
    retries: int
    timeout_s: float
    backoff_s: float
    max_bytes: int
    blank_std: float


@dataclasses.dataclass(frozen=True)
class Params:
    data: DataConfig
    join: JoinConfig
    select: SelectConfig
    split: SplitConfig
    preprocess: PreprocessConfig
    augment: AugmentConfig
    model: ModelConfig
    embed: EmbedConfig
    train: TrainConfig
    mlflow: MlflowConfig
    tune: TuneConfig
    evaluate: EvaluateConfig
    register: RegisterConfig
    serve: ServeConfig
    fits: FitsConfig
    cutouts: CutoutsConfig


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; returns the (possibly converted) value."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise UserError(f"params: {where}: expected a value, got null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0] if errors else f"params: {where}: unexpected value {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise UserError(f"params: {where}: expected one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"params: {where}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"params: {where}: expected a mapping, got {value!r}")
        key_tp, val_tp = typing.get_args(tp)
        return {str(k): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"params: {where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"params: {where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise UserError(f"params: {where}: expected a number, got {value!r}")
        try:
            return float(value)  # YAML reads 1e-3 as a string; accept it as a number
        except (TypeError, ValueError):
            raise UserError(f"params: {where}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"params: {where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {where}")


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest of `candidates` to a mistyped `name`, or ''."""
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _unknown_keys_message(where: str, unknown: Sequence[str], names: Sequence[str]) -> str:
    keys = ", ".join(k + did_you_mean(k, names) for k in unknown)
    return f"params: {where}: unknown key(s) {keys} (expected {', '.join(names)})"


def from_dict(cls: type, raw: Any, where: str = "params") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown and missing keys."""
    if not isinstance(raw, dict):
        raise UserError(f"params: {where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise UserError(_unknown_keys_message(where, unknown, names))
    missing = [n for n in names if n not in raw]
    if missing:
        raise UserError(f"params: {where}: missing key(s) {', '.join(missing)}")
    prefix = "" if where == "params" else f"{where}."
    return cls(**{n: _coerce(raw[n], hints[n], f"{prefix}{n}") for n in names})


class UnvalidatedSection:
    """A params.yaml section that the running command did not ask to validate, and that is not valid as a
    whole (or there is no params.yaml). Its valid keys read as usual; reading a missing or invalid key raises
    that key's UserError. So a command fails only on the parameters it actually reads: `galmorph predict`
    after a bad `-S train.lr=abc` never looks at train.lr."""

    def __init__(self, name: str, values: Mapping[str, Any], errors: Mapping[str, str], error: str) -> None:
        self._name = name
        self._values = dict(values)
        self._errors = dict(errors)
        self._error = error

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        if key in self._values:
            return self._values[key]
        raise UserError(self._errors.get(key, self._error))

    def raise_error(self) -> typing.NoReturn:
        """For a caller that needs the whole section: the first reason it is not valid."""
        raise UserError(next(iter(self._errors.values()), self._error))

    def __repr__(self) -> str:
        return f"UnvalidatedSection({self._name!r}: {self._error})"


def _lenient_section(name: str, cls: type, raw: Any, error: str) -> UnvalidatedSection:
    """Each key of an invalid section validated on its own: the valid ones kept, the others' errors kept."""
    if not isinstance(raw, dict):
        return UnvalidatedSection(name, {}, {}, error)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for key in names:
        if key not in raw:
            typo = difflib.get_close_matches(key, unknown, n=1, cutoff=0.6)
            also = f" ({typo[0]}: a typo of it?)" if typo else ""
            errors[key] = f"params: {name}: missing key {key}{also}"
            continue
        try:
            values[key] = _coerce(raw[key], hints[key], f"{name}.{key}")
        except UserError as exc:
            errors[key] = str(exc)
    return UnvalidatedSection(name, values, errors, error)


def params_from_raw(raw: Any, required: Iterable[str] | None = None, where: str = "params.yaml") -> Params:
    """Params from the parsed params.yaml. The sections (e.g. "train") and single keys (e.g. "train.mode") in
    `required` are validated now, and their first error raised; None validates everything. The other sections
    are validated when a key of theirs is read (see UnvalidatedSection)."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a mapping of sections (data, train, ...), got {type(raw).__name__}")
    hints = typing.get_type_hints(Params)
    names = [f.name for f in dataclasses.fields(Params)]
    unknown = sorted(set(raw) - set(names))
    if unknown:  # a mistyped section name is a mistake whatever the command
        raise UserError(_unknown_keys_message("params", unknown, names))
    wanted = set(names) if required is None else set(required)
    sections: dict[str, Any] = {}
    for name in names:
        if name not in raw:
            error = f"params: missing key(s) {name}"
            if name in wanted or any(w.startswith(f"{name}.") for w in wanted):
                raise UserError(error)
            sections[name] = UnvalidatedSection(name, {}, {}, error)
            continue
        if name in wanted:
            sections[name] = from_dict(hints[name], raw[name], name)
            continue
        try:
            sections[name] = from_dict(hints[name], raw[name], name)
        except UserError as exc:
            section = _lenient_section(name, hints[name], raw[name], str(exc))
            for key in sorted(w.partition(".")[2] for w in wanted if w.startswith(f"{name}.")):
                getattr(section, key)  # a required key: its own error now
            sections[name] = section
    return Params(**sections)


#: What `galmorph predict --model FILE` uses outside the repository, where there is no params.yaml: the
#: repository's own values (tests/test_config.py checks that they match params.yaml). The model file carries
#: its preprocessing; anything else a command reads without a params.yaml is an error naming the file.
DEFAULTS_WITHOUT_PARAMS_FILE: dict[str, dict[str, Any]] = {
    "mlflow": {"experiment": "galmorph", "tracking_uri": None, "registered_model": "galmorph"},
    "evaluate": {"abstain_threshold": 0.7},
    "fits": dataclasses.asdict(FitsConfig()),
}


def params_without_file(path: str | os.PathLike) -> Params:
    """Params for a command that can run without params.yaml: DEFAULTS_WITHOUT_PARAMS_FILE, and for anything
    else the error that the file at `path` is missing."""
    error = f"{path}: params file not found (run from the repo root or pass --params)"
    hints = typing.get_type_hints(Params)
    sections: dict[str, Any] = {}
    for f in dataclasses.fields(Params):
        known = DEFAULTS_WITHOUT_PARAMS_FILE.get(f.name, {})
        if set(known) == {g.name for g in dataclasses.fields(hints[f.name])}:
            sections[f.name] = from_dict(hints[f.name], known, f.name)
        else:
            sections[f.name] = UnvalidatedSection(f.name, known, {}, error)
    return Params(**sections)


def read_params_file(path: str | os.PathLike = "params.yaml") -> Any:
    """params.yaml parsed, not validated (one clear error for a missing file or bad YAML)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: params file not found (run from the repo root or pass --params)")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{p}: not valid YAML: {str(exc).splitlines()[0]}") from None


def load_params(path: str | os.PathLike = "params.yaml", required: Iterable[str] | None = None) -> Params:
    """Read and validate params.yaml: all of it, or only the sections and keys in `required` now and the rest
    when read (see params_from_raw)."""
    return params_from_raw(read_params_file(path), required, str(path))


def replace(cfg: Any, **changes: Any) -> Any:
    """dataclasses.replace that re-validates types, for overrides such as Optuna's suggestions."""
    if isinstance(cfg, UnvalidatedSection):
        cfg.raise_error()
    hints = typing.get_type_hints(type(cfg))
    unknown = sorted(set(changes) - set(hints))
    if unknown:
        raise UserError(f"unknown key(s) {', '.join(unknown)} for {type(cfg).__name__}")
    return dataclasses.replace(
        cfg, **{k: _coerce(v, hints[k], f"{type(cfg).__name__}.{k}") for k, v in changes.items()}
    )


def with_overrides(params: Params, flat: Mapping[str, Any], where: str = "overrides") -> Params:
    """Params with flat dotted overrides applied, e.g. {"train.lr": 0.003, "model.hidden": 512}
    (the tuned values in tune.out); each value is validated like params.yaml's own."""
    sections: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        section, _, name = str(key).partition(".")
        if not name or not hasattr(params, section) or "." in name:
            raise UserError(f"{where}: {key!r}: expected SECTION.KEY of params.yaml, e.g. train.lr")
        sections.setdefault(section, {})[name] = value
    try:
        changed = {s: replace(getattr(params, s), **kv) for s, kv in sections.items()}
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    return dataclasses.replace(params, **changed)


def with_tuned(params: Params, path: str | os.PathLike | None = None) -> tuple[Params, dict[str, Any]]:
    """params with the tuned values of `path` (default tune.out; flat keys such as train.lr) when that file
    exists, and the values applied (empty, with params unchanged, when there are none)."""
    path = Path(params.tune.out if path is None else path)
    if not path.is_file():
        return params, {}
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    flat = raw.get("params", raw) if isinstance(raw, dict) else None
    if not isinstance(flat, dict):
        raise UserError(f"{path}: expected a mapping of SECTION.KEY: value (e.g. train.lr: 0.001)")
    if not flat:
        return params, {}
    return with_overrides(params, flat, str(path)), flat
