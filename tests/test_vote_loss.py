"""Vote-aware training: the Dirichlet-multinomial loss on vote counts, where the counts come from (GZ1 table 2,
manifest count columns), a tiny fit with it, and the expected vote fraction in the model file and predictions."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy.special import gammaln

from galmorph.data.dataset import ImageDataset, has_vote_counts, vote_counts
from galmorph.data.join import vote_counts as gz1_vote_counts
from galmorph.data.sources.manifest import read_manifest_catalogue
from galmorph.data.transforms import EvalPreset
from galmorph.errors import UserError
from galmorph.models import resnet
from galmorph.models.inference import GalaxyClassifier, predict_logits, softmax_t
from galmorph.serving.predict import score_files
from galmorph.tracking.logged_model import nulls_for_failed_rows
from galmorph.training.engine import Criterion, dirichlet_multinomial_nll
from galmorph.training.loop import fit
from tests.test_catalog import LABELLED, row
from tests.test_join import catalogue_raw, run_join
from tests.training_utils import make_catalogue, one_thread, tiny_params

_one_thread = pytest.fixture(autouse=True)(one_thread)


def _dm_nll_by_hand(counts: np.ndarray, alpha: np.ndarray) -> float:
    """-log Dirichlet-multinomial pmf, written out with scipy's gammaln."""
    n, a = counts.sum(), alpha.sum()
    log_p = (
        gammaln(n + 1)
        - gammaln(counts + 1).sum()
        + gammaln(a)
        - gammaln(n + a)
        + (gammaln(counts + alpha) - gammaln(alpha)).sum()
    )
    return float(-log_p)


# ------------------------------------------------------------------------------------------------ the loss


def test_dirichlet_multinomial_nll_matches_the_hand_computed_likelihood():
    counts = np.array([[3.0, 1.0], [40.0, 20.0], [0.0, 7.0]])
    alpha = np.array([[2.5, 0.7], [12.0, 5.0], [0.3, 4.0]])
    got = dirichlet_multinomial_nll(torch.tensor(np.log(alpha)), torch.tensor(counts)).numpy()
    expected = [_dm_nll_by_hand(c, a) for c, a in zip(counts, alpha, strict=True)]
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    # alpha = (1, 1) is the uniform prior on the fraction: every split of n votes has probability 1 / (n + 1)
    uniform = dirichlet_multinomial_nll(torch.zeros(2, 2), torch.tensor([[3.0, 1.0], [40.0, 20.0]])).numpy()
    np.testing.assert_allclose(uniform, [math.log(5), math.log(61)], rtol=1e-12)


def test_one_vote_is_cross_entropy_on_the_expected_fraction():
    logits = torch.randn(8, 2, dtype=torch.float64)
    labels = torch.randint(0, 2, (8,))
    one_vote = F.one_hot(labels, 2).double()
    np.testing.assert_allclose(
        dirichlet_multinomial_nll(logits, one_vote).numpy(),
        F.cross_entropy(logits, labels, reduction="none").numpy(),
        rtol=1e-10,
    )


def test_gradients_are_finite_and_sixty_votes_weigh_more_than_three():
    logits = torch.tensor([[50.0, -50.0], [0.0, 0.0], [3.0, 1.0], [-12.0, 9.0]], requires_grad=True)
    counts = torch.tensor([[0.0, 60.0], [3.0, 0.0], [200.0, 1.0], [0.0, 0.0]])
    loss = Criterion("dirichlet", None, 0.0)(logits, torch.tensor([1, 0, 0, 1]), counts)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()

    def pull(votes: list[float], alpha: float) -> float:
        """The gradient along the predicted fraction (z_spiral - z_elliptical) at fraction 0.5."""
        z = torch.full((1, 2), math.log(alpha), requires_grad=True)
        dirichlet_multinomial_nll(z, torch.tensor([votes])).sum().backward()
        return float(z.grad[0, 1] - z.grad[0, 0]) / 2

    # the same 2:1 split seen by 3 volunteers and by 60: once the model is sure of its fraction (alpha 20 each)
    # the 60-vote galaxy pulls ~9x harder (20x, k - n p, in the multinomial limit); a vague model (alpha 1)
    # learns about its own uncertainty from both about equally
    assert pull([40.0, 20.0], 20.0) > 8 * pull([2.0, 1.0], 20.0) > 0
    assert pull([40.0, 20.0], 1.0) < 2 * pull([2.0, 1.0], 1.0)


