"""Webhook ingestion through a real HTTP server: annotations/s and answer latency of /webhook
under concurrent senders, and the time until the background writer has stored them all.

The backend serves in a thread on a free loopback port (as in the tests), over a SQLite workspace in a temp
dir (one synthetic scene of 2x2 patches, quicklooks off, retraining triggers off so that no
training job is queued). Each sender thread (in a child process) has its own keep-alive
httpx.Client and sends ANNOTATION_CREATED events with realistic brush results: blobby masks with
clean ice and debris, a few variants encoded once up front. Every event has its own annotation id, so every one must
become one accepted label; the store is checked for exactly that (exit 1 otherwise).

Baselines measured in the same run: one sender sending sequentially, and writing the same
masks straight into the store with db.queries.save_label (no HTTP, no RLE decoding; the
writer's transaction size). The senders run in a process of their own, as Label Studio does.
Target (the issue): 500 annotations/s answered with p99 under 50 ms.

    python benchmarks/webhook_ingestion.py [--events 800] [--senders 8] [--patch 512]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from scipy import ndimage
from sqlalchemy import select

from al_loop.classes import BACKGROUND, CLEAN_ICE, DEBRIS
from al_loop.ingest import ingest_synthetic_scene
from al_loop.workspace import init_workspace, open_store
from backends.annotations import SOURCE, accepted_annotation_ids
from backends.app import SECRET_HEADER
from backends.label_writer import MAX_BATCH
from backends.results import mask_to_brush_results, results_to_mask
from backends.service import Backend, ThreadedServer
from backends.studio_process import free_port
from db.models import Patch
from db.queries import save_label

PROJECT = {"id": 7, "title": "glaciers"}
TARGET_RATE, TARGET_P99_MS = 500, 50


def blobby_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth random blobs: ~40% clean ice, part of it debris-covered, the rest background."""
    ice_field = ndimage.gaussian_filter(rng.standard_normal((size, size)), size / 16)
    debris_field = ndimage.gaussian_filter(rng.standard_normal((size, size)), size / 24)
    ice = ice_field > np.quantile(ice_field, 0.6)
    mask = np.full((size, size), BACKGROUND, np.uint8)
    mask[ice] = CLEAN_ICE
    mask[ice & (debris_field > np.quantile(debris_field, 0.6))] = DEBRIS
    return mask


def event_body(annotation_id: int, patch_id: int, result_json: str) -> bytes:
    """An ANNOTATION_CREATED delivery as Label Studio sends it; the result is spliced in
    already encoded."""
    event = {
        "action": "ANNOTATION_CREATED",
        "project": PROJECT,
        "task": {"id": 500 + patch_id, "data": {"image": "/data/local-files/?d=x.png", "patch_id": patch_id}},
        "annotation": {"id": annotation_id, "result": None, "completed_by": {"id": 1, "email": "ana@hkh.org"},
                       "lead_time": 42.5, "was_cancelled": False, "updated_at": "2026-11-24T10:00:00Z"},
    }
    return json.dumps(event).replace('"result": null', f'"result": {result_json}', 1).encode()


