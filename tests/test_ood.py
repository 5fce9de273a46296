"""The out-of-distribution detector: the fit, the model file, and the third verdict on every serving path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from galmorph.errors import UserError
from galmorph.evaluation.scoring import kpi_section, predictions_table, score
from galmorph.models.inference import GalaxyClassifier, batch_outputs, predict_outputs
from galmorph.models.ood import OOD_COLUMN, UNLIKE, OodDetector, check_quantile, fit_detector, verdicts
from galmorph.models.resnet import load_model, model_digest, save_model
from galmorph.serving.predict import score_files
from galmorph.serving.web import classify_upload
from galmorph.tracking import logged_model
from galmorph.training.ood import fit_ood
from tests.serving_utils import TINY_MODEL, TINY_PREPROCESS, tiny_detector, tiny_network, write_images
from tests.training_utils import make_catalogue, tiny_params


def _clusters(n: int, seed: int, d: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian classes in d dimensions, correlated features (a covariance far from the identity)."""
    mix = np.random.default_rng(123).normal(size=(d, d)) / np.sqrt(d)  # one distribution for every seed
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    x = rng.normal(size=(n, d)) @ mix + np.where(labels[:, None] == 0, 2.0, -2.0)
    return x, labels


def test_fit_detector_flags_the_quantile_of_held_out_data_and_far_points() -> None:
    train, labels = _clusters(4000, 0)
    val, _ = _clusters(2000, 1)
    test, _ = _clusters(4000, 2)
    det = fit_detector(train, labels, val, 0.95)
    assert det.means.shape == (2, 16) and det.whiten.shape == (16, 16)
    assert 0.0 <= det.shrinkage <= 1.0
    flagged = (det.scores(test) > 1).mean()
    assert 0.03 < flagged < 0.07  # held-out data from the same distribution: about 1 - quantile
    far = test[:100] + 25.0  # far from both class means
    assert (det.scores(far) > 1).all()
    # the distance is the Mahalanobis one: the nearest class mean scores 0
    assert det.distances(det.means.numpy()) == pytest.approx([0.0, 0.0], abs=1e-3)
    # a mean over views is a tighter feature (here: half the spread): its own scale flags the same share
    views = ("identity", "rot90")
    shrunk = fit_detector(train, labels, val, 0.95, val_tta_features=_shrink(val), tta_views=views)
    assert shrunk.scale == det.scale and shrunk.tta_scale < det.scale / 2
    assert 0.03 < (shrunk.scores(_shrink(test), views) > 1).mean() < 0.07
    assert (det.scores(_shrink(test)) > 1).mean() < 0.01  # the one-view scale would flag almost none


def _shrink(x: np.ndarray) -> np.ndarray:
    """Each row of _clusters halfway to its class's centre: what averaging over views does to the spread."""
    centre = np.where(np.arange(len(x))[:, None] % 2 == 0, 2.0, -2.0)
    return centre + (x - centre) / 2


def test_detector_round_trips_through_a_dict_and_refuses_a_malformed_one() -> None:
    train, labels = _clusters(400, 0, d=8)
    det = fit_detector(train, labels, train[:100], 0.99)
    again = OodDetector.from_dict(det.to_dict(), "m.pt")
    np.testing.assert_allclose(again.scores(train[:20]), det.scores(train[:20]), rtol=1e-6)
    with pytest.raises(UserError, match="m.pt: its out-of-distribution detector"):
        OodDetector.from_dict({**det.to_dict(), "whiten": torch.zeros(3, 3)}, "m.pt")
    with pytest.raises(UserError, match="m.pt"):
        OodDetector.from_dict({"means": det.means}, "m.pt")


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1])
def test_quantile_is_checked(bad: float) -> None:
    check_quantile(0.0)  # 0 = no detector
    check_quantile(0.99)
    with pytest.raises(UserError, match="train.ood_quantile"):
        check_quantile(bad)


def test_fit_needs_both_classes() -> None:
    x, _ = _clusters(100, 0, d=4)
    with pytest.raises(UserError, match="cannot fit"):
        fit_detector(x, np.zeros(100, dtype=int), x, 0.9)


