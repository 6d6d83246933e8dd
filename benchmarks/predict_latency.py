"""/predict latency per task on CPU through a real HTTP server, against the bare forward pass.

The model of the cuda profile (the paper's U-Net: depth 5, 16-512 filters), trained for one
epoch (crop 256) on a 1024x1024 synthetic scene (its speed does not depend on its weights). A
pool scene of 2x4 patches is handed out as a round of 8, the app is served by uvicorn in a
thread and asked for 1, 4 and 8 of those tasks in one POST (the backend infers
``backend.batch_size`` patches at a time). The baseline, measured in the same run on the same
patches: predict_proba of the served model at the same batch size on patches already read and
normalised. Their ratio is what reading the patches, HTTP, encoding the results and checking them
against the labeling config add. Polygons (``backend.prediction_format``) are timed for 1 task.

Encoding costs grow with the mask's boundaries, and a 1-epoch model's masks are speckled (a
worst case; a converged model's are smoother): ``to_prediction`` alone is timed on the served
mask of task 1 and on a smooth blobby mask. Best of a few runs, the runs compared taking turns.

    python benchmarks/predict_latency.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.orm import joinedload

from al_loop.ingest import ingest_hkh_tile, ingest_synthetic_scene
from al_loop.model.inference import predict_proba
from al_loop.model.normalization import normalize
from al_loop.patches import read_patch
from al_loop.rounds import next_round
from al_loop.synthetic import make_scene
from al_loop.training_run import run_training
from al_loop.workspace import init_workspace, open_store
from backends.label_config import label_config
from backends.predictor import FORMATS, predict_masks, to_prediction
from backends.service import Backend, ThreadedServer
from backends.studio_process import free_port
from db.models import Patch

from webhook_ingestion import blobby_mask  # a sibling script

PATCH, BATCHES = 512, (1, 4, 8)


def boundary_density(mask: np.ndarray) -> float:
    """Share of horizontally neighbouring pixels of different classes: what encoding costs grow with."""
    return float((mask[:, 1:] != mask[:, :-1]).mean())


def seconds(fn, *args) -> float:
    began = time.perf_counter()
    fn(*args)
    return time.perf_counter() - began


def best_of(repeats: int, fns: dict) -> dict[str, float]:
    """Best time of each function over ``repeats`` runs, the functions taking turns."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            best[name] = min(best[name], seconds(fn))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs (best kept) after a warm-up")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ws = init_workspace(Path(tmp) / "ws", profile="cuda")
        ws.config.ingest.quicklooks = False
        ws.config.training.max_epochs = 1
        ws.config.training.validation_block = 512  # the scene holds one 1024 block: split it
        ws.config.model.mc_samples = 2  # only to choose the round
        store = open_store(ws)
        ingest_synthetic_scene(ws, store, size=1024, seed=0, quiet=True)
        pool = make_scene(Path(tmp) / "pool", height=2 * PATCH, width=4 * PATCH, seed=5, name="LE07_145039_20081012")
        ingest_hkh_tile(ws, store, pool.image, quiet=True)
        run_training(ws, store, quiet=True)
        round_ = next_round(ws, store, size=max(BATCHES), strategy="random", quiet=True)
        patch_ids = [p.patch_id for p in round_.patches]
        backend = Backend(ws, store).start(worker=False)
        served, device, cfg = backend.holder.current, backend.holder.device, ws.config.backend
        with store.session() as session:
            patches = list(session.scalars(select(Patch).options(joinedload(Patch.scene))
                                           .where(Patch.id.in_(patch_ids))))
        patches.sort(key=lambda p: patch_ids.index(p.id))
        x = torch.from_numpy(np.stack([normalize(*read_patch(ws, p, served.channels), served.normalization)
                                       for p in patches]))
        config_xml = label_config(polygons=True)
        try:
            with ThreadedServer(backend, "127.0.0.1", free_port()) as http, httpx.Client(
                base_url=http.url, auth=(cfg.username, cfg.password), timeout=600
            ) as client:

                def bare(n: int):
                    return lambda: predict_proba(served.model, x[:n], device, batch_size=cfg.batch_size)

                def http(n: int, fmt: str):
                    body = {"tasks": [{"id": 100 + k, "data": {"patch_id": p}} for k, p in enumerate(patch_ids[:n])],
                            "label_config": config_xml, "project": "1.1700000000"}

                    def ask() -> None:
                        cfg.prediction_format = fmt
                        response = client.post("/predict", json=body)
                        response.raise_for_status()
                        assert len(response.json()["results"]) == n

                    return ask

                best_of(1, {"bare": bare(1), "http": http(1, "brush")})  # warm-up
                rows = {(n, fmt): best_of(args.repeats, {"bare": bare(n), "http": http(n, fmt)})
                        for n, fmt in [(n, "brush") for n in BATCHES] + [(1, "polygons")]}
        finally:
            backend.stop()
            store.dispose()
        served_mask = predict_masks(ws, served, patches[:1], device, 1)[0][0]
    smooth_mask = blobby_mask(np.random.default_rng(0), PATCH)
    encode_ms = {(name, fmt): seconds(to_prediction, mask, served.name, 0.5, fmt, config_xml) * 1000
                 for name, mask in (("served", served_mask), ("smooth", smooth_mask)) for fmt in FORMATS}

    print(f"default U-Net ({ws.config.model.depth} levels, {ws.config.model.base_filters}-"
          f"{ws.config.model.max_filters} filters, 1 epoch), {PATCH}x{PATCH}x{x.shape[1]} patches, {device}, "
          f"{torch.get_num_threads()} threads, backend.batch_size {cfg.batch_size}, best of {args.repeats}")
    print(f"{'tasks':>5}{'format':>10}{'bare ms/task':>14}{'/predict ms/task':>18}{'/predict / bare':>17}")
    for (n, fmt), t in rows.items():
        print(
            f"{n:>5}{fmt:>10}{t['bare'] / n * 1000:>14.1f}{t['http'] / n * 1000:>18.1f}{t['http'] / t['bare']:>17.3f}"
        )
    print(f"polygons / brush, 1 task over HTTP: {rows[1, 'polygons']['http'] / rows[1, 'brush']['http']:.2f}")
    for name, mask in (("served", served_mask), ("smooth", smooth_mask)):
        brush, polygons = (encode_ms[name, fmt] for fmt in FORMATS)
        print(f"to_prediction alone, {name} mask ({boundary_density(mask):.3f} of neighbours differ): "
              f"brush {brush:.1f} ms, polygons {polygons:.1f} ms ({polygons / brush:.2f}x)")


if __name__ == "__main__":
    main()
