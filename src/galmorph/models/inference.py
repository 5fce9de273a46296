"""The one inference path: what evaluate measures is what predict, REST, the web page and Spark return.

Every caller turns images into probabilities the same way: EvalPreset, BatchNorm folded into the convs,
channels_last, mean logits over the dihedral views, then softmax(logits / T) with the stored temperature,
and one rule for the label (top class, "uncertain" under the abstention threshold). Training imports the
device and precision helpers from here so that the loop and inference cannot disagree on them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from galmorph.config import CLASSES, FitsConfig, ModelConfig, PreprocessConfig
from galmorph.data.dataset import ImageDataset, ImageSource
from galmorph.data.images import InputLimits, decode_image, image_items
from galmorph.data.transforms import VIEWS, EvalPreset, apply_view, check_views
from galmorph.errors import UserError
from galmorph.models.ood import OOD_COLUMN, OodDetector, verdicts
from galmorph.models.resnet import DIRICHLET, LOGITS, GalaxyNet, build_model, fold_batchnorm, load_model, save_model

UNCERTAIN = "uncertain"
ERROR_PREFIX = "error: "
MODEL_FILE = "model.pt"
DEFAULT_TTA_VIEWS: tuple[str, ...] = tuple(VIEWS)
"""All eight symmetries of the square, as evaluate.tta_views has them by default."""
VOTE_FRACTION_PREFIX = "vote_fraction_"
"""Output columns vote_fraction_<class> of a model trained with the Dirichlet-multinomial loss."""


# ------------------------------------------------------------------------------------ device and precision


def resolve_device(name: str = "auto") -> torch.device:
    """auto = cuda, then mps, then cpu; an explicit device that is not there is the user's error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"params: train.device: expected auto, cpu, cuda[:N] or mps, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("params: train.device: cuda was asked for but no CUDA device is available (use auto or cpu)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("params: train.device: mps was asked for but is not available (use auto or cpu)")
    return device


def cpu_has_fast_bf16() -> bool:
    """bf16 pays on CPU only with native bf16 dot products (AVX512-BF16 or AMX); emulated it is slower than fp32."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return torch.backends.mkldnn.is_available() and any(getattr(cpu, c, lambda: False)() for c in checks)


def amp_dtype_for(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for `precision` on `device` (None = plain fp32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise UserError(f"params: train.precision: expected auto, bf16 or fp32, got {precision!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_fast_bf16() else None
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


def iterate(loader: Iterable) -> Iterator:
    """Iterate a DataLoader, turning a UserError raised in a worker back into its one-line message."""
    try:
        yield from loader
    except UserError as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        if lines and lines[0].startswith("Caught UserError"):
            raise UserError(lines[-1].split("UserError: ", 1)[-1]) from None
        raise


# ------------------------------------------------------------------------------------ the forward pass


def prepare_for_inference(model: nn.Module, device: torch.device, *, channels_last: bool = True) -> nn.Module:
    """The fastest exact form of the model for inference: BN folded into convs, channels_last on CPU/GPU.

    Folding + channels_last is the largest exact win on a 2-core AVX2 CPU (BENCHMARKS.md); bf16 is used only
    where the hardware has native bf16 (amp_dtype_for).
    """
    model = fold_batchnorm(model) if isinstance(model, GalaxyNet | torchvision.models.ResNet) else model
    model = model.to(device).eval()
    if channels_last and device.type != "mps":
        model = model.to(memory_format=torch.channels_last)
    return model


def view_logits(model: nn.Module, x: torch.Tensor, views: Sequence[str] | None) -> torch.Tensor:
    """Logits, averaged over views: images (B,3,H,W) are transformed, features (B,V,D) are already per view."""
    return view_outputs(model, x, views)[0]


def view_outputs(
    model: nn.Module, x: torch.Tensor, views: Sequence[str] | None, *, features: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits averaged over views and, with `features` (a GalaxyNet on images), the pooled backbone features
    averaged over the same views: what the out-of-distribution detector measures (models.ood: a mean over views
    has a scale of its own)."""
    if x.ndim == 3:
        return torch.stack([model(x[:, v]) for v in range(x.shape[1])]).float().mean(0), None
    views = ["identity"] if not views else list(views)
    if not features:
        if views == ["identity"]:
            return model(x).float(), None
        return torch.stack([model(apply_view(x, v)) for v in views]).float().mean(0), None
    feats = [model.backbone(x if v == "identity" else apply_view(x, v)).float() for v in views]
    logits = torch.stack([model.head(f).float() for f in feats]).mean(0)
    return logits, torch.stack(feats).mean(0)


