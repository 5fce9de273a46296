"""An offline page for `dvc plots show` and `dvc plots diff`.

DVC's own page loads Vega, Vega-Lite and Vega-Embed from a CDN, so on a machine without internet it is
blank. This writes an HTML template with the three libraries inline (the bundle that the vl-convert-python
wheel ships, no download) and points DVC's `plots.html_template` at it in `.dvc/config.local`: the setting
lives beside the file it names, both git-ignored, because DVC fails with "HTML template has to contain
'{plot_divs}'" when a configured template file is missing (a fresh clone). `make venv` runs it.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from galmorph.errors import UserError
from galmorph.io import write_text

TEMPLATE_NAME = "plots-offline.html"
"""The template's file in .dvc/; DVC resolves a relative plots.html_template against .dvc/."""
MARKER = "<!-- galmorph plots-template: Vega, Vega-Lite and Vega-Embed inline, so dvc plots draw offline -->"
"""The template's first line: a file there that lacks it is not ours, and is replaced only with --force."""
PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")
"""What DVC substitutes in a template (dvc_render.html.HTML.embed). `{scripts}` is left out of ours: it
would bring back DVC's CDN <script src> tags."""

_PAGE = """{marker}
<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>DVC Plot</title>
    <!-- {versions} -->
    <script type="text/javascript">
(function () {{
{bundle}
}}).call(window);
    </script>
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def javascript_bundle() -> tuple[str, str]:
    """Vega-Embed, Vega-Lite and Vega as one classic script defining window.vegaEmbed (what DVC's plot divs
    call), and a line naming their versions. Vega-Lite is the newest 5.x vl-convert has: DVC's plot
    templates are Vega-Lite v5 specs."""
    import vl_convert

    fives = [v for v in vl_convert.get_vegalite_versions() if v.startswith("5.")]
    vl_version = max(fives, key=lambda v: tuple(int(p) for p in v.split("."))) if fives else None
    bundle = vl_convert.javascript_bundle(vl_version=vl_version)
    versions = (
        f"Vega {vl_convert.get_vega_version()}, Vega-Lite {vl_version or 'latest'}, "
        f"Vega-Embed {vl_convert.get_vega_embed_version()} (vl-convert-python {vl_convert.__version__})"
    )
    return bundle, versions


def offline_template(bundle: str, versions: str = "") -> str:
    """The HTML template with `bundle` inline, run in a function of its own: its top-level names (`const n`,
    `function t`, ...) would otherwise be globals that a plot div's `var spec` could collide with.

    Inside <script> the HTML parser ends the element at the first `</script` and changes state at `<!--`,
    whatever the JavaScript around them means: both are written the way JavaScript reads the same in strings,
    templates and regular expressions. A DVC placeholder inside the bundle would be substituted there, so
    it is refused.
    """
    for placeholder in PLACEHOLDERS:
        if placeholder in bundle:
            raise ValueError(f"the JavaScript bundle contains DVC's placeholder {placeholder}: cannot inline it")
    safe = re.sub(r"</(script)", r"<\\/\1", bundle, flags=re.IGNORECASE).replace("<!--", "\\x3C!--")
    return _PAGE.format(marker=MARKER, versions=versions.replace("--", "-"), bundle=safe)


@dataclasses.dataclass(frozen=True)
class Installed:
    """What install_offline_template did: the file it wrote, and whether DVC now uses it (`other`: the
    template DVC uses instead, someone's own, left as it was)."""

    path: Path
    versions: str
    configured: bool
    other: str | None


def install_offline_template(root: str | Path, *, force: bool = False) -> Installed:
    """Write .dvc/plots-offline.html in the DVC repository at `root` and set plots.html_template to it in
    .dvc/config.local.

    Rerunning rewrites our own file (a newer vl-convert). Without `force`, a file of someone else's at that
    path is refused and a plots.html_template that names another template is kept (reported in `other`).
    """
    from dvc.config import Config, ConfigError

    dvc_dir = Path(root) / ".dvc"
    if not dvc_dir.is_dir():
        raise UserError(f"{Path(root).resolve()}: not a DVC repository (no .dvc/ folder); run from the project root")
    path = dvc_dir / TEMPLATE_NAME
    if path.exists() and not force:
        first = path.read_text(encoding="utf8", errors="replace").split("\n", 1)[0]
        if first != MARKER:
            raise UserError(f"{path}: exists and was not written by galmorph plots-template (--force replaces it)")
    bundle, versions = javascript_bundle()
    write_text(path, offline_template(bundle, versions))
    try:
        config = Config(dvc_dir=str(dvc_dir))
        current = config.get("plots", {}).get("html_template")
        if current not in (None, TEMPLATE_NAME, str(path.resolve())) and not force:
            return Installed(path, versions, configured=False, other=current)
        with config.edit("local") as local:
            local.setdefault("plots", {})["html_template"] = TEMPLATE_NAME
    except ConfigError as exc:
        raise UserError(f"{dvc_dir}: DVC's configuration is not valid ({exc})") from None
    return Installed(path, versions, configured=True, other=None)
