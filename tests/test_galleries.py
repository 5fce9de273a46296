"""Galleries: which galaxies are picked, captions, and PNG grids with the right number of tiles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.text import Text
from PIL import Image

from galmorph.config import PreprocessConfig
from galmorph.evaluation.galleries import (
    DISPLAY_SIZE,
    GallerySpec,
    caption,
    display_image,
    gallery_figure,
    render_gallery,
    select_galleries,
)
from galmorph.evaluation.plots import plt

PRE = PreprocessConfig(resize=64, crop=48, image_size=32)


def test_select_galleries_picks_the_most_confident_and_the_least_certain():
    probs = np.array([[0.99, 0.01], [0.8, 0.2], [0.3, 0.7], [0.05, 0.95], [0.55, 0.45], [0.9, 0.1]])
    labels = np.array([0, 0, 0, 1, 1, 1])
    specs = {s.name: s for s in select_galleries(probs, labels, size=2)}
    assert list(specs) == ["correct_spiral", "wrong_spiral", "correct_elliptical", "wrong_elliptical", "uncertain"]
    assert specs["correct_spiral"].indices.tolist() == [0, 1]
    assert specs["wrong_spiral"].indices.tolist() == [2]  # the only spiral called elliptical
    assert specs["correct_elliptical"].indices.tolist() == [3]
    assert specs["wrong_elliptical"].indices.tolist() == [5, 4]  # most confident mistake first
    assert specs["uncertain"].indices.tolist() == [4, 2]
    assert "spirals called elliptical" in specs["wrong_spiral"].title


def test_caption_names_id_class_votes_and_probability():
    row = pd.Series({"galaxy_id": "587722981741363294", "label_id": 0, "label": "spiral", "p_spiral": 0.83})
    text = caption(row, np.array([0.1, 0.9]))
    assert text.splitlines() == ["587722981741363294", "spiral · votes 0.83", "model P(elliptical) 0.90"]
    uncertain = pd.Series(
        {"galaxy_id": "x", "label_id": -1, "label": "uncertain", "p_spiral": 0.55, "p_elliptical": 0.4}
    )
    assert "sp 0.55 el 0.40" in caption(uncertain, np.array([0.7, 0.3]))
    no_votes = pd.Series({"galaxy_id": "a" * 40, "label_id": 1, "label": "elliptical", "p_elliptical": np.nan})
    lines = caption(no_votes, np.array([0.2, 0.8])).splitlines()
    assert lines[0].startswith("…") and len(lines[0]) == 22
    assert "votes n/a" in lines[1]


def test_display_image_uses_the_eval_framing_for_any_mode_and_size(tmp_path):
    big = Image.new("RGBA", (1600, 1200), (10, 20, 30, 128))
    big.paste((255, 0, 0, 255), (700, 500, 900, 700))  # a red square in the centre
    big.save(tmp_path / "big.png")
    Image.new("L", (50, 50), 200).save(tmp_path / "grey.jpg")
    img = display_image(tmp_path / "big.png", PRE)
    assert img.mode == "RGB" and img.size == (DISPLAY_SIZE, DISPLAY_SIZE)
    assert img.getpixel((DISPLAY_SIZE // 2, DISPLAY_SIZE // 2))[0] > 200  # the centre survives the crop
    assert display_image(tmp_path / "grey.jpg", PRE).size == (DISPLAY_SIZE, DISPLAY_SIZE)


@pytest.mark.parametrize("n", [1, 5, 8])
def test_gallery_figure_has_one_image_tile_per_galaxy(n):
    images = [Image.new("RGB", (16, 16), (i * 20, 0, 0)) for i in range(n)]
    fig = gallery_figure(images, [f"g{i}" for i in range(n)], "title", ncols=4)
    assert sum(1 for ax in fig.axes if ax.images) == n
    plt.close(fig)


def test_render_gallery_writes_a_png_and_marks_unreadable_images(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(5):
        path = tmp_path / f"g{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
        rows.append({"galaxy_id": f"g{i}", "image_path": str(path), "label": "spiral", "label_id": 0, "p_spiral": 0.9})
    rows[3]["image_path"] = str(tmp_path / "vanished.jpg")
    cat = pd.DataFrame(rows)
    probs = np.tile([0.7, 0.3], (5, 1))
    out = tmp_path / "gallery.png"
    assert render_gallery(cat, probs, GallerySpec("x", "five", np.arange(5)), out, PRE) == 5
    assert Image.open(out).size[0] > 400
    empty = tmp_path / "none.png"
    assert render_gallery(cat, probs, GallerySpec("y", "none", np.array([], dtype=int)), empty, PRE) == 0
    assert not empty.exists()
    overlays = [np.ones((32, 32)) * 0.5] * 2
    with_heat = tmp_path / "heat.png"
    spec = GallerySpec("z", "heat", np.array([0, 1]))
    assert render_gallery(cat, probs, spec, with_heat, PRE, overlays=overlays) == 2


@pytest.mark.parametrize("gid", ["g$x$^", "$$", "a$\\frac{1}{0$", "$_{$"])
def test_dollar_signs_in_ids_and_file_names_are_shown_as_text(tmp_path, gid):
    """A `$` pair in an id or a file name is not matplotlib math text: the gallery renders, the caption
    reads as written."""
    folder = tmp_path / "sub$dir$"
    folder.mkdir()
    path = folder / f"{gid.replace('/', '_')}$.png"
    Image.new("RGB", (40, 40), (90, 90, 90)).save(path)
    cat = pd.DataFrame(
        [
            {"galaxy_id": gid, "image_path": str(path), "label": "spiral", "label_id": 0, "p_spiral": 0.9},
            {"galaxy_id": f"{gid}2", "image_path": str(folder / "gone$.png"), "label": "sp$ir$al", "label_id": -1},
        ]
    )
    out = tmp_path / "gallery.png"
    assert render_gallery(cat, np.tile([0.7, 0.3], (2, 1)), GallerySpec("d", "ti$tle$^", np.arange(2)), out, PRE) == 2
    assert Image.open(out).size[0] > 100
    fig = gallery_figure([None], [caption(cat.iloc[0], np.array([0.7, 0.3]))], f"{gid} title")
    fig.canvas.draw()
    texts = [t.get_text() for t in fig.findobj(Text)]
    assert caption(cat.iloc[0], np.array([0.7, 0.3])) in texts
    plt.close(fig)