def test_criterion_weights_rows_by_label_and_smooths_votes_towards_uniform():
    logits = torch.tensor([[1.0, -0.5], [0.2, 0.9], [-1.0, 2.0]], dtype=torch.float64)
    counts = torch.tensor([[30.0, 5.0], [4.0, 9.0], [1.0, 20.0]])
    labels = torch.tensor([0, 1, 1])
    w = torch.tensor([3.0, 0.5])
    per_row = dirichlet_multinomial_nll(logits, counts)
    expected = (per_row * w[labels]).sum() / w[labels].sum()
    got = Criterion("dirichlet", w, 0.0)(logits, labels, counts)
    np.testing.assert_allclose(float(got), float(expected), rtol=1e-6)
    smoothed = counts * 0.9 + 0.1 * counts.sum(1, keepdim=True) / 2
    expected_smooth = dirichlet_multinomial_nll(logits, smoothed).mean()
    np.testing.assert_allclose(float(Criterion("dirichlet", None, 0.1)(logits, labels, counts)), float(expected_smooth))
    with pytest.raises(UserError, match="ce, soft or dirichlet"):
        Criterion("dm", None, 0.0)


# ------------------------------------------------------------------------------------------ where counts come from


def test_vote_counts_fall_back_to_label_votes_and_skip_bad_rows():
    df = pd.DataFrame(
        {
            "label_id": [0, 1, 0, -1, 1],
            "count_spiral": [30.0, np.nan, -1.0, np.nan, 0.0],
            "count_elliptical": [5.0, np.nan, 4.0, np.nan, 0.0],
        }
    )
    assert has_vote_counts(df).tolist() == [True, False, False, False, False]
    got = vote_counts(df, label_votes=3.0)
    np.testing.assert_array_equal(got[[0, 1, 2, 4]], [[30, 5], [0, 3], [3, 0], [0, 3]])
    assert np.isnan(got[3]).all()  # unlabelled and without counts: nothing to learn from
    assert not has_vote_counts(df[["label_id"]]).any()


def test_gz1_counts_are_nvote_times_the_debiased_fractions():
    table2 = pd.DataFrame(
        {
            "NVOTE": [34, 7, 250],
            "P_CS": [0.353, 0.714, 0.104],
            "P_EL": [0.618, 0.286, 0.888],
            "P_CS_DEBIASED": [0.5, 0.714, 0.2],
            "P_EL_DEBIASED": [0.471, 0.286, 0.792],
        }
    )
    got = gz1_vote_counts(table2)
    np.testing.assert_allclose(got["spiral"], [17, 4.998, 50])
    np.testing.assert_allclose(got["elliptical"], [16.014, 2.002, 198])


def test_the_join_stage_carries_gz1_counts_into_the_catalogue(tmp_path):
    raw = catalogue_raw(tmp_path, [row(i, f, el, cs) for i, (f, el, cs) in enumerate(LABELLED, 1)])
    rc, out = run_join(tmp_path, raw)
    joined = pd.read_parquet(out["joined.parquet"])
    assert rc == 0 and has_vote_counts(joined).all()
    np.testing.assert_allclose(joined["count_spiral"], joined["nvote"] * joined["p_spiral"])
    np.testing.assert_allclose(joined["count_elliptical"], joined["nvote"] * joined["p_elliptical"])


