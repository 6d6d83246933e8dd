"""The benchmarks of the expert's seat, the sensors, webhooks and training precision run end to end
and print their figures' last line (the figures themselves are in the README, measured by the full
runs)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from al_loop.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> list[str]:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()


def test_the_calibration_benchmark_runs_in_quick_mode():
    last = _run("benchmarks/calibration.py", "--quick")[-1]
    assert re.fullmatch(r"calibration: T \d+\.\d{3}, pool pixel ECE \d\.\d{4} -> \d\.\d{4}, "
                        r"patch \|score - accuracy\| \d\.\d{4} -> \d\.\d{4}", last), last


def test_the_prelabels_benchmark_scores_saved_predictions(tmp_path):
    """A noisy copy of a synthetic truth stands in for a model's masks: cleaning must cut its parts."""
    _, labels, _ = generate(256, 256, 1)
    rng = np.random.default_rng(0)
    noisy = np.where(rng.random(labels.shape) < 0.05, rng.integers(0, 3, labels.shape), labels).astype(np.uint8)
    np.savez_compressed(tmp_path / "pool.npz", masks=noisy[None], truths=labels[None], patch_ids=np.array([1]),
                        pixel_size=np.array([30.0, 30.0]), version="noisy")
    last = _run("benchmarks/prelabels.py", "--predictions", str(tmp_path / "pool.npz"))[-1]
    found = re.fullmatch(r"prelabels: parts/task (\d+) -> (\d+), polygon vertices/task (\d+) -> (\d+), "
                         r"edit share \(brush\) (\S+) -> (\S+), edit share \(polygons\) (\S+) -> (\S+)", last)
    assert found, last
    assert int(found[2]) < int(found[1]) / 4  # speckle cleaned away
    assert float(found[6]) < float(found[5])  # and fewer pixels to repaint


def test_the_sensors_benchmark_runs_in_quick_mode():
    last = _run("benchmarks/sensors.py", "--quick", "--seeds", "1", "--size", "192")[-1]
    found = re.fullmatch(r"sensors: glacier IoU ETM\+ (\S+), TM (\S+) \(\S+\), OLI (\S+) \(\S+\); "
                         r"agreement with ETM\+ TM (\S+), OLI (\S+)", last)
    assert found, last
    assert float(found[4]) > 0.95 and float(found[5]) > 0.95  # one ground, mapped alike from each sensor


def test_the_webhook_benchmark_stores_every_delivery_through_two_server_processes():
    lines = _run("benchmarks/webhook_ingestion.py", "--events", "40", "--sequential", "10", "--patch", "128",
                 "--processes", "1", "2")
    assert "accepted annotation labels: 100 of 100 sent (0 unexpected), 0 answers not 2xx" in lines, lines
    assert re.fullmatch(r"p99 with 8 senders: \d+\.\d ms \([12] processes\), target 50 ms", lines[-1]), lines[-1]


def test_the_training_precision_benchmark_trains_in_fp32_and_bf16():
    last = _run("benchmarks/cpu_training_precision.py", "--seeds", "0", "--epochs", "1")[-1]
    assert re.fullmatch(r"bf16/fp32 training speed ratio: \d+\.\d\d", last), last