def batch_outputs(
    model: nn.Module,
    x: torch.Tensor,
    device: torch.device,
    *,
    views: Sequence[str] | None = None,
    amp: torch.dtype | None = None,
    features: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(B, K) float32 logits of one preprocessed batch on a model from prepare_for_inference, and its (B, D)
    pooled features when asked (view_outputs)."""
    with torch.inference_mode(), autocast(device, amp):
        logits, feats = view_outputs(model, to_device(x, device, device.type != "mps"), views, features=features)
    return logits.float().cpu().numpy().copy(), None if feats is None else feats.float().cpu().numpy().copy()


def batch_logits(
    model: nn.Module,
    x: torch.Tensor,
    device: torch.device,
    *,
    views: Sequence[str] | None = None,
    amp: torch.dtype | None = None,
) -> np.ndarray:
    """(B, K) float32 logits of one preprocessed batch on a model from prepare_for_inference."""
    return batch_outputs(model, x, device, views=views, amp=amp)[0]


def predict_logits(
    model: nn.Module, catalogue_or_paths: pd.DataFrame | Sequence[ImageSource], preprocess: PreprocessConfig, **kw: Any
) -> np.ndarray:
    """Logits (N, K) in input order for a catalogue whose images must all decode (evaluate, training); the
    keywords are predict_outputs' (`fits`: how FITS images are read, evaluate-folder's --hdu)."""
    return predict_outputs(model, catalogue_or_paths, preprocess, **kw)[0]


def predict_outputs(
    model: nn.Module,
    catalogue_or_paths: pd.DataFrame | Sequence[ImageSource],
    preprocess: PreprocessConfig,
    *,
    batch_size: int = 64,
    tta_views: Sequence[str] | None = None,
    num_workers: int = 2,
    device: str | torch.device = "auto",
    precision: str = "auto",
    progress: bool = False,
    fits: FitsConfig | None = None,
    features: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """As predict_logits, and the pooled backbone features (N, D) with `features` (a GalaxyNet): what the
    out-of-distribution detector is fitted on."""
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    if tta_views is not None:
        check_views(tta_views, "tta_views")
    fast = prepare_for_inference(model, dev)
    dataset = ImageDataset(catalogue_or_paths, EvalPreset(preprocess), fits=fits)
    if len(dataset) == 0:
        return np.empty((0, len(CLASSES)), dtype=np.float32), None
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=min(num_workers, os.cpu_count() or 1),
        pin_memory=dev.type == "cuda",
    )
    out = np.empty((len(dataset), len(CLASSES)), dtype=np.float32)
    feats: np.ndarray | None = None
    amp = amp_dtype_for(dev, precision)
    batches = tqdm(iterate(loader), desc="predict", unit="batch", total=len(loader), disable=not progress, leave=False)
    for x, _labels, _soft, idx in batches:
        rows = idx.numpy()
        logits, f = batch_outputs(fast, x, dev, views=tta_views, amp=amp, features=features)
        out[rows] = logits
        if f is not None:
            if feats is None:
                feats = np.empty((len(dataset), f.shape[1]), dtype=np.float32)
            feats[rows] = f
    return out, feats


def softmax_t(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Probabilities softmax(logits / T), computed stably in float64."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def vote_fractions(logits: np.ndarray) -> np.ndarray:
    """The expected vote fractions alpha / sum(alpha) of a Dirichlet model (outputs = log alpha): softmax at
    T = 1. Temperature scaling calibrates the class probability against the labels; the vote fraction is what
    the loss fitted to the volunteers' clicks, so it is not rescaled."""
    return softmax_t(logits, 1.0)


def labels_of(
    probs: np.ndarray, errors: Sequence[str | None], classes: Sequence[str], threshold: float = 0.0
) -> list[str]:
    """The top class, "uncertain" when its probability is under `threshold`, "" for a row that failed."""
    out = []
    for row, error in zip(probs, errors, strict=True):
        if error:
            out.append("")
        elif row.max() < threshold:
            out.append(UNCERTAIN)
        else:
            out.append(classes[int(row.argmax())])
    return out