def _manifest(tmp_path, rows: list[str], **settings) -> pd.DataFrame:
    (tmp_path / "m.csv").write_text("filename,label,f_sp,f_el,n_sp,n_el,total\n" + "\n".join(rows) + "\n")
    source = {
        "kind": "manifest",
        "path": str(tmp_path / "m.csv"),
        "image_root": str(tmp_path),
        "path_column": "filename",
        "id_column": None,
        "label_column": "label",
        "label_map": {"spiral": "spiral", "elliptical": "elliptical"},
        "vote_columns": None,
        "vote_threshold": 0.8,
        **settings,
    }
    return read_manifest_catalogue(source, root=tmp_path).joined


def test_manifest_counts_from_count_columns_or_fractions_times_total(tmp_path):
    rows = ["a.jpg,spiral,0.75,0.25,30,10,40", "b.jpg,elliptical,,,,,", "c.jpg,elliptical,0.1,0.9,2,18,20"]
    by_columns = _manifest(tmp_path, rows, count_columns={"spiral": "n_sp", "elliptical": "n_el"})
    np.testing.assert_array_equal(by_columns["count_spiral"], [30, np.nan, 2])
    np.testing.assert_array_equal(by_columns["count_elliptical"], [10, np.nan, 18])
    by_total = _manifest(
        tmp_path, rows, vote_columns={"spiral": "f_sp", "elliptical": "f_el"}, total_votes_column="total"
    )
    np.testing.assert_allclose(by_total["count_spiral"], [30, np.nan, 2])
    np.testing.assert_allclose(by_total["count_elliptical"], [10, np.nan, 18])
    with pytest.raises(UserError, match="m.csv: line 3, column n_el: expected a vote count"):
        _manifest(tmp_path, [rows[0], "b.jpg,spiral,,,1,-2,"], count_columns={"spiral": "n_sp", "elliptical": "n_el"})
    with pytest.raises(UserError, match="count_columns or total_votes_column, not both"):
        _manifest(tmp_path, rows, count_columns={"spiral": "n_sp", "elliptical": "n_el"}, total_votes_column="total")
    with pytest.raises(UserError, match="total_votes_column: needs vote_columns"):
        _manifest(tmp_path, rows, total_votes_column="total")


# --------------------------------------------------------------------------------- a fit, the file, the outputs


@pytest.fixture(scope="module")
def voted(tmp_path_factory):
    """The tiny separable set with vote counts: 3 to 60 volunteers, mostly for the true class."""
    df = make_catalogue(tmp_path_factory.mktemp("voted"), n=40)
    rng = np.random.default_rng(1)
    n = rng.integers(3, 61, len(df)).astype(float)
    frac = np.where(df["label_id"] == 0, 0.85, 0.15)
    df["count_spiral"] = np.round(n * frac)
    df["count_elliptical"] = n - df["count_spiral"]
    df.loc[df.index % 9 == 4, ["count_spiral", "count_elliptical"]] = np.nan  # some galaxies have a label only
    return df


def test_dirichlet_fit_learns_and_ships_the_expected_vote_fraction(voted, params, tmp_path):
    p = tiny_params(params, tmp_path, mode="frozen", epochs=4, lr=0.003, loss="dirichlet")
    result = fit(voted, p, progress=False)
    assert result.best_metrics["val_acc"] >= 0.9
    assert result.model.outputs == resnet.DIRICHLET

    path = tmp_path / "model.pt"
    resnet.save_model(path, result.model, p.model, p.preprocess, temperature=1.7)
    assert resnet.load_model(path).outputs == resnet.DIRICHLET
    classifier = GalaxyClassifier.from_artifacts(path, device="cpu", tta_views=["identity"])
    assert classifier.output_columns == [
        "p_spiral",
        "p_elliptical",
        "vote_fraction_spiral",
        "vote_fraction_elliptical",
    ]
    test = voted[voted["split"] == "test"].reset_index(drop=True)
    logits = predict_logits(result.model, test, p.preprocess, num_workers=0, device="cpu", precision="fp32")
    out = classifier.predict([Path(x).read_bytes() for x in test["image_path"]])  # what REST is sent
    np.testing.assert_allclose(out[["p_spiral", "p_elliptical"]], softmax_t(logits, 1.7), atol=2e-4)
    np.testing.assert_allclose(out[["vote_fraction_spiral", "vote_fraction_elliptical"]], softmax_t(logits), atol=2e-4)
    assert list(out.columns) == [
        "p_spiral",
        "p_elliptical",
        "label",
        "vote_fraction_spiral",
        "vote_fraction_elliptical",
    ]

    files = [*test["image_path"], str(tmp_path / "missing.jpg")]
    scored = score_files(classifier, files, workers=0, progress=False)
    assert list(scored.columns)[-2:] == ["vote_fraction_spiral", "vote_fraction_elliptical"]
    np.testing.assert_allclose(
        scored[["vote_fraction_spiral", "vote_fraction_elliptical"]][:-1], softmax_t(logits), atol=2e-4
    )
    assert scored["error"].iat[-1] and np.isnan(scored["vote_fraction_spiral"].iat[-1])
    failed = nulls_for_failed_rows(classifier.predict([b"not an image"]))
    assert failed["vote_fraction_spiral"].iat[0] is None  # JSON null, not NaN


