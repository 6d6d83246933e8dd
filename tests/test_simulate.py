"""`al-loop simulate` on a tiny configuration, and its summary figures."""

import csv

import pytest

from al_loop.simulate import SimulationConfig, labels_to_reach, normalised_aulc, run_simulation


def test_a_tiny_simulation_writes_curves_for_every_strategy_and_seed(tmp_path):
    # seed 0: its first random seed set is all background, so the draw must be repeated
    cfg = SimulationConfig(strategies=["random", "bald"], seeds=[0], scene_size=512, patch_size=128,
                           seed_set=2, rounds=1, round_size=2, depth=2, base_filters=4, epochs=2, mc_samples=2)
    result = run_simulation(tmp_path / "sim", cfg, quiet=True)
    rows = list(csv.DictReader(open(result["csv"])))
    assert [(r["strategy"], int(r["labels"])) for r in rows] == [("random", 2), ("random", 4), ("bald", 2), ("bald", 4)]
    assert all(0.0 <= float(r["iou_debris"]) <= 1.0 and float(r["full_pool_iou_glacier"]) > 0 for r in rows)
    assert result["png"].stat().st_size > 10_000
    assert [row["strategy"] for row in result["rows"]] == ["random", "bald"]
    assert not any((tmp_path / "sim").glob("work-*"))  # the per-seed workspaces are cleaned up


def test_aulc_and_labels_to_target():
    assert normalised_aulc([0, 10], [0.2, 0.4]) == pytest.approx(0.3)
    assert normalised_aulc([0, 10, 30], [0.0, 0.5, 0.5]) == pytest.approx((2.5 + 10) / 30)
    assert labels_to_reach([4, 8, 12], [0.1, 0.5, 0.6], 0.45) == 8
    assert labels_to_reach([4, 8], [0.1, 0.2], 0.45) is None


def test_simulation_on_an_ingested_scene_uses_its_labels_and_holds_out_its_east(tmp_path):
    from typer.testing import CliRunner

    from cli import app

    ws = tmp_path / "ws"
    env = {"AL_LOOP_WORKSPACE": str(ws), "AL_LOOP_INGEST_PATCH_SIZE": "64", "AL_LOOP_INGEST_QUICKLOOKS": "false"}
    runner = CliRunner()
    assert runner.invoke(app, ["init"], env=env).exit_code == 0
    assert runner.invoke(app, ["ingest", "synthetic", "--size", "512", "--seed", "4", "-q"], env=env).exit_code == 0
    result = runner.invoke(app, ["simulate", "--scene", "1", "--seeds", "0", "--rounds", "1", "--strategies", "entropy",
                                 "--out", str(tmp_path / "sim"), "-q"], env={**env, "COLUMNS": "150"})
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(tmp_path / "sim" / "simulation.csv")))
    assert {r["strategy"] for r in rows} == {"random", "entropy"} and len(rows) == 4
    missing = runner.invoke(app, ["simulate", "--scene", "9", "--out", str(tmp_path / "x"), "-q"], env=env)
    assert missing.exit_code == 2 and "no raster scene with id 9" in missing.output


def test_the_summary_pairs_each_strategy_with_random_by_seed(tmp_path):
    import numpy as np

    cfg = SimulationConfig(strategies=["random", "entropy"], seeds=[0, 1], scene_size=512, patch_size=128,
                           seed_set=2, rounds=1, round_size=2, depth=2, base_filters=4, epochs=2, mc_samples=2)
    result = run_simulation(tmp_path / "sim", cfg, quiet=True)
    curves = {}
    for r in csv.DictReader(open(result["csv"])):
        curves.setdefault((r["strategy"], int(r["seed"])), []).append((int(r["labels"]), float(r["iou_glacier"])))
    aulc = {k: normalised_aulc([n for n, _ in v], [x for _, x in v]) for k, v in curves.items()}
    gains = [aulc[("entropy", s)] - aulc[("random", s)] for s in (0, 1)]
    entropy = next(row for row in result["rows"] if row["strategy"] == "entropy")
    assert entropy["gain_over_random_mean"] == pytest.approx(np.mean(gains), abs=1e-4)
    assert entropy["gain_over_random_sd"] == pytest.approx(np.std(gains, ddof=1), abs=1e-4)


@pytest.mark.parametrize("args, message", [
    (["--holdout", "up"], "--holdout must be one of east, west, north, south, found 'up'"),
    (["--seed-set", "0"], "--seed-set must be at least 1, found 0"),
    (["--classes", "ternary"], "unknown class set 'ternary'"),
    (["--strategies", "badge"], "--strategies: unknown strategy 'badge'"),
    (["--strategies", "bald+wide"], "unknown option 'wide'"),
    (["--jobs", "0"], "--jobs must be at least 1, found 0"),
])
def test_bad_simulation_options_are_named(tmp_path, args, message):
    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(app, ["simulate", "--out", str(tmp_path / "s"), "-q", *args], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "s").exists()


def test_variants_label_regions_counted_in_patch_equivalents(tmp_path):
    cfg = SimulationConfig(strategies=["random", "bald+region", "bald+power+warmup4"], seeds=[0], scene_size=512,
                           patch_size=128, seed_set=2, rounds=1, round_size=2, depth=2, base_filters=4, epochs=2,
                           mc_samples=2)
    result = run_simulation(tmp_path / "sim", cfg, quiet=True)
    rows = list(csv.DictReader(open(result["csv"])))
    # region queries: 8 patches of a quarter each, the same pixels as random's 2 whole patches
    assert [(r["strategy"], float(r["labels"])) for r in rows] == [
        ("random", 2), ("random", 4), ("bald+region", 2), ("bald+region", 4),
        ("bald+power+warmup4", 2), ("bald+power+warmup4", 4)]
    with pytest.raises(ValueError, match="--strategies: strategy 'bald\\+wide': unknown option 'wide'"):
        run_simulation(tmp_path / "bad", SimulationConfig(strategies=["random", "bald+wide"]), quiet=True)


def test_the_label_efficiency_benchmark_runs_end_to_end_in_quick_mode():
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "benchmarks/label_efficiency.py", "--quick"], cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert any("random" in line and "combined" not in line for line in lines)
    assert re.fullmatch(
        r"best strategy: \S+, glacier AULC gain over random: -?\d\.\d{3} ± \d\.\d{3} \(paired, 2 seeds\)", lines[-1]
    ), lines[-1]
