"""Fit the out-of-distribution detector (models.ood) of a trained model: the train stage's last step.

Features come through the one inference path (predict_outputs: the eval preset, the identity view), so what is
fitted here is what predict, REST, the web page and Spark measure; the val split's features averaged over the
serving TTA views (DEFAULT_TTA_VIEWS, what `--tta` averages) give the score's scale under TTA.
"""

from __future__ import annotations

import pandas as pd

from galmorph.config import Params
from galmorph.data.dataset import label_ids
from galmorph.errors import UserError
from galmorph.models.inference import DEFAULT_TTA_VIEWS, predict_outputs
from galmorph.models.ood import OodDetector, fit_detector
from galmorph.models.resnet import GalaxyNet


def fit_ood(
    model: GalaxyNet, catalogue: pd.DataFrame, params: Params, *, split_column: str = "split"
) -> OodDetector | None:
    """The detector of `model` from the catalogue's train rows (class means, covariance) and val rows (the
    score's scale), or None when train.ood_quantile is 0."""
    quantile = params.train.ood_quantile
    if not quantile:
        return None
    kwargs = {
        "batch_size": max(params.train.batch_size, 64),
        "num_workers": params.train.num_workers,
        "device": params.train.device,
        "precision": params.train.precision,
        "progress": True,
        "features": True,
    }
    train = catalogue[catalogue[split_column] == "train"]
    val = catalogue[catalogue[split_column] == "val"]
    if train.empty or val.empty:
        raise UserError(
            f"train.ood_quantile: the detector needs train and val rows ({len(train)} and {len(val)}); set it to 0"
        )
    _, train_features = predict_outputs(model, train, params.preprocess, **kwargs)
    _, val_features = predict_outputs(model, val, params.preprocess, **kwargs)
    _, val_tta = predict_outputs(model, val, params.preprocess, tta_views=DEFAULT_TTA_VIEWS, **kwargs)
    assert train_features is not None and val_features is not None  # a GalaxyNet on images has features
    return fit_detector(
        train_features, label_ids(train), val_features, quantile, val_tta_features=val_tta, tta_views=DEFAULT_TTA_VIEWS
    )
