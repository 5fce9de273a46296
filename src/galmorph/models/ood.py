"""Is an image like the training data? A Mahalanobis distance in the network's own feature space.

The two class probabilities always sum to one, so a FITS file of pure noise can come back "spiral, 0.99". The
pooled backbone features say more: fitted on the training split, one Gaussian per class with a shared
covariance (Lee et al. 2018, "A simple unified framework for detecting out-of-distribution samples"), an image
far from every class mean is unlike anything the model was trained on. The covariance is Ledoit-Wolf shrunk
(scikit-learn), since a ResNet-50's 2,048 features are estimated from a few thousand galaxies.

The score is that squared distance divided by its `quantile` on the validation split, so it reads the same for
every model: above 1 = "unlike training data" (about 1 - quantile of ordinary validation galaxies cross it).
With test-time augmentation the features are the mean over the views: a smoother feature that ranks unusual
images better (BENCHMARKS.md "out-of-distribution detector") but whose distances are smaller, so it has a scale
of its own (`tta_scale`, the same quantile of the validation split's TTA features, for `tta_views`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.covariance import ledoit_wolf

from galmorph.errors import UserError

UNLIKE = "unlike training data"
"""The verdict of an image whose ood_score is above 1."""
OOD_COLUMN = "ood_score"


@dataclasses.dataclass(frozen=True)
class OodDetector:
    """Class means and a whitening matrix W (W^T W = the shrunk covariance's inverse) in feature space, and the
    squared distance that counts as 1 (the validation split's `quantile`) for one view's features and, for
    the mean features over `tta_views`, `tta_scale` (0: not fitted; a model file from before it)."""

    means: torch.Tensor  # (K, D) float32
    whiten: torch.Tensor  # (D, D) float32, lower-triangular inverse Cholesky factor
    scale: float
    quantile: float
    shrinkage: float
    tta_views: tuple[str, ...] = ()
    tta_scale: float = 0.0

    def scores_views(self, views: Sequence[str] | None) -> bool:
        """Whether mean features over `views` have a scale of their own (else score the identity view)."""
        return bool(views) and len(views) > 1 and tuple(views) == self.tta_views and self.tta_scale > 0

    def with_tta_scale(self, val_tta_features: np.ndarray, views: Sequence[str]) -> OodDetector:
        """This detector with the scale of mean features over `views`: the same quantile of the validation
        split's mean features (no refit of the means and covariance)."""
        tta_scale = float(np.quantile(self.distances(val_tta_features), self.quantile))
        return dataclasses.replace(self, tta_views=tuple(views), tta_scale=max(tta_scale, 1e-12))

    def distances(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """Squared Mahalanobis distance (N,) of each feature row to the nearest class mean, float64."""
        f = torch.as_tensor(np.asarray(features, dtype=np.float32))
        if f.ndim != 2 or f.shape[1] != self.means.shape[1]:
            raise ValueError(f"features: expected (N, {self.means.shape[1]}), got {tuple(f.shape)}")
        z = f @ self.whiten.T  # (N, D): whitened features
        m = self.means @ self.whiten.T  # (K, D): whitened class means
        d = (z.unsqueeze(1) - m.unsqueeze(0)).pow(2).sum(-1)  # (N, K)
        return d.min(dim=1).values.double().numpy().copy()

    def scores(self, features: np.ndarray | torch.Tensor, views: Sequence[str] | None = None) -> np.ndarray:
        """ood_score: the distance in units of the validation quantile (> 1: unlike training data), for one
        view's features or (`views`, scores_views) their mean over those views."""
        if views is not None and len(views) > 1:
            if not self.scores_views(views):
                raise ValueError(f"no scale for the mean over views {list(views)}: score the identity view")
            return self.distances(features) / self.tta_scale
        return self.distances(features) / self.scale

    def to_dict(self) -> dict[str, Any]:
        """Tensors and plain values: what the model file stores under "ood" (weights_only loadable)."""
        return {
            "means": self.means.detach().cpu().float().contiguous(),
            "whiten": self.whiten.detach().cpu().float().contiguous(),
            "scale": float(self.scale),
            "quantile": float(self.quantile),
            "shrinkage": float(self.shrinkage),
            "tta_views": list(self.tta_views),
            "tta_scale": float(self.tta_scale),
        }

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any], where: str) -> OodDetector:
        """The detector of a model file's "ood" entry; a malformed one names the file."""
        try:
            means, whiten = stored["means"], stored["whiten"]
            ok = (
                isinstance(means, torch.Tensor)
                and isinstance(whiten, torch.Tensor)
                and means.ndim == 2
                and whiten.shape == (means.shape[1], means.shape[1])
                and float(stored["scale"]) > 0
                and float(stored.get("tta_scale", 0.0)) >= 0
                and all(isinstance(v, str) for v in stored.get("tta_views", []))
            )
            if not ok:
                raise ValueError
            return cls(
                means=means.float().contiguous(),
                whiten=whiten.float().contiguous(),
                scale=float(stored["scale"]),
                quantile=float(stored["quantile"]),
                shrinkage=float(stored.get("shrinkage", 0.0)),
                tta_views=tuple(stored.get("tta_views", ())),
                tta_scale=float(stored.get("tta_scale", 0.0)),
            )
        except (KeyError, TypeError, ValueError):
            raise UserError(f'{where}: its out-of-distribution detector ("ood") is malformed') from None


def check_quantile(quantile: float) -> None:
    """train.ood_quantile: 0 (no detector) or a share strictly between 0 and 1; checked before training starts."""
    if quantile and not 0.0 < quantile < 1.0:
        raise UserError(f"params: train.ood_quantile: expected a share between 0 and 1 (or 0 = off), got {quantile}")


def fit_detector(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    quantile: float,
    *,
    val_tta_features: np.ndarray | None = None,
    tta_views: Sequence[str] = (),
) -> OodDetector:
    """Class means and one Ledoit-Wolf covariance from the training split; the scale from the validation split
    (held out from the fit, so its distances are what unseen ordinary galaxies get), and the TTA scale from its
    mean features over `tta_views` when given."""
    if not quantile:
        raise UserError("params: train.ood_quantile: 0 means no detector; there is nothing to fit")
    check_quantile(quantile)
    x = np.asarray(train_features, dtype=np.float64)
    y = np.asarray(train_labels)
    counts = np.bincount(y, minlength=2) if len(y) else np.zeros(2, dtype=int)
    if (counts < 2).any() or len(val_features) == 0:  # Ledoit-Wolf copes with fewer images than features
        raise UserError(
            f"train.ood_quantile: cannot fit the out-of-distribution detector on {len(x)} training and "
            f"{len(val_features)} validation images (need two of each class and a validation split); set it to 0"
        )
    means = np.stack([x[y == k].mean(axis=0) for k in range(len(counts))])
    centred = x - means[y]
    covariance, shrinkage = ledoit_wolf(centred, assume_centered=True)
    chol = torch.linalg.cholesky(torch.tensor(covariance, dtype=torch.float64))
    eye = torch.eye(chol.shape[0], dtype=torch.float64)
    whiten = torch.linalg.solve_triangular(chol, eye, upper=False)  # L^-1: ||L^-1 v||^2 = v^T Sigma^-1 v
    detector = OodDetector(
        means=torch.tensor(means, dtype=torch.float32),
        whiten=whiten.float().contiguous(),
        scale=1.0,
        quantile=float(quantile),
        shrinkage=float(shrinkage),
    )
    scale = float(np.quantile(detector.distances(val_features), quantile))
    detector = dataclasses.replace(detector, scale=max(scale, 1e-12))
    if val_tta_features is None or len(tta_views) < 2:
        return detector
    return detector.with_tta_scale(val_tta_features, tta_views)


def verdicts(scores: np.ndarray, labels: list[str]) -> list[str]:
    """`labels` with UNLIKE where the score is above 1 (a failed row, "" or NaN score, keeps its label)."""
    return [UNLIKE if label and np.isfinite(s) and s > 1.0 else label for s, label in zip(scores, labels, strict=True)]