def test_verdicts_leave_failed_rows_alone() -> None:
    scores = np.array([0.5, 1.5, np.nan, 3.0])
    assert verdicts(scores, ["spiral", "elliptical", "", "uncertain"]) == ["spiral", UNLIKE, "", UNLIKE]


def _detector(images: list, *, flag_all: bool) -> OodDetector:
    """tiny_network(0)'s detector fitted on `images`, scaled to flag everything or nothing."""
    return dataclasses.replace(tiny_detector(images), scale=1e-9 if flag_all else 1e12)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list:
    return write_images(tmp_path_factory.mktemp("ood-images"), 12)


def test_model_file_keeps_the_detector_and_its_digest_covers_it(tmp_path, params, images) -> None:
    net = tiny_network(0)
    det = _detector(images, flag_all=False)
    plain, with_ood = tmp_path / "plain.pt", tmp_path / "ood.pt"
    save_model(plain, net, TINY_MODEL, TINY_PREPROCESS)
    save_model(with_ood, net, TINY_MODEL, TINY_PREPROCESS, ood=det)
    assert load_model(plain).ood is None
    loaded = load_model(with_ood).ood
    assert loaded is not None and loaded.scale == det.scale
    assert torch.equal(loaded.whiten, det.whiten)
    assert model_digest(plain) != model_digest(with_ood)
    save_model(tmp_path / "again.pt", net, TINY_MODEL, TINY_PREPROCESS, ood=det)
    assert model_digest(tmp_path / "again.pt") == model_digest(with_ood)
    classifier = GalaxyClassifier.from_artifacts(with_ood, device="cpu")
    assert classifier.ood is not None and classifier.output_columns[-1] == OOD_COLUMN


@pytest.mark.parametrize("flag_all", [True, False])
def test_every_path_gives_the_score_and_the_verdict(tmp_path, images, flag_all: bool) -> None:
    net = tiny_network(0)
    det = _detector(images, flag_all=flag_all)
    classifier = GalaxyClassifier(net, TINY_PREPROCESS, device="cpu", ood=det, tta_views=("identity", "rot90"))
    assert classifier.output_columns == ["p_spiral", "p_elliptical", OOD_COLUMN]

    out = classifier.predict(pd.DataFrame({"image": [p.read_bytes() for p in images[:3]] + [b"not an image"]}))
    assert list(out.columns) == ["p_spiral", "p_elliptical", "label", OOD_COLUMN]
    expected = UNLIKE if flag_all else None
    for label in out["label"][:3]:
        assert (label == UNLIKE) if expected else label in ("spiral", "elliptical")
    assert out["label"][3].startswith("error: ") and np.isnan(out[OOD_COLUMN][3])
    assert ((out[OOD_COLUMN][:3] > 1) == flag_all).all()

    files = score_files(classifier, [str(p) for p in images[:4]], workers=0, tta=True, progress=False)
    assert ((files["label"] == UNLIKE) == flag_all).all() and (files["error"] == "").all()
    assert OOD_COLUMN in files.columns

    result, status, _ = classify_upload(classifier, images[0].read_bytes(), threshold=0.0)
    assert status == 200 and (result["verdict"] == UNLIKE) == flag_all and OOD_COLUMN in result

    # the pyfunc's JSON: a failed row's score is null like its probabilities
    nulls = logged_model.nulls_for_failed_rows(out.copy())
    assert nulls[OOD_COLUMN][3] is None


