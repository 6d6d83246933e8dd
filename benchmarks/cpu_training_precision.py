"""Training on the CPU in fp32 and in bf16 autocast: seconds per training and validation IoU, paired by seed.

    python benchmarks/cpu_training_precision.py [--seeds 0 1] [--epochs N]

For every seed, two workspaces (``al-loop init --profile cpu``) get the same built-in synthetic
scene (``al-loop ingest synthetic``); ``al-loop train`` then runs with ``training.precision`` fp32
in one and bf16 in the other, ``training.seed`` the seed, the profile's epochs unless ``--epochs``. Validation (which
picks the best epoch and gives these IoUs) is fp32 in both. The last line is
``bf16/fp32 training speed ratio: X``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from al_loop.workspace import open_store, open_workspace
from db.models import ModelVersion

from training_memory import cli  # benchmarks/training_memory.py: al-loop in its own process

ROWS = ("glacier", "clean_ice", "debris")
console = Console(width=140)


def train(root: Path, precision: str, seed: int, epochs: int | None) -> dict[str, float]:
    env = {**os.environ, "AL_LOOP_TRAINING_PRECISION": precision, "AL_LOOP_TRAINING_SEED": str(seed), "COLUMNS": "200"}
    if epochs:
        env["AL_LOOP_TRAINING_MAX_EPOCHS"] = str(epochs)
    cli("init", str(root), "--profile", "cpu", env=env)
    cli("ingest", "synthetic", "-w", str(root), "-q", env=env)
    began = time.perf_counter()
    cli("train", "-w", str(root), "-q", env=env)
    seconds = time.perf_counter() - began
    store = open_store(open_workspace(root))
    try:
        with store.session() as session:
            metrics = session.scalars(select(ModelVersion.metrics).order_by(ModelVersion.id.desc())).first()
    finally:
        store.dispose()
    return {"seconds": seconds, **{row: metrics["val"][row]["iou"] for row in ROWS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, help="training.max_epochs (default: the cpu profile's)")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"fp32": [], "bf16": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for precision in runs:
                console.log(f"seed {seed}, {precision}")
                runs[precision].append(train(Path(tmp) / f"{precision}-{seed}", precision, seed, args.epochs))
    table = Table(title=f"al-loop train, cpu profile, {args.epochs or 'its'} epochs, seeds {args.seeds}")
    for column in ("", "train s", *(f"{row} IoU" for row in ROWS)):
        table.add_column(column, justify="right")
    for precision, results in runs.items():
        table.add_row(precision, *(f"{np.mean([r[key] for r in results]):.3f}" for key in ("seconds", *ROWS)))
    diffs = {row: np.array([b[row] - f[row] for f, b in zip(runs["fp32"], runs["bf16"], strict=True)]) for row in ROWS}
    table.add_row("bf16 - fp32 (paired)", "", *(f"{d.mean():+.3f} ± {d.std():.3f}" for d in diffs.values()))
    console.print(table)
    ratio = np.mean([f["seconds"] / b["seconds"] for f, b in zip(runs["fp32"], runs["bf16"], strict=True)])
    print(f"bf16/fp32 training speed ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
