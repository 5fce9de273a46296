"""What `galmorph crossmatch` costs at Galaxy Zoo scale, against baselines measured in the same run.

1. Reading sexagesimal positions (GZ1 table 2 writes RA as hh:mm:ss.ss, Dec as ±dd:mm:ss.s): data.tables'
   vectorised parser against astropy's own (`SkyCoord(ra, dec, unit=(hourangle, deg))` on the strings).
2. The whole match: crossmatch_tables (nearest neighbour with match_to_catalog_sky, plus the count of
   reference objects within the radius from search_around_sky, which finds the ambiguous rows, and the
   attached columns) against parsing both tables and match_to_catalog_sky alone: the price of the report.

    .venv/bin/python benchmarks/bench_crossmatch.py                      # 667,944 reference rows (GZ1 table 2)
    .venv/bin/python benchmarks/bench_crossmatch.py --reference 100000 --positions 20000

Positions are random on the sphere; the user's are reference positions scattered by 0.3" per axis.
"""

from __future__ import annotations

import argparse
import statistics
import time

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table

from galmorph.data.crossmatch import crossmatch_tables
from galmorph.data.tables import sky_coords


def sexagesimal(values: np.ndarray, hours: bool) -> np.ndarray:
    """hh:mm:ss.ss (RA) or ±dd:mm:ss.s (Dec) strings, as GZ1 table 2 writes them."""
    v = values / 15.0 if hours else values
    sign = np.where(v < 0, "-", "" if hours else "+")
    a = np.abs(v)
    d = np.floor(a).astype(int)
    m = np.floor((a - d) * 60).astype(int)
    s = (a - d - m / 60) * 3600
    fmt = "{}{:02d}:{:02d}:{:05.2f}" if hours else "{}{:02d}:{:02d}:{:04.1f}"
    top = 59.994 if hours else 59.94  # never rounds up to 60 in the last digit
    return np.array([fmt.format(*x) for x in zip(sign, d, m, np.minimum(s, top), strict=True)])


def best_of(repeats: int, fn) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def row(what: str, seconds: float, ratio: str = "") -> None:
    print(f"{what:<64} {seconds:8.2f} {ratio:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=int, default=667_944, help="reference rows (default: GZ1 table 2's)")
    parser.add_argument("--positions", type=int, default=100_000, help="the user's positions")
    parser.add_argument("--radius", type=float, default=2.0, help="arcsec")
    parser.add_argument("--parse-rows", type=int, default=50_000, help="rows both parsers read (astropy: ~0.1 ms each)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    ra = rng.uniform(0, 360, args.reference)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, args.reference)))
    reference = Table({"RA": sexagesimal(ra, True), "DEC": sexagesimal(dec, False)})
    reference["P_CS_DEBIASED"] = rng.uniform(0, 1, args.reference)
    pick = rng.choice(args.reference, args.positions, replace=False)
    scatter = rng.normal(0, 0.3 / 3600, (2, args.positions))
    mine = Table({"ra": (ra[pick] + scatter[0] / np.cos(np.radians(dec[pick]))) % 360, "dec": dec[pick] + scatter[1]})
    mine["dec"] = np.clip(mine["dec"], -90, 90)

    head = reference[: args.parse_rows]
    astropy_parse, _ = best_of(args.repeats, lambda: SkyCoord(head["RA"], head["DEC"], unit=(u.hourangle, u.deg)))
    ours_parse, _ = best_of(args.repeats, lambda: sky_coords(head, "RA", "DEC", "reference"))
    ours_all, _ = best_of(args.repeats, lambda: sky_coords(reference, "RA", "DEC", "reference"))
    match_only, _ = best_of(
        args.repeats,
        lambda: sky_coords(mine, "ra", "dec", "mine").match_to_catalog_sky(
            sky_coords(reference, "RA", "DEC", "reference")
        ),
    )
    full, (_, report) = best_of(
        args.repeats,
        lambda: crossmatch_tables(
            mine,
            reference,
            radius_arcsec=args.radius,
            mine_path="mine",
            reference_path="reference",
            ref_ra_column="RA",
            ref_dec_column="DEC",
        ),
    )

    print(f"{args.positions:,} positions against {args.reference:,} reference rows, radius {args.radius:g} arcsec")
    print(f"{'measurement (median of ' + str(args.repeats) + ')':<64} {'seconds':>8} {'ratio':>8}")
    print(f"parse {len(head):,} sexagesimal RA/Dec pairs")
    row("  astropy SkyCoord(ra, dec, unit=(hourangle, deg)) on the strings", astropy_parse, "1.0")
    row("  data.tables.sky_coords (vectorised)", ours_parse, f"{astropy_parse / ours_parse:.1f}x")
    row(f"data.tables.sky_coords on all {len(reference):,} reference rows", ours_all)
    row("both parses + match_to_catalog_sky (the nearest only)", match_only, "1.0")
    row("crossmatch_tables (+ count within the radius, columns)", full, f"{full / match_only:.2f}x")
    sep = report["separation_arcsec"]["median"]
    print(
        f"matched {report['matched']:,}, ambiguous {report['ambiguous']:,}, unmatched {report['unmatched']:,}, "
        f"median separation {sep:.3f} arcsec"
    )


if __name__ == "__main__":
    main()