def send(url: str, headers: dict, auth: tuple[str, str], events: list[tuple[int, int, str]], senders: int) -> dict:
    """Send ``events`` (annotation id, patch id, result JSON) from ``senders`` threads, each its
    own share in order; latencies (s) of the answers and the wall time until all are answered."""
    latencies: list[float] = []
    failures: list[str] = []
    start = threading.Barrier(senders + 1)

    def sender(share: list[tuple[int, int, str]]) -> None:
        mine = []
        with httpx.Client(base_url=url, headers=headers, auth=auth, timeout=30) as client:
            start.wait()
            for annotation_id, patch_id, result_json in share:
                body = event_body(annotation_id, patch_id, result_json)
                sent = time.perf_counter()
                response = client.post("/webhook", content=body)
                mine.append(time.perf_counter() - sent)
                if response.status_code != 200:
                    failures.append(f"annotation {annotation_id}: {response.status_code} {response.text[:200]}")
        latencies.extend(mine)

    threads = [threading.Thread(target=sender, args=(events[s::senders],)) for s in range(senders)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    return {"latencies": np.array(latencies), "wall": time.perf_counter() - began, "began": began,
            "failures": failures}


def _send_into(results, *args) -> None:
    results.put(send(*args))


def send_from_own_process(*args) -> dict:
    """:func:`send` in a child process, as Label Studio sends from its own: the senders' work
    does not take the server's CPU time (GIL). ``began`` is on the shared monotonic clock."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_send_into, args=(results, *args))
    child.start()
    outcome = results.get()
    child.join()
    return outcome


def direct_writes(store, patch_ids: list[int], masks: list[np.ndarray], n: int) -> float:
    """Seconds to store ``n`` labels with save_label, MAX_BATCH per transaction (as the writer)."""
    began = time.perf_counter()
    for first in range(0, n, MAX_BATCH):
        with store.session() as session:
            for k in range(first, min(first + MAX_BATCH, n)):
                patch = session.get(Patch, patch_ids[k % len(patch_ids)])
                save_label(session, patch, masks[k % len(masks)], source=SOURCE, origin=f"benchmark-direct:{k}")
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=800, help="annotations sent by the concurrent senders")
    parser.add_argument("--senders", type=int, default=8, help="concurrent sender threads")
    parser.add_argument("--sequential", type=int, default=200, help="annotations sent by the one sequential sender")
    parser.add_argument("--patch", type=int, default=512, help="patch side in pixels")
    parser.add_argument("--variants", type=int, default=16, help="distinct masks, sent in turn")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    masks = [blobby_mask(rng, args.patch) for _ in range(args.variants)]
    results = [mask_to_brush_results(m) for m in masks]
    result_jsons = [json.dumps(r) for r in results]
    decode_began = time.perf_counter()
    for r in results:
        results_to_mask(r, args.patch, args.patch, complete=True)
    decode_ms = (time.perf_counter() - decode_began) / len(results) * 1000

    with tempfile.TemporaryDirectory() as tmp:
        ws = init_workspace(Path(tmp) / "ws")
        ws.config.ingest.patch_size = args.patch
        ws.config.ingest.quicklooks = False
        ws.config.retraining.label_threshold = 0
        ws.config.retraining.debris_pixel_threshold = 0
        store = open_store(ws)
        ingest_synthetic_scene(ws, store, size=2 * args.patch, seed=0, quiet=True)
        with store.session() as session:
            patch_ids = list(session.scalars(select(Patch.id).order_by(Patch.id)))
        backend = Backend(ws, store).start(worker=False)
        cfg = ws.config.backend

        def events(first_id: int, n: int) -> list[tuple[int, int, str]]:
            return [(first_id + k, patch_ids[k % len(patch_ids)], result_jsons[k % len(result_jsons)])
                    for k in range(n)]

        sequential, concurrent = events(1_000_000, args.sequential), events(1, args.events)
        try:
            with ThreadedServer(backend, "127.0.0.1", free_port()) as http:
                url = http.url
                headers = {SECRET_HEADER: cfg.webhook_secret, "content-type": "application/json"}
                auth = (cfg.username, cfg.password)
                one = send_from_own_process(url, headers, auth, sequential, 1)
                backend.writer.join()
                many = send_from_own_process(url, headers, auth, concurrent, args.senders)
                backend.writer.join()
                stored_wall = time.perf_counter() - many["began"]
            with store.session() as session:
                accepted = set(accepted_annotation_ids(session, PROJECT["id"]))
            direct_s = direct_writes(store, patch_ids, masks, args.events)
        finally:
            backend.stop()
            store.dispose()

    sent = {annotation_id for annotation_id, _, _ in sequential + concurrent}
    one_rate, many_rate = args.sequential / one["wall"], args.events / many["wall"]
    stored_rate, direct_rate = args.events / stored_wall, args.events / direct_s
    p = {name: np.percentile(run["latencies"], [50, 95, 99]) * 1000 for name, run in (("one", one), ("many", many))}
    rle_bytes = np.mean([sum(len(region["value"]["rle"]) for region in r) for r in results])
    print(f"{args.patch}x{args.patch} brush annotations ({rle_bytes:.0f} RLE bytes, {len(results[0])} regions), "
          f"{len(patch_ids)} patches, SQLite, uvicorn in a thread, senders in a child process")
    print(f"{'':>24}{'events':>8}{'wall s':>8}{'answered/s':>11}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}")
    for name, label, n, run in (("one", "1 sender, sequential", args.sequential, one),
                                ("many", f"{args.senders} senders", args.events, many)):
        print(f"{label:>24}{n:>8}{run['wall']:>8.2f}{n / run['wall']:>11.1f}"
              + "".join(f"{v:>8.1f}" for v in p[name]))
    print(f"stored ({args.senders} senders): {stored_rate:.1f} labels/s ({stored_wall:.2f} s until writer.join())")
    print(f"direct save_label: {direct_rate:.1f} labels/s; RLE decode alone: {decode_ms:.1f} ms/annotation")
    print(f"ratios: {args.senders} senders / 1 sender answered/s {many_rate / one_rate:.2f}, "
          f"stored/s / direct save_label {stored_rate / direct_rate:.3f}, "
          f"answered/s / target {many_rate / TARGET_RATE:.3f}, p99 / target {p['many'][2] / TARGET_P99_MS:.2f}")
    failures = one["failures"] + many["failures"]
    print(f"accepted annotation labels: {len(accepted & sent)} of {len(sent)} sent "
          f"({len(accepted - sent)} unexpected), {len(failures)} non-200 answers")
    for failure in failures[:5]:
        print("  " + failure)
    if accepted != sent or failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
