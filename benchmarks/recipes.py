"""Every measured real-data recipe in one table and one figure: test accuracy (95% interval) and ood-dev accuracy
against training minutes, from benchmarks/recipes.csv (one row per run, appended from a run's folder).

    # append a run made by benchmarks/real_runs.sh (its minutes.txt, metrics.json and eval metrics.json)
    .venv/bin/python benchmarks/recipes.py add /tmp/galmorph-runs/runs/fast-seed0 --name fast --load quiet
    # the README table and docs/accuracy_minutes.png
    .venv/bin/python benchmarks/recipes.py show
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CSV = REPO / "benchmarks" / "recipes.csv"
FIGURE = REPO / "docs" / "accuracy_minutes.png"
COLUMNS = [
    "name", "recipe", "epochs", "seed", "train_min", "load", "test_acc", "test_lo", "test_hi", "test_f1",
    "confident_acc", "ood_acc", "ood_lo", "ood_hi", "date",
]  # fmt: skip


class RunFolderError(Exception):
    """A run folder that real_runs.sh did not finish writing (the message names the file and what is missing)."""


def shorten(recipe: str) -> str:
    """Tuned values to 3 significant digits (lr=0.0007447144904083078 -> 0.000745), as the README shows them."""
    return re.sub(r"\d+\.\d{5,}(?:e-?\d+)?", lambda m: f"{float(m.group()):.3g}", recipe)


def last_wins(recipe: str) -> str:
    """Each -S key once, with its last value (the one galmorph applies) at its first place: a tuned recipe is
    make real's flags with the best trial's appended, and the table should not show dropout twice.

    >>> last_wins("-S a.x=1 -S b.y=2 -S a.x=3 -S c.z=4")
    '-S a.x=3 -S b.y=2 -S c.z=4'

    Anything else (a quoted value with spaces, another option) is kept as written rather than dropped:

    >>> last_wins("-S a.x=1 -S 'b.y={k: 1}' -S a.x=3")
    "-S a.x=1 -S 'b.y={k: 1}' -S a.x=3"
    """
    if not re.fullmatch(r"(?:\s*-S [^\s'\"=]+=[^\s'\"]+)*\s*", recipe):
        return recipe
    flags: dict[str, str] = {}
    for key, value in re.findall(r"-S (\S+?)=(\S+)", recipe):
        flags[key] = value
    return " ".join(f"-S {k}={v}" for k, v in flags.items()) if flags else recipe


def add(run: Path, name: str, load: str) -> dict:
    """One row from a real_runs.sh run folder: minutes.txt (recipe, train_s), metrics.json (evaluate's)."""
    for f in ("minutes.txt", "metrics.json"):
        if not (run / f).is_file():
            raise RunFolderError(f"{run.name}/{f}: not found (is {run.name} a finished benchmarks/real_runs.sh run?)")
    text = (run / "minutes.txt").read_text()
    found = {k: re.search(rf"{k}[ =](\d+)", text) for k in ("epochs", "train_s")}
    if missing := [k for k, v in found.items() if v is None]:
        raise RunFolderError(f"{run.name}/minutes.txt: no {' or '.join(missing)} (expected real_runs.sh's line)")
    recipe = shorten(last_wins(text.split(";")[0].removeprefix("recipe:").strip()))
    epochs, train_s = int(found["epochs"].group(1)), int(found["train_s"].group(1))
    required = {"test_accuracy", "test_accuracy_ci_low", "test_accuracy_ci_high"}
    try:
        m = json.loads((run / "metrics.json").read_text())
    except json.JSONDecodeError:
        m = None
    if not isinstance(m, dict) or not required <= m.keys():
        raise RunFolderError(f"{run.name}/metrics.json: not evaluate's metrics (no test_accuracy with its interval)")
    seed = int(re.search(r"seed(\d+)$", run.name).group(1)) if re.search(r"seed(\d+)$", run.name) else 0
    row = {
        "name": name, "recipe": recipe or "(base)", "epochs": epochs, "seed": seed, "train_min": round(train_s / 60, 1),
        "load": load, "test_acc": m["test_accuracy"], "test_lo": m["test_accuracy_ci_low"],
        "test_hi": m["test_accuracy_ci_high"], "test_f1": m.get("test_macro_f1"),
        "confident_acc": m.get("test_confident_accuracy"), "ood_acc": m.get("ood_accuracy"),
        "ood_lo": m.get("ood_accuracy_ci_low"), "ood_hi": m.get("ood_accuracy_ci_high"),
        "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    table = pd.read_csv(CSV) if CSV.is_file() else pd.DataFrame(columns=COLUMNS)
    kept = table[table["name"] != name]
    new = pd.DataFrame([row], columns=COLUMNS)
    table = new if kept.empty else pd.concat([kept, new], ignore_index=True)  # concat with an empty frame is deprecated
    tmp = CSV.with_suffix(".csv.tmp")
    table.to_csv(tmp, index=False, float_format="%.4f")
    tmp.replace(CSV)
    return row


def table_lines(table: pd.DataFrame) -> list[str]:
    """The README's table between its `<!-- recipes -->` markers, one row per run, numbered as in the figure."""
    lines = [
        "| # | run | recipe (on the base of benchmarks/real_runs.sh) | epochs | train min (machine) "
        "| test acc [95% CI] | macro F1 | confident acc | ood-dev acc [95% CI] |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def fmt(v: float, digits: int = 3) -> str:
        return "—" if pd.isna(v) else f"{v:.{digits}f}"

    for key, r in enumerate(table.itertuples(), start=1):
        ood = "—" if pd.isna(r.ood_acc) else f"{r.ood_acc:.3f} [{fmt(r.ood_lo)}, {fmt(r.ood_hi)}]"
        lines.append(f"| {key} | {r.name} | `{r.recipe}` | {r.epochs} | {r.train_min:.1f} ({r.load}) | {r.test_acc:.3f} "
                     f"[{r.test_lo:.3f}, {r.test_hi:.3f}] | {fmt(r.test_f1)} | {fmt(r.confident_acc)} | {ood} |")  # fmt: skip
    return lines


def show() -> None:
    table = pd.read_csv(CSV)
    print("\n".join(table_lines(table)))
    table.insert(0, "key", range(1, len(table) + 1))  # the number that marks the run in the figure
    # Points are marked by their row number, with the names in a key below: names next to ~20 points that
    # share a few minutes and a point of accuracy overlap until they cannot be read.
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2 + 0.22 * ((len(table) + 2) // 3)), sharex=True)
    for ax, (col, lo, hi, title) in zip(
        axes,
        (("test_acc", "test_lo", "test_hi", "SDSS test split"), ("ood_acc", "ood_lo", "ood_hi", "ood-dev (DECaLS)")),
        strict=True,
    ):
        rows = table.dropna(subset=[col])
        placed: list[tuple[float, float]] = []  # points already labelled: a label on top of another moves down
        for r in rows.itertuples():
            quiet = r.load == "quiet"
            y, err = getattr(r, col), [[getattr(r, col) - getattr(r, lo)], [getattr(r, hi) - getattr(r, col)]]
            colour = f"C{(r.key - 1) % 10}"
            ax.errorbar(r.train_min, y, yerr=err, fmt="o" if quiet else "s", color=colour, mfc=None if quiet else "none",
                        capsize=3)  # fmt: skip
            near = sum(abs(r.train_min - px) < 1.5 and abs(y - py) < 0.004 for px, py in placed)
            placed.append((r.train_min, y))
            ax.annotate(str(r.key), (r.train_min, y), textcoords="offset points", xytext=(4, 2 - 8 * near),
                        fontsize=7, color=colour)  # fmt: skip
        ax.set_title(title)
        ax.set_xlabel("training minutes, 2 CPU cores (hollow: machine shared)")
        ax.set_ylabel("accuracy (95% interval)")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], linestyle="none", marker="o", color=f"C{(k - 1) % 10}") for k in table["key"]]
    labels = [f"{k}  {n}" for k, n in zip(table["key"], table["name"], strict=True)]
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.16 * ((len(table) + 2) // 3) / fig.get_figheight() + 0.02, 1, 1))
    FIGURE.parent.mkdir(exist_ok=True)
    fig.savefig(FIGURE, dpi=110, bbox_inches="tight")  # the key is wider than the plots: keep it whole
    print(f"\nwrote {FIGURE.relative_to(REPO)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("add")
    a.add_argument("run", type=Path)
    a.add_argument("--name", required=True)
    a.add_argument("--load", choices=["quiet", "shared"], required=True)
    sub.add_parser("show")
    args = ap.parse_args()
    if args.cmd == "add":
        try:
            print(add(args.run, args.name, args.load))
        except RunFolderError as err:
            ap.exit(2, f"recipes.py: error: {err}\n")
    else:
        show()


if __name__ == "__main__":
    main()
