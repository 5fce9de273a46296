"""Stability: the same training configuration fitted on each repeated split (`split_1`..`split_K`).

One test split gives one number; how much of it is the model and how much the luck of the split is what
the repeated splits answer. Each fit reuses training's own fit() (so it is the same recipe, early
stopping included); in frozen mode it trains only the head on the embedding cache, so K fits take
seconds to minutes on a CPU, and the test galaxies are scored from the cache as well.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from galmorph.config import Params
from galmorph.errors import UserError
from galmorph.evaluation.metrics import classification_metrics
from galmorph.models.inference import predict_logits
from galmorph.training.loop import fit

_REPEAT = re.compile(r"^split_(\d+)$")


def repeated_split_columns(catalogue: pd.DataFrame) -> list[str]:
    """`split_1`, `split_2`, ... in numeric order (split_10 after split_9)."""
    found = [(int(m.group(1)), c) for c in catalogue.columns if (m := _REPEAT.match(str(c)))]
    return [c for _, c in sorted(found)]


def _test_logits(model: torch.nn.Module, test: pd.DataFrame, params: Params, features: Any) -> np.ndarray:
    """Logits of the test rows: from the embedding cache's identity view when there is one, else the images."""
    if features is not None and "identity" in features.views and hasattr(model, "head"):
        rows = features.rows(test["galaxy_id"].astype(str).tolist())
        x = torch.from_numpy(np.asarray(features.features[rows, features.views.index("identity")], dtype=np.float32))
        with torch.inference_mode():
            return model.eval().head(x).float().numpy()

    return predict_logits(
        model,
        test,
        params.preprocess,
        batch_size=params.evaluate.batch_size,
        num_workers=params.evaluate.num_workers,
        device=params.evaluate.device,
    )


def run_stability(catalogue: pd.DataFrame, params: Params, *, features: Any = None) -> pd.DataFrame:
    """One row per repeated split: split, n_test, accuracy, macro_f1, best_epoch (ties to the main split's
    recipe: params.model/train/augment/embed as the train stage used them)."""

    columns = repeated_split_columns(catalogue)
    if not columns:
        raise UserError("splits: no split_1..split_K columns (set split.repeats > 0 and run `galmorph split`)")
    rows = []
    for column in tqdm(columns, desc="stability", unit="split"):
        test = catalogue[catalogue[column] == "test"]
        if test.empty:
            raise UserError(f"splits: column {column} has no test rows")
        result = fit(catalogue, params, split_column=column, features=features)
        logits = _test_logits(result.model, test, params, features)
        labels = test["label_id"].to_numpy(dtype=np.int64)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        kpis = classification_metrics(probs, labels, n_resamples=0)
        rows.append(
            {
                "split": column,
                "n_test": len(test),
                "accuracy": kpis["accuracy"].value,
                "macro_f1": kpis["macro_f1"].value,
                "best_epoch": int(getattr(result, "best_epoch", -1)),
            }
        )
    return pd.DataFrame(rows)


def summarize(per_split: pd.DataFrame) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single split) of accuracy and macro F1."""
    out: dict[str, Any] = {"n_splits": len(per_split), "per_split": per_split.to_dict(orient="records")}
    for name in ("accuracy", "macro_f1"):
        values = per_split[name].to_numpy(dtype=np.float64)
        out[f"{name}_mean"] = float(values.mean())
        out[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out
