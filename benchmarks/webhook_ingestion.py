"""Webhook ingestion through `al-loop serve`: annotations/s and answer latency of /webhook under
concurrent senders, with one and with several server processes (``--processes``), and the time
until the store holds them all.

`al-loop serve --no-worker` runs as its own process(es), as a user starts it, over a workspace in a
temp dir (one synthetic scene of 2x2 patches, quicklooks off, retraining triggers off so that no
training job is queued): SQLite by default, a throwaway PostgreSQL server with ``--postgres``.
Sender threads in this process, each with its own keep-alive httpx.Client, send
ANNOTATION_CREATED events with realistic brush results: blobby masks with clean ice and debris, a
few variants encoded once up front. Every event has its own annotation id, so every one must become
one accepted label; the store is checked for exactly that (exit 1 otherwise).

Baselines measured in the same run: one sender sending sequentially, and writing the same masks
straight into the store with db.queries.save_label (no HTTP, no RLE decoding; the writer's
transaction size). Target (the issue): p99 under 50 ms with 8 senders, nothing accepted lost.

    python benchmarks/webhook_ingestion.py [--events 800] [--senders 8] [--patch 512] [--processes 1 2] [--postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np
from scipy import ndimage
from sqlalchemy import select

from al_loop.classes import BACKGROUND, CLEAN_ICE, DEBRIS
from al_loop.ingest import ingest_synthetic_scene
from al_loop.workspace import init_workspace, open_store
from backends import SECRET_HEADER
from backends.accepted_labels import SOURCE, accepted_annotation_ids
from backends.label_writer import MAX_BATCH
from backends.results import mask_to_brush_results, results_to_mask
from backends.studio_process import free_port
from db.models import Patch
from db.queries import save_label

PROJECT = {"id": 7, "title": "glaciers"}
TARGET_P99_MS = 50
REPO = Path(__file__).resolve().parents[1]
# No training job queued, whatever the labels: the server only stores them.
SERVER_SETTINGS = {"AL_LOOP_RETRAINING_LABEL_THRESHOLD": "0", "AL_LOOP_RETRAINING_DEBRIS_PIXEL_THRESHOLD": "0"}


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
    queued: list[int] = []
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
                if response.status_code == 202:  # durable, stored a little later
                    queued.append(annotation_id)
                elif response.status_code != 200:
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
            "failures": failures, "queued": len(queued)}


def serve(root: Path, port: int, processes: int, database_url: str | None) -> subprocess.Popen:
    """`al-loop serve --no-worker --processes N` on ``root``, answering /health."""
    env = {**os.environ, "AL_LOOP_WORKSPACE": str(root), "AL_LOOP_BACKEND_PORT": str(port), **SERVER_SETTINGS}
    if database_url:
        env["AL_LOOP_DATABASE_URL"] = database_url
    server = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--no-worker", "--processes", str(processes)],
                              env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not _answers(f"http://127.0.0.1:{port}/health"):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"al-loop serve did not start: {server.communicate()[1][-2000:]}")
        time.sleep(0.1)  # polling a condition: the server's answer
    return server


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def stop(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGINT)
    try:
        server.wait(60)
    except subprocess.TimeoutExpired:
        server.kill()


def wait_stored(store, annotation_ids: set[int], timeout_s: float = 300) -> float:
    """Wait until every one of ``annotation_ids`` is an accepted label; when that was (perf_counter)."""
    deadline = time.perf_counter() + timeout_s
    while True:
        with store.session() as session:
            missing = annotation_ids - set(accepted_annotation_ids(session, PROJECT["id"]))
        if not missing or time.perf_counter() > deadline:
            return time.perf_counter()
        time.sleep(0.02)


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
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="server process counts to compare")
    parser.add_argument("--postgres", action="store_true", help="the store on a throwaway PostgreSQL server")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    masks = [blobby_mask(rng, args.patch) for _ in range(args.variants)]
    results = [mask_to_brush_results(m) for m in masks]
    result_jsons = [json.dumps(r) for r in results]
    decode_began = time.perf_counter()
    for r in results:
        results_to_mask(r, args.patch, args.patch, complete=True)
    decode_ms = (time.perf_counter() - decode_began) / len(results) * 1000

    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        database_url = None
        if args.postgres:
            sys.path.insert(0, str(REPO))  # the test suite's throwaway server
            from tests.postgres_server import PostgresServer

            database_url = stack.enter_context(PostgresServer()).new_database("webhook_benchmark")
        ws = init_workspace(Path(tmp) / "ws", database_url=database_url)
        ws.config.ingest.patch_size = args.patch
        ws.config.ingest.quicklooks = False
        store = open_store(ws)
        ingest_synthetic_scene(ws, store, size=2 * args.patch, seed=0, quiet=True)
        with store.session() as session:
            patch_ids = list(session.scalars(select(Patch.id).order_by(Patch.id)))
        cfg = ws.config.backend
        headers = {SECRET_HEADER: cfg.webhook_secret, "content-type": "application/json"}
        auth = (cfg.username, cfg.password)
        first_id = 1

        def events(n: int) -> list[tuple[int, int, str]]:
            nonlocal first_id
            batch = [(first_id + k, patch_ids[k % len(patch_ids)], result_jsons[k % len(result_jsons)])
                     for k in range(n)]
            first_id += n
            return batch

        runs = []
        try:
            for processes in args.processes:
                port = free_port()
                server = serve(ws.root, port, processes, database_url)
                try:
                    for senders, n in ((1, args.sequential), (args.senders, args.events)):
                        sent = events(n)
                        run = send(f"http://127.0.0.1:{port}", headers, auth, sent, senders)
                        run["stored_wall"] = wait_stored(store, {a for a, _, _ in sent}) - run["began"]
                        runs.append({"processes": processes, "senders": senders, "events": n, **run})
                finally:
                    stop(server)
            with store.session() as session:
                accepted = set(accepted_annotation_ids(session, PROJECT["id"]))
            direct_s = direct_writes(store, patch_ids, masks, args.events)
        finally:
            store.dispose()

    sent_ids = set(range(1, first_id))
    direct_rate = args.events / direct_s
    rle_bytes = np.mean([sum(len(region["value"]["rle"]) for region in r) for r in results])
    print(f"{args.patch}x{args.patch} brush annotations ({rle_bytes:.0f} RLE bytes, {len(results[0])} regions), "
          f"{len(patch_ids)} patches, {'PostgreSQL' if args.postgres else 'SQLite'}, `al-loop serve`, "
          f"senders in this process, {os.cpu_count()} cores")
    print(f"{'processes':>9}{'senders':>8}{'events':>8}{'wall s':>8}{'answered/s':>11}{'p50 ms':>8}{'p95 ms':>8}"
          f"{'p99 ms':>8}{'stored/s':>9}{'202s':>6}")
    for run in runs:
        p50, p95, p99 = np.percentile(run["latencies"], [50, 95, 99]) * 1000
        print(f"{run['processes']:>9}{run['senders']:>8}{run['events']:>8}{run['wall']:>8.2f}"
              f"{run['events'] / run['wall']:>11.1f}{p50:>8.1f}{p95:>8.1f}{p99:>8.1f}"
              f"{run['events'] / run['stored_wall']:>9.1f}{run['queued']:>6}")
    print(f"direct save_label: {direct_rate:.1f} labels/s; RLE decode alone: {decode_ms:.1f} ms/annotation")
    concurrent = {run["processes"]: run for run in runs if run["senders"] == args.senders}
    p99 = {k: np.percentile(run["latencies"], 99) * 1000 for k, run in concurrent.items()}
    base = min(concurrent)
    for k in sorted(concurrent)[1:]:
        print(f"ratios, {k} processes / {base}: answered/s "
              f"{(args.events / concurrent[k]['wall']) / (args.events / concurrent[base]['wall']):.2f}, "
              f"p99 {p99[k] / p99[base]:.2f}")
    failures = [f for run in runs for f in run["failures"]]
    print(f"accepted annotation labels: {len(accepted & sent_ids)} of {len(sent_ids)} sent "
          f"({len(accepted - sent_ids)} unexpected), {len(failures)} answers not 2xx")
    for failure in failures[:5]:
        print("  " + failure)
    best = min(p99, key=p99.get)
    print(f"p99 with {args.senders} senders: {p99[best]:.1f} ms ({best} processes), target {TARGET_P99_MS} ms")
    if accepted != sent_ids or failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
