"""Pool scoring in one process against Ray Data with model actors, on this machine.

    python benchmarks/ray_scoring.py [--pool 1536] [--workers 2] [--epochs 3]

A workspace of the cpu profile (256-px patches) with the built-in labelled scene and a model
trained for ``--epochs`` (scoring speed does not depend on how good it is), and an unlabelled
pool scene of ``--pool`` pixels a side. The pool is scored with the champion by
``rounds.score_pool`` in this process, then, the scores deleted, on a local Ray cluster started
here (``sampling.ray_address = local``) with ``--workers`` actors; the same scores are written
either way (checked). Printed: patches/s each way, Ray's start-up apart, and their ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ray
from rich.console import Console
from sqlalchemy import delete, select

from al_loop import rounds
from al_loop.ingest import ingest_synthetic_scene
from al_loop.training_run import run_training
from al_loop.workspace import init_workspace, open_store
from db import registry
from db.models import PatchScore

console = Console(width=160)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=1536, help="pool scene side in pixels")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ws = init_workspace(Path(tmp) / "ws")
        ws.config.training.max_epochs = args.epochs
        store = open_store(ws)
        with console.status("a labelled scene, a model, a pool scene"):
            ingest_synthetic_scene(ws, store, size=1024, seed=0, quiet=True)
            run_training(ws, store, quiet=True)
            ingest_synthetic_scene(ws, store, size=args.pool, seed=1, labelled=False, quiet=True)
        with store.session() as session:
            version = registry.champion(session) or registry.versions(session)[-1]
            session.expunge(version)
        start = time.perf_counter()
        n = rounds.score_pool(ws, store, version, quiet=True)
        here = time.perf_counter() - start
        with store.session() as session:
            expected = {r.patch_id: r.score for r in session.scalars(select(PatchScore))}
            session.execute(delete(PatchScore))
        start = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
        startup = time.perf_counter() - start
        ws.config.sampling.ray_address, ws.config.sampling.ray_workers = "local", args.workers
        start = time.perf_counter()
        assert rounds.score_pool(ws, store, version, quiet=True) == n
        on_ray = time.perf_counter() - start
        with store.session() as session:
            found = {r.patch_id: r.score for r in session.scalars(select(PatchScore))}
        ray.shutdown()
        store.dispose()
    same = found.keys() == expected.keys() and all(abs(found[k] - v) <= 1e-5 * max(1.0, abs(v))
                                                   for k, v in expected.items())
    console.print(f"{n} pool patches of 256 px, T={ws.config.model.mc_samples}, precision {ws.config.model.precision}; "
                  f"the same scores either way: {same}", highlight=False)
    console.print(f"one process: {here:.1f} s, {n / here:.2f} patches/s", highlight=False)
    console.print(f"Ray, {args.workers} actors: {on_ray:.1f} s, {n / on_ray:.2f} patches/s "
                  f"(cluster start {startup:.1f} s apart)", highlight=False)
    console.print(f"ray/one-process scoring speed ratio: {here / on_ray:.2f}", highlight=False)


if __name__ == "__main__":
    main()
