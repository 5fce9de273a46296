"""The embedding cache of frozen mode: views, the embed stage writing and reusing it, fit reading it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import yaml

from galmorph import cli
from galmorph.config import replace
from galmorph.data.transforms import VIEWS, apply_view, check_views
from galmorph.errors import UserError
from galmorph.training import features as feats
from galmorph.training.features import ensure_feature_cache, load_feature_cache
from galmorph.training.loop import fit
from tests.training_utils import make_catalogue, one_thread, tiny_params

_one_thread = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    return make_catalogue(tmp_path_factory.mktemp("tiny"), n=40)


def test_views_are_the_eight_symmetries_of_the_square():
    x = torch.arange(9.0).reshape(1, 3, 3)
    images = {name: apply_view(x, name) for name in VIEWS}
    assert len({tuple(v.flatten().tolist()) for v in images.values()}) == 8  # all distinct
    assert torch.equal(apply_view(apply_view(x, "rot90"), "rot270"), x)
    assert torch.equal(apply_view(x, "transpose"), x.transpose(1, 2))
    assert torch.equal(images["antitranspose"][0], torch.tensor([[8.0, 5, 2], [7, 4, 1], [6, 3, 0]]))
    with pytest.raises(UserError, match="embed.views"):
        check_views(["identity", "rot45"])
    with pytest.raises(UserError, match="repeat"):
        check_views(["identity", "identity"])


def _params_file(p, tmp_path, catalogue):
    catalogue.to_parquet(tmp_path / "splits.parquet")
    p = dataclasses.replace(p, split=replace(p.split, out=str(tmp_path / "splits.parquet")))
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(dataclasses.asdict(p), sort_keys=False))
    return p, str(path)


def test_embed_stage_writes_then_reuses_the_cache(catalogue, params, tmp_path, monkeypatch):
    p, path = _params_file(tiny_params(params, tmp_path, mode="frozen"), tmp_path, catalogue)
    assert cli.main(["--params", path, "embed"]) == 0
    out = tmp_path / "features"
    assert {f.name for f in out.iterdir()} == {"features.npy", "backbone.pt", "ids.parquet", "meta.json"}
    cache = load_feature_cache(out, model_cfg=p.model, preprocess=p.preprocess)
    assert cache.features.shape == (40, len(p.embed.views), 512) and cache.features.dtype == np.float16
    assert list(cache.galaxy_ids) == list(catalogue["galaxy_id"])
    # every view is really a different input: features differ between views of the same galaxy
    assert not np.allclose(cache.features[:, 0], cache.features[:, 1])

    def no_recompute(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(feats, "build_feature_cache", no_recompute)
    assert cli.main(["--params", path, "embed"]) == 0
    # other params make the old cache stale
    changed = dataclasses.replace(p, embed=replace(p.embed, views=["identity", "rot180"]))
    with pytest.raises(AssertionError, match="reused"):
        ensure_feature_cache(catalogue, changed.model, changed.preprocess, changed.embed)


def test_embed_is_skipped_in_finetune_mode(catalogue, params, tmp_path):
    _p, path = _params_file(tiny_params(params, tmp_path, mode="finetune"), tmp_path, catalogue)
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "features.npy").write_bytes(b"stale")
    assert cli.main(["--params", path, "embed"]) == 0
    assert [f.name for f in (tmp_path / "features").iterdir()] == ["meta.json"]
    assert "finetune" in json.loads((tmp_path / "features" / "meta.json").read_text())["reason"]
    with pytest.raises(UserError, match="no embedding cache"):
        load_feature_cache(tmp_path / "features")


def test_cache_for_another_backbone_is_refused(catalogue, params, tmp_path):
    p = tiny_params(params, tmp_path, mode="frozen")
    ensure_feature_cache(catalogue, p.model, p.preprocess, p.embed, progress=False)
    with pytest.raises(UserError, match="resnet34"):
        load_feature_cache(p.embed.out, model_cfg=replace(p.model, arch="resnet34"))
    with pytest.raises(UserError, match="preprocess"):
        load_feature_cache(p.embed.out, preprocess=replace(p.preprocess, image_size=48))
    cache = load_feature_cache(p.embed.out)
    with pytest.raises(UserError, match="not in the cache"):
        cache.rows(["g0001", "nope"])


def test_fit_on_the_cache_equals_fit_embedding_in_memory(catalogue, params, tmp_path):
    p = tiny_params(params, tmp_path, mode="frozen", epochs=2)
    cache, reused = ensure_feature_cache(
        catalogue, p.model, p.preprocess, p.embed, precision=p.train.precision, progress=False
    )
    assert not reused
    from_cache = fit(catalogue, p, features=cache, progress=False)
    in_memory = fit(catalogue, p, progress=False)
    for k, v in in_memory.model.state_dict().items():
        assert torch.equal(from_cache.model.state_dict()[k], v), k
    # the final model carries the cache's backbone, not a fresh one
    for k, v in cache.backbone_state.items():
        assert torch.equal(from_cache.model.backbone.state_dict()[k], v), k
