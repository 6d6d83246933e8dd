"""Training memory against the number of labels: peak RSS of training with N and 4N labelled patches.

    python benchmarks/training_memory.py [--n 16] [--epochs 1] [--workers 1] [--cache-mb 0]

Two workspaces (``al-loop init``, the cpu profile: 256-px patches) each get one labelled synthetic
scene (``al-loop ingest synthetic --size``), sized to give N and 4N labelled patches. Then
``al-loop train`` runs for ``--epochs`` in a fresh process per workspace, which reports its own
peak resident memory and that of its data-loading workers (``getrusage``: the training process,
and the largest child). Ingest runs in its own process so that its peak (generating the scene)
does not mask training's. The last line is ``peak memory 4N/N: X``, of the training process's and the
worker's peaks together (a forked worker's resident pages include some it shares with its parent,
so the sum overstates what the two hold).

Memory that grows with the labels shows as a ratio well above 1: before patches were read lazily,
every labelled patch's pixels and a normalised copy were held (about 31 MB per 512-px patch).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console(width=160)

TRAIN = """
import json, resource, sys
from typer.testing import CliRunner
from cli import app
result = CliRunner().invoke(app, ["train", "-w", sys.argv[1], "-q"])
assert result.exit_code == 0, result.output
self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"train_mib": self / 1024, "worker_mib": children / 1024}))
"""


ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"al-loop {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def measure(root: Path, patches: int, epochs: int, workers: int, cache_mb: int, patch: int = 256) -> dict[str, float]:
    env = {**os.environ, "AL_LOOP_TRAINING_MAX_EPOCHS": str(epochs), "AL_LOOP_TRAINING_LOADER_WORKERS": str(workers),
           "AL_LOOP_TRAINING_CACHE_MB": str(cache_mb), "COLUMNS": "200"}
    side = patch * math.isqrt(patches)
    cli("init", str(root), "--profile", "cpu", env=env)
    cli("ingest", "synthetic", "--size", str(side), "-w", str(root), "-q", env=env)
    done = subprocess.run([sys.executable, "-c", TRAIN, str(root)], capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"training failed:\n{done.stdout}\n{done.stderr}")
    return {"patches": patches, **json.loads(done.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="labelled patches of the small run (a square number)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="training.loader_workers")
    parser.add_argument("--cache-mb", type=int, default=0,
                        help="training.cache_mb (default 0: every patch read again each epoch; the product's 256 "
                             "keeps up to that much, so memory grows with the labels until it is full)")
    args = parser.parse_args()
    if math.isqrt(args.n) ** 2 != args.n:
        raise SystemExit(f"--n must be a square number (the synthetic scene is square), found {args.n}")
    with tempfile.TemporaryDirectory() as tmp:
        runs = [measure(Path(tmp) / f"n{n}", n, args.epochs, args.workers, args.cache_mb) for n in (args.n, 4 * args.n)]
    table = Table(title=f"al-loop train, {args.epochs} epoch(s), training.loader_workers {args.workers}, "
                        f"training.cache_mb {args.cache_mb}, 256-px patches")
    for column in ("labelled patches", "training process peak MiB", "largest worker peak MiB"):
        table.add_column(column, justify="right")
    for run in runs:
        table.add_row(str(run["patches"]), f"{run['train_mib']:.0f}", f"{run['worker_mib']:.0f}")
    console.print(table)
    total = [run["train_mib"] + run["worker_mib"] for run in runs]
    console.print(f"training process 4N/N {runs[1]['train_mib'] / runs[0]['train_mib']:.2f}, worker 4N/N "
                  f"{runs[1]['worker_mib'] / max(runs[0]['worker_mib'], 1):.2f}", highlight=False)
    console.print(f"peak memory 4N/N: {total[1] / total[0]:.2f}", highlight=False)


if __name__ == "__main__":
    main()
