"""The one inference path: predict_logits and softmax_t agree with the eager model on the eval preset."""

import numpy as np
import pytest
import torch

from galmorph.data.dataset import ImageDataset
from galmorph.data.transforms import EvalPreset
from galmorph.errors import UserError
from galmorph.models.inference import labels_of, predict_logits, softmax_t
from tests.training_utils import make_catalogue, one_thread, tiny_params

_one_thread = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    return make_catalogue(tmp_path_factory.mktemp("tiny"), n=12)


def _proba(model, rows, preprocess, **kwargs):
    return softmax_t(predict_logits(model, rows, preprocess, **kwargs))


def test_predict_logits_batches_tta_and_temperature(catalogue, params, tmp_path):
    from galmorph.models.resnet import build_model

    p = tiny_params(params, tmp_path)
    torch.manual_seed(0)
    model = build_model(p.model).eval()
    rows = catalogue.iloc[:5]
    probs = _proba(model, rows, p.preprocess, batch_size=2, num_workers=0, device="cpu")
    assert probs.shape == (5, 2) and np.allclose(probs.sum(1), 1)
    # the same as the plain eager model on the eval preset, in input order
    x = torch.stack([ImageDataset(rows, EvalPreset(p.preprocess))[i][0] for i in range(5)])
    with torch.inference_mode():
        expected = torch.softmax(model(x), 1).numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-3, atol=1e-4)
    paths = _proba(model, list(rows["image_path"]), p.preprocess, num_workers=0, device="cpu")
    np.testing.assert_allclose(paths, probs, rtol=1e-5, atol=1e-6)
    logits = predict_logits(model, rows, p.preprocess, num_workers=0, device="cpu")
    with torch.inference_mode():
        # bf16 autocast where the CPU has it (precision auto): 8 bits of mantissa, and T = 0.1 magnifies that
        # tenfold in the probabilities, so the logits are compared, then the temperature exactly
        np.testing.assert_allclose(logits, model(x).numpy(), rtol=2e-2, atol=5e-3)
    hot = softmax_t(logits, 0.1)
    expected_hot = torch.softmax(torch.from_numpy(logits).double() / 0.1, 1).numpy()
    np.testing.assert_allclose(hot, expected_hot, rtol=1e-9, atol=1e-12)
    assert not np.allclose(hot, probs, atol=1e-3)  # T = 0.1 really sharpened them
    tta = _proba(model, rows, p.preprocess, tta_views=["identity", "rot180"], num_workers=0, device="cpu")
    with torch.inference_mode():
        mean_logits = (model(x) + model(torch.rot90(x, 2, (2, 3)))) / 2
    np.testing.assert_allclose(tta, torch.softmax(mean_logits, 1).numpy(), rtol=1e-3, atol=1e-4)
    with pytest.raises(UserError, match="tta_views"):
        _proba(model, rows, p.preprocess, tta_views=["rot45"], num_workers=0, device="cpu")


def test_unreadable_image_is_one_line_user_error(params, tmp_path):
    from galmorph.models.resnet import build_model

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    p = tiny_params(params, tmp_path)
    with pytest.raises(UserError) as err:
        _proba(build_model(p.model), [bad], p.preprocess, num_workers=1, device="cpu")
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_softmax_t_matches_definition_and_is_stable():
    logits = np.array([[1000.0, 999.0], [0.0, 0.0], [-3.0, 2.0]])
    p = softmax_t(logits)
    assert np.allclose(p.sum(axis=1), 1.0)
    assert np.allclose(p[0], [1 / (1 + np.exp(-1)), 1 - 1 / (1 + np.exp(-1))])
    assert np.allclose(p[1], [0.5, 0.5])
    assert np.allclose(softmax_t(logits, 2.0)[2], softmax_t(logits[2:] / 2.0)[0])


def test_labels_of_abstains_under_the_threshold_and_blanks_errors():
    probs = np.array([[0.9, 0.1], [0.55, 0.45], [np.nan, np.nan]])
    assert labels_of(probs, [None, None, "bad"], ("spiral", "elliptical"), 0.6) == ["spiral", "uncertain", ""]
    assert labels_of(probs[:2], ["", ""], ("spiral", "elliptical")) == ["spiral", "spiral"]
