"""`galmorph plots-template`: `dvc plots show` pages carry Vega inline and draw without a network (the
browser test renders one offline in Debian's chromium, next to DVC's own page, which stays blank)."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from galmorph import cli
from galmorph.dvc_plots import MARKER, TEMPLATE_NAME, offline_template
from tests.conftest import REPO

DVC = str(Path(sys.executable).with_name("dvc"))
PLOTS_YAML = """\
plots:
  - Loss per epoch:
      x: epoch
      y:
        curves.csv: [train_loss, val_loss]
  - Confusion matrix:
      template: confusion
      x: predicted
      y:
        confusion.csv: actual
"""
N_PLOTS = 2
WORKSPACE_COLOUR = (0x94, 0x5D, 0xD6)
"""The colour DVC's templates give the workspace's line (dvc_render.vega)."""


def dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    out = subprocess.run([DVC, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A DVC project (no git) with two plots, a linear and a confusion one, and the repo's params.yaml."""
    root = tmp_path / "project"
    root.mkdir()
    dvc("init", "--no-scm", "-q", cwd=root)
    (root / "dvc.yaml").write_text(PLOTS_YAML)
    (root / "curves.csv").write_text("epoch,train_loss,val_loss\n1,0.9,0.95\n2,0.5,0.6\n3,0.3,0.45\n")
    rows = [("spiral", "spiral")] * 5 + [("spiral", "elliptical"), ("elliptical", "elliptical")]
    (root / "confusion.csv").write_text("actual,predicted\n" + "".join(f"{a},{p}\n" for a, p in rows))
    shutil.copyfile(REPO / "params.yaml", root / "params.yaml")
    monkeypatch.chdir(root)
    return root


def plots_page(root: Path, out: str) -> str:
    dvc("plots", "show", "-o", out, cwd=root)
    return (root / out / "index.html").read_text(encoding="utf8")


def script_sources(page: str) -> list[str]:
    return re.findall(r"<script[^>]*\bsrc\s*=\s*[\"']?([^\"' >]+)", page, flags=re.IGNORECASE)


def test_the_template_escapes_what_would_end_its_script_and_keeps_dvc_placeholders():
    page = offline_template("var a = '</SCRIPT>'; var b = /<!--/; window.vegaEmbed = 1;", "Vega 0")
    assert page.startswith(MARKER + "\n")
    assert page.lower().count("</script") == 1  # the template's own closing tag only
    assert "'<\\/SCRIPT>'" in page and "/\\x3C!--/" in page and "window.vegaEmbed = 1" in page
    assert "{plot_divs}" in page and "{refresh_tag}" in page
    assert "{scripts}" not in page  # where DVC puts its CDN <script src> tags
    with pytest.raises(ValueError, match="placeholder"):
        offline_template("var s = '{plot_divs}';")


def test_dvc_plots_show_inlines_vega_after_plots_template(project, capsys):
    online = plots_page(project, "cdn")
    assert any(src.startswith("https://") for src in script_sources(online))  # DVC's own page: a CDN

    assert cli.main(["plots-template"]) == 0
    assert "draw offline" in capsys.readouterr().out
    assert "html_template = plots-offline.html" in (project / ".dvc" / "config.local").read_text()
    page = plots_page(project, "offline")
    assert script_sources(page) == []
    assert "window.vegaEmbed=" in page and "Vega-Lite 5." in page  # the bundle, and DVC's specs are v5
    assert page.count("vegaEmbed('#") == N_PLOTS  # DVC's plot divs went into the template

    # a rerun rewrites its own file; someone else's file there is theirs until --force
    assert cli.main(["plots-template"]) == 0
    template = project / ".dvc" / TEMPLATE_NAME
    template.write_text("<html>{plot_divs}</html>")
    capsys.readouterr()
    assert cli.main(["plots-template"]) == 1
    err = capsys.readouterr().err
    assert "not written by galmorph plots-template" in err and len(err.strip().splitlines()) == 1
    assert template.read_text() == "<html>{plot_divs}</html>"
    assert cli.main(["plots-template", "--force"]) == 0
    assert template.read_text().startswith(MARKER)


def test_a_template_configured_by_someone_else_is_kept_until_force(project, capsys):
    dvc("config", "plots.html_template", "mine.html", cwd=project)  # the committed .dvc/config
    assert cli.main(["plots-template"]) == 0
    assert "'mine.html' (yours): left as it is" in capsys.readouterr().out
    assert not (project / ".dvc" / "config.local").exists()
    assert (project / ".dvc" / TEMPLATE_NAME).is_file()
    assert cli.main(["plots-template", "--force"]) == 0
    assert "html_template = plots-offline.html" in (project / ".dvc" / "config.local").read_text()


def test_outside_a_dvc_repository_is_one_line(tmp_path, monkeypatch, capsys):
    shutil.copyfile(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["plots-template"]) == 1
    assert "not a DVC repository" in capsys.readouterr().err


def render_offline(browser, page_file: Path, *, wait: bool = True) -> tuple[list[Image.Image], list[str]]:
    """Screenshots of the plots drawn (vega-embed's divs holding an svg or a canvas) and the page errors, of a
    page opened offline with every request for anything but a local file refused; `wait`: up to 20 s for
    every plot to be drawn."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    context = browser.new_context(offline=True)
    refused: list[str] = []

    def only_local(route):
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(page_file.as_uri(), wait_until="load")
    drawn = ".vega-embed:has(svg, canvas)"
    if wait:  # on a timeout the screenshots and errors returned say what was drawn
        with contextlib.suppress(PlaywrightTimeout):
            page.wait_for_function(f"document.querySelectorAll('{drawn}').length >= {N_PLOTS}", timeout=20_000)
    shots = [Image.open(io.BytesIO(plot.screenshot())).convert("RGB") for plot in page.locator(drawn).all()]
    context.close()
    return shots, errors + [f"refused {url}" for url in refused]


def pixels_near(image: Image.Image, rgb: tuple[int, int, int], tol: int = 40) -> int:
    diff = np.abs(np.asarray(image, dtype=np.int16) - np.array(rgb, dtype=np.int16)).max(axis=2)
    return int((diff <= tol).sum())


@pytest.mark.browser
def test_the_page_draws_offline_in_chromium(project, browser):
    cdn_page = project / "cdn" / "index.html"
    plots_page(project, "cdn")
    shots, errors = render_offline(browser, cdn_page, wait=False)
    assert shots == [] and any("vegaEmbed" in e for e in errors), errors  # DVC's own page: blank offline

    assert cli.main(["plots-template"]) == 0
    plots_page(project, "offline")
    shots, errors = render_offline(browser, project / "offline" / "index.html")
    assert errors == [] and len(shots) == N_PLOTS
    loss, confusion = shots
    assert pixels_near(loss, WORKSPACE_COLOUR) > 300  # the loss curve itself, in DVC's colour for the workspace
    assert pixels_near(confusion, (255, 255, 255)) < 0.9 * confusion.width * confusion.height  # filled cells
