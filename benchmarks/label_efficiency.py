"""Label efficiency: which way of choosing patches buys the most glacier IoU per expert label.

    python benchmarks/label_efficiency.py [--quick] [--seeds 0,1,2,3,4] [--strategies combined,entropy]

The whole loop with an oracle (``al_loop.simulate``), on synthetic scenes with the HKH archive's
balance (glacier about 4 % of pixels, debris about a tenth of that, clouds over some glaciers,
SLC-off stripes): per seed a pool scene of 2048 x 2048 px (256 patches of 128 px, a tenth of
them labelled for validation and never counted) and a test scene of 1024 x 1024 px at a disjoint
place (never seen, never tuned on). Every strategy starts from the same random seed set of 8
patches and the same first model, then chooses 5 rounds of 8; random is always included, and
every seed gives every strategy the same ground. A model trained on the whole pool is the
reference.

Prints, per strategy: the normalised area under the learning curve (glacier IoU, and debris IoU)
with its spread over seeds, the paired difference from random (mean and sd over seeds), the labels
a strategy needs to reach random's final glacier IoU, debris IoU at the end, and minutes per seed.
The last line is ``best strategy: NAME, glacier AULC gain over random: X ± SD (paired, N seeds)``.
``--quick`` runs tiny scenes and models to check that everything runs; it is not for conclusions.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from al_loop.simulate import SimulationConfig, run_simulation
from al_loop.synthetic import HKH_COVER

console = Console(width=200)


def config(quick: bool) -> SimulationConfig:
    if quick:
        return SimulationConfig(strategies=["random", "combined"], seeds=[0, 1], scene_size=512, patch_size=64,
                                seed_set=4, rounds=2, round_size=4, depth=2, base_filters=4, epochs=2, mc_samples=2,
                                cover=HKH_COVER, validation_fraction=0.1)
    return SimulationConfig(strategies=["random", "combined", "combined+warmup24"], seeds=[0, 1, 2, 3, 4],
                            scene_size=2048, patch_size=128, seed_set=8, rounds=5, round_size=8, depth=3,
                            base_filters=16, epochs=15, mc_samples=8, cover=HKH_COVER, validation_fraction=0.1)


def _fmt(value: float, sign: bool = False) -> str:
    if value != value:
        return "n/a"
    return f"{value:+.3f}" if sign else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny scenes and models: checks that it runs")
    parser.add_argument("--seeds", help="comma-separated seeds (default: 0-4; quick: 0,1)")
    parser.add_argument("--strategies", help="comma-separated strategies besides random")
    parser.add_argument("--out", type=Path, help="folder for the CSVs and the PNG (default: a temp folder)")
    parser.add_argument("--method", default="", help="batch diversity: kcenter (default with a model), power or greedy")
    parser.add_argument(
        "--jobs",
        type=int,
        default=3,
        help="seeds run side by side, one thread each (default 3: five seeds in two waves on two cores)",
    )
    args = parser.parse_args()
    cfg = config(args.quick)
    if args.seeds:
        cfg.seeds = [int(s) for s in args.seeds.split(",")]
    cfg.method, cfg.jobs = args.method, args.jobs
    if args.strategies:
        cfg.strategies = list(dict.fromkeys(["random", *(s.strip() for s in args.strategies.split(","))]))
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = run_simulation(args.out or Path(tmp) / "simulation", cfg, quiet=False)
        minutes = (time.perf_counter() - began) / 60
        table = Table(title=f"label efficiency: {len(cfg.seeds)} seeds, pool {cfg.scene_size} px in "
                            f"{cfg.patch_size}-px "
                            f"patches, seed set {cfg.seed_set}, {cfg.rounds} rounds of {cfg.round_size}; full-pool "
                            f"glacier IoU {result['full_pool_glacier']:.3f}, debris "
                            f"{_fmt(result['full_pool_debris'])}; {minutes:.1f} min in all")
        for column in ("strategy", "AULC glacier", "gain vs random", "AULC debris", "debris gain", "labels "
                                                                                                   "to random's final",
                       "final glacier", "final debris", "min / seed"):
            table.add_column(column, justify="left" if column == "strategy" else "right")
        for row in result["rows"]:
            reach = [r for r in row["labels_to_random_final"]]
            reached = [r for r in reach if r is not None]
            reach_text = (
                "-" if not reached else f"{sum(reached) / len(reached):.0f} ({len(reached)}/{len(reach)} seeds)"
            )
            random_row = row["strategy"] == "random"
            table.add_row(
                row["strategy"], f"{row['aulc_mean']:.3f} ± {row['aulc_std']:.3f}",
                "-" if random_row else f"{_fmt(row['gain_over_random_mean'], True)} ± "
                                       f"{_fmt(row['gain_over_random_sd'])}",
                _fmt(row["aulc_debris_mean"]),
                "-" if random_row else f"{_fmt(row['debris_gain_over_random_mean'], True)} ± "
                                       f"{_fmt(row['debris_gain_over_random_sd'])}",
                reach_text, _fmt(row["final_glacier_iou"]), _fmt(row["final_debris_iou"]), f"{row['minutes']:.1f}")
        console.print(table)
        if args.out:
            console.print(f"curves: {result['csv']}, {result['png']}")
    others = [r for r in result["rows"] if r["strategy"] != "random"]
    best = max(others, key=lambda r: r["gain_over_random_mean"]) if others else result["rows"][0]
    print(f"best strategy: {best['strategy']}, glacier AULC gain over random: {best['gain_over_random_mean']:.3f} "
          f"± {best['gain_over_random_sd']:.3f} (paired, {len(cfg.seeds)} seeds)")


if __name__ == "__main__":
    main()
