"""`galmorph plots-template`: make `dvc plots show` and `dvc plots diff` draw without internet."""

from __future__ import annotations

import argparse

from galmorph.config import Params
from galmorph.dvc_plots import install_offline_template
from galmorph.paths import repo_root


def main(params: Params, args: argparse.Namespace) -> None:
    installed = install_offline_template(repo_root(), force=bool(getattr(args, "force", False)))
    size_mb = installed.path.stat().st_size / 2**20
    print(f"wrote {installed.path} ({size_mb:.1f} MB: {installed.versions})")
    if installed.configured:
        print("dvc plots show / dvc plots diff now draw offline (plots.html_template in .dvc/config.local)")
    else:
        print(
            f"note: DVC's plots.html_template is {installed.other!r} (yours): left as it is; "
            "`galmorph plots-template --force` points it at the offline template"
        )