@pytest.mark.parametrize("views", [("identity", "rot90", "hflip"), ("rot90", "rot180")])
def test_tta_scores_the_mean_features_on_their_own_scale(images, views) -> None:
    """A mean over views is scored on the scale fitted for those views; without one (a detector from before
    tta_scale, or other views) on the identity view's features, the same score as without TTA."""
    batch = pd.DataFrame({"image": [p.read_bytes() for p in images]})
    plain_det, tta_det = tiny_detector(images), tiny_detector(images, tta_views=views)
    assert plain_det.tta_scale == 0 and tta_det.tta_scale > 0 and tta_det.tta_views == views
    stored = OodDetector.from_dict(tta_det.to_dict(), "m.pt")
    assert (stored.tta_views, stored.tta_scale) == (views, tta_det.tta_scale)
    assert OodDetector.from_dict(plain_det.to_dict(), "m.pt").tta_views == ()
    for det, other_views in ((plain_det, views), (tta_det, ("identity", "transpose"))):
        classifier = GalaxyClassifier(tiny_network(0), TINY_PREPROCESS, device="cpu", ood=det, tta_views=other_views)
        plain, tta = classifier.predict(batch), classifier.predict(batch, tta=True)
        np.testing.assert_allclose(tta[OOD_COLUMN], plain[OOD_COLUMN], rtol=1e-5)
        assert not np.allclose(tta["p_spiral"], plain["p_spiral"], rtol=0, atol=1e-7)  # the views were applied

    classifier = GalaxyClassifier(tiny_network(0), TINY_PREPROCESS, device="cpu", ood=tta_det, tta_views=views)
    tta = classifier.predict(batch, tta=True)[OOD_COLUMN].to_numpy()
    x = torch.stack([classifier.tensor(p.read_bytes()) for p in images])
    _, mean_feats = batch_outputs(classifier.net, x, classifier.device, views=views, features=True)
    np.testing.assert_allclose(tta, tta_det.distances(mean_feats) / tta_det.tta_scale, rtol=1e-5)
    _, one_view = batch_outputs(classifier.net, x, classifier.device, features=True)
    assert not np.allclose(tta, tta_det.distances(one_view) / tta_det.tta_scale)  # a feature of its own
    with pytest.raises(ValueError, match="no scale for the mean"):
        plain_det.scores(np.zeros((1, plain_det.means.shape[1])), views)


def test_noise_scores_higher_than_the_galaxies_it_was_fitted_on(tmp_path, images) -> None:
    """With the network's features, pure noise lands far from the galaxies (a real, not a forced, score)."""
    net = tiny_network(0)
    _, feats = predict_outputs(net, images, TINY_PREPROCESS, num_workers=0, device="cpu", features=True)
    det = fit_detector(feats, np.arange(len(feats)) % 2, feats, 0.9)
    rng = np.random.default_rng(0)
    noise = []
    for i in range(4):
        path = tmp_path / f"noise{i}.png"
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        noise.append(path)
    classifier = GalaxyClassifier(net, TINY_PREPROCESS, device="cpu", ood=det)
    galaxy_scores = classifier.predict(pd.DataFrame({"image": [p.read_bytes() for p in images]}))[OOD_COLUMN]
    noise_scores = classifier.predict(pd.DataFrame({"image": [p.read_bytes() for p in noise]}))[OOD_COLUMN]
    assert noise_scores.min() > galaxy_scores.median()


def test_a_model_without_a_detector_keeps_its_columns(images) -> None:
    classifier = GalaxyClassifier(tiny_network(0), TINY_PREPROCESS, device="cpu")
    out = classifier.predict(pd.DataFrame({"image": [images[0].read_bytes()]}))
    assert list(out.columns) == ["p_spiral", "p_elliptical", "label"]
    assert logged_model.classifier_signature().outputs.input_names() == ["p_spiral", "p_elliptical", "label"]
    assert logged_model.classifier_signature(ood=True).outputs.input_names()[-1] == OOD_COLUMN


def test_fit_ood_on_a_catalogue_and_the_evaluation_summary(tmp_path, params) -> None:
    catalogue = make_catalogue(tmp_path, n=40)
    p = tiny_params(params, tmp_path, ood_quantile=0.9)
    torch.manual_seed(0)
    net = tiny_network(0)
    det = fit_ood(net, catalogue, p)
    assert det is not None and det.quantile == 0.9
    assert fit_ood(net, catalogue, tiny_params(params, tmp_path, ood_quantile=0.0)) is None
    with pytest.raises(UserError, match="train and val rows"):
        fit_ood(net, catalogue[catalogue["split"] != "val"], p)

    test = catalogue[catalogue["split"] == "test"]
    cfg = dataclasses.replace(p.evaluate, tta=False, num_workers=0, bootstrap=20)
    scored = score(net, test, p.preprocess, cfg, 1.0, name="test", ood=det)
    assert scored.ood_scores is not None and len(scored.ood_scores) == len(test)
    section = kpi_section(scored, cfg)
    assert section["ood"]["n_flagged"] == int((scored.ood_scores > 1).sum())
    table = predictions_table(scored, 0.5)
    assert (table["unlike_training_data"] == (table[OOD_COLUMN] > 1)).all()