# ------------------------------------------------------------------------------------ the shipped classifier


def build_network(model_cfg: ModelConfig) -> torch.nn.Module:
    """The architecture of `model_cfg` without downloading anything: the weights come from the artifact."""
    return build_model(dataclasses.replace(model_cfg, weights="none"))


def save_artifacts(
    model: torch.nn.Module,
    model_cfg: ModelConfig,
    preprocess: PreprocessConfig,
    temperature: float,
    out_dir: str | os.PathLike,
    *,
    ood: OodDetector | None = None,
) -> dict[str, str]:
    """Write the model file (the same format as models/model.pt, loadable with weights_only=True) and
    return the {name: path} artifacts mapping that mlflow.pyfunc.log_model wants."""
    path = Path(out_dir) / MODEL_FILE
    save_model(path, model, model_cfg, preprocess, temperature=temperature, ood=ood)
    return {"model": str(path)}


def _reason(exc: BaseException) -> str:
    """A row's error: the loader's message, never a traceback; an unexpected exception by its type only, so
    nothing of the server (a path, an OS error) reaches a client."""
    if not isinstance(exc, ValueError | OSError):
        return f"could not score this image ({type(exc).__name__})"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


class GalaxyClassifier:
    """A network plus its preprocessing, temperature and TTA views; scores images in batches.

    Unreadable inputs become per-row errors, never a failed batch: this is what serving wraps. `limits`
    (data.images.InputLimits) say what a request may carry: paths only under an image root, at most so many
    pixels per image, rows and bytes per request, and decodes at once (a semaphore shared by every thread
    that uses this classifier). `ood`: the model's out-of-distribution detector (models.ood); with one, every
    scored image also gets an ood_score and, above 1, the verdict "unlike training data".
    """

    def __init__(
        self,
        net: torch.nn.Module,
        preprocess: PreprocessConfig,
        *,
        temperature: float = 1.0,
        classes: Sequence[str] = CLASSES,
        tta_views: Sequence[str] = DEFAULT_TTA_VIEWS,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        limits: InputLimits | None = None,
        outputs: str | None = None,
        fits: FitsConfig | None = None,
        ood: OodDetector | None = None,
    ) -> None:
        if ood is not None and not isinstance(net, GalaxyNet):
            raise ValueError("an out-of-distribution detector needs a GalaxyNet (it measures the backbone's features)")
        self.ood = ood
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = prepare_for_inference(net, self.device)  # an exact, faster copy: BN folded, channels_last
        self.transform = EvalPreset(preprocess)
        self.draft = self.transform.draft  # how small the loader may decode a JPEG for this preset
        self.temperature = float(temperature)
        self.classes = tuple(classes)
        self.outputs = outputs or getattr(net, "outputs", LOGITS)
        self.tta_views = check_views(tta_views, "tta_views")
        self.batch_size = batch_size
        self.set_limits(limits or InputLimits())
        self.fits = fits or FitsConfig()  # how FITS inputs are read (HDU, stretch): params.yaml's defaults

    def set_limits(self, limits: InputLimits) -> None:
        """What requests may carry from now on (call before serving: the semaphore is replaced)."""
        self.limits = limits
        self._decode_slots = threading.BoundedSemaphore(limits.max_decodes)

    @contextlib.contextmanager
    def decoding(self, item: Any) -> Iterator[Image.Image]:
        """One input (bytes, base64 text, `file:<path>` under the image root) as RGB under self.limits, held
        by at most limits.max_decodes callers at a time: use the image (transform it, make a thumbnail) inside
        the block, so a full-size decoded image never outlives its slot. ImageError says why not."""
        with self._decode_slots:
            yield decode_image(item, self.limits, self.fits, self.draft)

    def tensor(self, item: Any) -> torch.Tensor:
        """One input through the loader and the eval preset (the small tensor leaves the decoding slot)."""
        with self.decoding(item) as image:
            return self.transform(image)

    @classmethod
    def from_artifacts(cls, model_file: str | os.PathLike, **kwargs: Any) -> GalaxyClassifier:
        """Rebuild from a model file: models/model.pt or the logged artifact (kwargs: tta_views, batch_size,
        device)."""
        loaded = load_model(model_file)
        return cls(
            loaded.model,
            loaded.preprocess,
            temperature=loaded.temperature,
            classes=loaded.classes,
            outputs=loaded.outputs,
            ood=loaded.ood,
            **kwargs,
        )

    @property
    def output_columns(self) -> list[str]:
        """The numbers scored per image: p_<class>..., then vote_fraction_<class>... for a Dirichlet model, then
        ood_score for a model with an out-of-distribution detector."""
        names = [f"p_{c}" for c in self.classes]
        if self.outputs == DIRICHLET:
            names += [f"{VOTE_FRACTION_PREFIX}{c}" for c in self.classes]
        if self.ood is not None:
            names.append(OOD_COLUMN)
        return names

    def score_batch(self, batch: torch.Tensor, *, tta: bool = False) -> np.ndarray:
        """(B, len(output_columns)) of a batch already through self.transform: the calibrated probabilities, the
        expected vote fractions when the model has them, the ood_score when it has a detector."""
        views = self.tta_views if tta else None
        logits, feats = batch_outputs(self.net, batch, self.device, views=views, features=self.ood is not None)
        parts = [softmax_t(logits, self.temperature)]
        if self.outputs == DIRICHLET:
            parts.append(vote_fractions(logits))
        if feats is not None and self.ood is not None:
            if views and len(views) > 1 and not self.ood.scores_views(views):
                # no scale for the mean over these views (a detector from before tta_scale, other views): the
                # identity view's features, on which its one scale was fitted
                _, feats = batch_outputs(self.net, batch, self.device, features=True)
                views = None
            parts.append(self.ood.scores(feats, views)[:, None])
        return np.hstack(parts)

    def labels(self, scores: np.ndarray, errors: Sequence[str | None], threshold: float = 0.0) -> list[str]:
        """labels_of on the probabilities, then "unlike training data" where the ood_score is above 1."""
        labels = labels_of(scores[:, : len(self.classes)], errors, self.classes, threshold)
        return verdicts(scores[:, -1], labels) if self.ood is not None else labels

    def predict_proba(self, items: Sequence[Any], *, tta: bool = False) -> tuple[np.ndarray, list[str | None]]:
        """(N, n_classes) probabilities (NaN rows for unreadable images) and each row's error or None.

        A request over limits.max_rows or limits.max_request_bytes is refused as a whole (every row gets the
        reason) before anything is decoded."""
        scores, errors = self.predict_scores(items, tta=tta)
        return scores[:, : len(self.classes)], errors

    def predict_scores(self, items: Sequence[Any], *, tta: bool = False) -> tuple[np.ndarray, list[str | None]]:
        """As predict_proba, with every column of output_columns."""
        items = list(items)
        probs = np.full((len(items), len(self.output_columns)), np.nan)
        refused = self.limits.check_request(items)
        if refused is not None:
            return probs, [str(refused)] * len(items)
        errors: list[str | None] = [None] * len(items)
        for start in range(0, len(items), self.batch_size):
            rows, tensors = [], []
            for i in range(start, min(start + self.batch_size, len(items))):
                try:
                    tensors.append(self.tensor(items[i]))
                    rows.append(i)
                except Exception as exc:  # one bad upload must not fail the batch
                    errors[i] = _reason(exc)
            if tensors:
                probs[rows] = self.score_batch(torch.stack(tensors), tta=tta)
        return probs, errors

    def predict(self, model_input: Any, *, tta: bool = False, threshold: float = 0.0) -> pd.DataFrame:
        """A DataFrame with p_<class> columns and `label`: the top class, "uncertain" when its probability
        is under `threshold`, "unlike training data" when its ood_score is above 1, or "error: <reason>"; then
        vote_fraction_<class> for a Dirichlet model and ood_score for a model with a detector."""
        items = image_items(model_input)
        scores, errors = self.predict_scores(items, tta=tta)
        labels = self.labels(scores, errors, threshold)
        labels = [ERROR_PREFIX + e if e else label for label, e in zip(labels, errors, strict=True)]
        columns = self.output_columns
        out = pd.DataFrame({name: scores[:, k] for k, name in enumerate(columns[: len(self.classes)])})
        out["label"] = labels
        for k, name in enumerate(columns[len(self.classes) :], start=len(self.classes)):
            out[name] = scores[:, k]
        return out