def test_dirichlet_finetune_reads_counts_through_the_image_dataset(voted, params, tmp_path):
    p = tiny_params(params, tmp_path, mode="finetune", epochs=1, loss="dirichlet", label_votes=2.0)
    train = voted[voted["split"] == "train"].reset_index(drop=True)
    ds = ImageDataset(train, EvalPreset(p.preprocess), targets=vote_counts(train, 2.0))
    _, label, target, _ = ds[4]
    assert has_vote_counts(train.iloc[[4]]).item() is False and target.tolist() == [2.0, 0.0] and label == 0
    result = fit(voted, p, progress=False)
    assert result.model.outputs == resnet.DIRICHLET and np.isfinite(result.history[0]["train_loss"])


def test_dirichlet_without_counts_is_a_user_error_and_ce_models_have_no_vote_fraction(voted, params, tmp_path):
    p = tiny_params(params, tmp_path, mode="frozen", epochs=1, loss="dirichlet")
    with pytest.raises(UserError, match="no training galaxy has vote counts"):
        fit(voted.drop(columns=["count_spiral", "count_elliptical"]), p, progress=False)
    with pytest.raises(UserError, match="label_votes"):
        fit(voted, tiny_params(params, tmp_path, loss="dirichlet", label_votes=0.0), progress=False)
    ce = fit(voted, tiny_params(params, tmp_path, mode="frozen", epochs=1), progress=False)
    assert ce.model.outputs == resnet.LOGITS
    assert GalaxyClassifier(ce.model, p.preprocess, device="cpu").output_columns == ["p_spiral", "p_elliptical"]


def test_model_files_from_before_the_outputs_key_load_as_logits_with_the_same_digest(tmp_path, params):
    cfg = dataclasses.replace(params.model, arch="resnet18", weights="none", hidden=8)
    net = resnet.build_model(cfg)
    path = tmp_path / "new.pt"
    resnet.save_model(path, net, cfg, params.preprocess, temperature=1.2)
    old = torch.load(path, weights_only=True)
    assert old.pop("outputs") == resnet.LOGITS
    torch.save(old, tmp_path / "old.pt")
    loaded = resnet.load_model(tmp_path / "old.pt")
    assert loaded.outputs == resnet.LOGITS and loaded.model.outputs == resnet.LOGITS
    assert resnet.model_digest(tmp_path / "old.pt") == resnet.model_digest(path)
    net.outputs = resnet.DIRICHLET  # what the numbers mean is part of what the model computes
    resnet.save_model(tmp_path / "dm.pt", net, cfg, params.preprocess, temperature=1.2)
    assert resnet.model_digest(tmp_path / "dm.pt") != resnet.model_digest(path)
    old["outputs"] = "quantiles"
    torch.save(old, tmp_path / "future.pt")
    with pytest.raises(UserError, match="outputs 'quantiles'"):
        resnet.load_model(tmp_path / "future.pt")
