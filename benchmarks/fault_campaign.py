"""A fault and bad-input campaign against `al-loop serve` and the CLI: nothing answered 2xx may
be lost, nothing may be stored twice, no bad input may get a 5xx or change the store.

    python benchmarks/fault_campaign.py [--deliveries 2000] [--senders 8]

Runs `al-loop serve` as its own process on a SQLite workspace (a synthetic scene of 16 patches
of 256 px, no model: storing labels needs none) and prints:

1. bad HTTP requests: each one, its status; the count of 5xx (must be 0) and of labels stored;
2. bad files and options through the CLI: exit codes (must be 2), and whether the store changed;
3. load: deliveries from concurrent senders (in a child process, as Label Studio sends), 20 %
   of them duplicates, with deletions among them: sent, answered 2xx, stored, lost, duplicated;
4. kill -9 in the middle of a burst, then a restart: answered 2xx before the kill, stored after
   the restart, lost;
5. kill -9 while another process holds SQLite's write lock (every answer a 202): lost after the
   restart.
Exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import func, select

from al_loop.ingest import ingest_synthetic_scene
from al_loop.workspace import init_workspace, open_store
from backends import SECRET_HEADER
from backends.results import mask_to_brush_results
from backends.studio_process import free_port
from db.models import Label, Patch

PROJECT = {"id": 7, "title": "glaciers"}
FAILURES: list[str] = []


def check(ok: bool, what: str) -> None:
    if not ok:
        FAILURES.append(what)


def event(annotation_id: int, patch_id: int, result: list | None, **annotation) -> dict:
    return {"action": "ANNOTATION_CREATED", "project": PROJECT,
            "task": {"id": 500 + patch_id, "data": {"patch_id": patch_id}},
            "annotation": {"id": annotation_id, "result": result, "completed_by": 1, "lead_time": 4.0,
                           "was_cancelled": False, "updated_at": "2026-11-27T10:00:00Z", **annotation}}


class Server:
    """`al-loop serve --no-worker` as a process of its own."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> Server:
        env = {**os.environ, "AL_LOOP_WORKSPACE": str(self.root), "AL_LOOP_BACKEND_PORT": str(self.port)}
        self.process = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--no-worker"], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.2)
        raise SystemExit("al-loop serve did not start")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(60)


def accepted(store) -> dict[str, int]:
    """Accepted annotation labels per origin (more than one would be a duplicate)."""
    with store.session() as session:
        rows = session.execute(select(Label.origin, func.count()).where(
            Label.source == "annotation", Label.status == "accepted").group_by(Label.origin)).all()
    return dict(rows)


def wait_drained(root: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while list((root / "inbox").glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.2)


# --- 1. bad HTTP requests ---------------------------------------------------------------------


def bad_requests(url: str, auth, headers, patch_id: int, result: list) -> list[tuple[str, int]]:
    good = event(9_000_001, patch_id, result)

    def with_annotation(**fields):
        body = json.loads(json.dumps(good))
        body["annotation"].update(fields)
        return body

    def with_task_data(**fields):
        body = json.loads(json.dumps(good))
        body["task"]["data"].update(fields)
        return body

    def rle(change):
        body = json.loads(json.dumps(good))
        change(body["annotation"]["result"][0]["value"])
        return body

    cases = [
        ("no auth", "POST", "/webhook", {"json": good}, None),
        ("wrong password", "POST", "/webhook", {"json": good}, ("al-loop", "nope")),
        ("no secret", "POST", "/webhook", {"json": good, "headers": {}}, auth),
        ("not JSON", "POST", "/webhook", {"content": b"{oops"}, auth),
        ("JSON array", "POST", "/webhook", {"json": [1, 2]}, auth),
        ("nested 100k deep", "POST", "/webhook", {"content": b"[" * 100_000 + b"]" * 100_000}, auth),
        ("40 MB body", "POST", "/webhook", {"content": b" " * (40 * 2**20)}, auth),
        ("unknown action", "POST", "/webhook", {"json": {"action": "X" * 10_000, "project": PROJECT}}, auth),
        ("no project", "POST", "/webhook", {"json": {**good, "project": None}}, auth),
        ("project id a string", "POST", "/webhook", {"json": {**good, "project": {"id": "7"}}}, auth),
        ("annotation id 2^63", "POST", "/webhook", {"json": with_annotation(id=2**63)}, auth),
        ("annotation id -1", "POST", "/webhook", {"json": with_annotation(id=-1)}, auth),
        ("annotation id a float", "POST", "/webhook", {"json": with_annotation(id=1.5)}, auth),
        ("patch id 2^63", "POST", "/webhook", {"json": with_task_data(patch_id=2**63)}, auth),
        ("patch id 2^31", "POST", "/webhook", {"json": with_task_data(patch_id=2**31)}, auth),
        ("unknown patch", "POST", "/webhook", {"json": with_task_data(patch_id=999_999)}, auth),
        ("no task data", "POST", "/webhook", {"json": {**good, "task": {"id": 1}}}, auth),
        ("email a list", "POST", "/webhook",
         {"json": with_annotation(completed_by={"id": 1, "email": ["a", "b"]})}, auth),
        ("user id a dict", "POST", "/webhook", {"json": with_annotation(completed_by={"id": {"x": 1}})}, auth),
        ("lead time a string", "POST", "/webhook", {"json": with_annotation(lead_time="long")}, auth),
        ("updated_at not a time", "POST", "/webhook", {"json": with_annotation(updated_at="yesterday")}, auth),
        ("updated_at 10 kB", "POST", "/webhook", {"json": with_annotation(updated_at="2026" * 2500)}, auth),
        ("result not a list", "POST", "/webhook", {"json": with_annotation(result={"a": 1})}, auth),
        ("region not an object", "POST", "/webhook", {"json": with_annotation(result=[7])}, auth),
        ("RLE cut short", "POST", "/webhook", {"json": rle(lambda v: v.update(rle=v["rle"][:20]))}, auth),
        ("RLE trailing 1 MB", "POST", "/webhook", {"json": rle(lambda v: v.update(rle=v["rle"] + [0] * 2**20))}, auth),
        ("RLE values past 255", "POST", "/webhook", {"json": rle(lambda v: v.update(rle=[999] * 50))}, auth),
        ("RLE empty", "POST", "/webhook", {"json": rle(lambda v: v.update(rle=[]))}, auth),
        ("unknown label", "POST", "/webhook", {"json": rle(lambda v: v.update(brushlabels=["Snow"]))}, auth),
        ("two labels on a region", "POST", "/webhook",
         {"json": rle(lambda v: v.update(brushlabels=["Clean ice", "Background"]))}, auth),
        ("deletion ids not ints", "POST", "/webhook",
         {"json": {"action": "ANNOTATIONS_DELETED", "project": PROJECT, "annotations": [{"id": "x"}]}}, auth),
        ("deletion of nothing", "POST", "/webhook",
         {"json": {"action": "ANNOTATIONS_DELETED", "project": PROJECT, "annotations": []}}, auth),
        ("predict: no tasks", "POST", "/predict", {"json": {"tasks": []}}, auth),
        ("predict: patch 2^63", "POST", "/predict",
         {"json": {"tasks": [{"id": 1, "data": {"patch_id": 2**63}}]}}, auth),
        ("predict: config not XML", "POST", "/predict",
         {"json": {"tasks": [{"id": 1, "data": {"patch_id": patch_id}}], "label_config": "<View"}}, auth),
        ("predict: without a model", "POST", "/predict",
         {"json": {"tasks": [{"id": 1, "data": {"patch_id": patch_id}}]}}, auth),
        ("setup: foreign config", "POST", "/setup", {"json": {"project": "1", "schema": "<View></View>"}}, auth),
        ("setup: config not XML", "POST", "/setup", {"json": {"project": "1", "schema": "<<<"}}, auth),
        ("versions: no auth", "GET", "/versions", {}, None),
        ("unknown route", "GET", "/nope", {}, auth),
    ]
    out = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for name, method, path, kwargs, case_auth in cases:
            kwargs = dict(kwargs)
            kwargs["headers"] = kwargs.get("headers", headers)
            response = client.request(method, path, auth=case_auth, **kwargs)
            out.append((name, response.status_code))
    return out


# --- 2. bad files through the CLI ---------------------------------------------------------------


def bad_files(root: Path, tmp: Path) -> list[tuple[str, int, bool]]:
    """(case, exit code, store unchanged) for bad files and options given to the CLI."""
    import rasterio
    from rasterio.transform import from_origin

    text = tmp / "notes.txt"
    text.write_text("not a raster")
    no_crs = tmp / "no_crs.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(no_crs, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8") as dst:
            dst.write(np.zeros((1, 8, 8), np.uint8))
    unnamed = tmp / "seven_bands.tif"
    with rasterio.open(unnamed, "w", driver="GTiff", width=8, height=8, count=7, dtype="uint8", crs="EPSG:32645",
                       transform=from_origin(0, 0, 30, 30)) as dst:
        dst.write(np.ones((7, 8, 8), np.uint8))
    truncated = tmp / "truncated.tif"
    truncated.write_bytes(next((root / "scenes").glob("*/*.tif")).read_bytes()[:5000])
    far = tmp / "far_labels.tif"
    with rasterio.open(far, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8", crs="EPSG:4326",
                       transform=from_origin(-70, -30, 0.001, 0.001)) as dst:
        dst.write(np.ones((1, 8, 8), np.uint8))
    near = tmp / "near_labels.tif"  # on the scene's own grid, with a value no mapping names
    scene_file = next((root / "scenes").glob("*/*.tif"))
    with rasterio.open(scene_file) as src:
        profile = {"driver": "GTiff", "width": 64, "height": 64, "count": 1, "dtype": "uint8", "crs": src.crs,
                   "transform": src.transform}
    with rasterio.open(near, "w", **profile) as dst:
        dst.write(np.full((1, 64, 64), 7, np.uint8))
    empty_folder = tmp / "empty"
    empty_folder.mkdir()
    cases = [
        ("scene: a text file", ["ingest", "scene", str(text)]),
        ("scene: missing file", ["ingest", "scene", str(tmp / "missing.tif")]),
        ("scene: no CRS", ["ingest", "scene", str(no_crs)]),
        ("scene: 7 unnamed bands", ["ingest", "scene", str(unnamed)]),
        ("scene: truncated GeoTIFF", ["ingest", "scene", str(truncated)]),
        ("scene: empty folder", ["ingest", "scene", str(empty_folder)]),
        ("scene: --bands too few", ["ingest", "scene", str(unnamed), "--bands", "B1,B2"]),
        ("scene: --bands unknown", ["ingest", "scene", str(unnamed), "--bands", "B1,B2,B3,B4,B5,B7,B9"]),
        ("scene: --date not a date", ["ingest", "scene", str(empty_folder), "--date", "31/12/2000"]),
        ("scene: --sensor Landsat 8", ["ingest", "scene", str(empty_folder), "--sensor", "LC08"]),
        ("labels: a text file", ["ingest", "labels", str(text)]),
        ("labels: raster far away", ["ingest", "labels", str(far), "--map", "1=glacier"]),
        ("labels: unmapped raster values", ["ingest", "labels", str(near)]),
        ("labels: --map without =", ["ingest", "labels", str(near), "--map", "7"]),
        ("labels: --map unknown class", ["ingest", "labels", str(near), "--map", "7=snow"]),
        ("labels: --attribute on a raster", ["ingest", "labels", str(far), "--attribute", "x"]),
        ("train: no labels", ["train"]),
        ("train: --resume unknown job", ["train", "--resume", "99"]),
        ("train: --cancel unknown job", ["train", "--cancel", "99"]),
        ("evaluate: no model", ["evaluate"]),
        ("predict: unknown scene", ["predict", "99"]),
        ("next-round: unknown strategy", ["next-round", "--strategy", "smart"]),
        ("next-round: --size 0", ["next-round", "--size", "0"]),
        ("models promote: unknown", ["models", "promote", "v9"]),
        ("simulate: --holdout up", ["simulate", "--holdout", "up", "--out", str(tmp / "sim")]),
        ("init: --profile tpu", ["init", str(tmp / "new"), "--profile", "tpu"]),
        ("connect: not configured", ["connect"]),
        ("log level", ["--log-level", "loud", "status"]),
    ]
    store = open_store(_workspace(root))
    before = _fingerprint(store)
    out = []
    env = {**os.environ, "AL_LOOP_WORKSPACE": str(root)}
    for name, args in cases:
        result = subprocess.run([sys.executable, "-m", "cli", *args], env=env, capture_output=True, text=True,
                                timeout=300)
        after = _fingerprint(store)
        out.append((name, result.returncode, after == before, (result.stderr or result.stdout).strip()[-160:]))
        before = after
    store.dispose()
    return out


def _workspace(root: Path):
    from al_loop.config import open_workspace

    return open_workspace(root)


def _fingerprint(store) -> tuple:
    from db.models import ModelVersion, Round, Scene, TrainingJob

    with store.session() as session:
        return tuple(session.scalar(select(func.count()).select_from(t)) for t in (Scene, Patch, Label, ModelVersion,
                                                                                   Round, TrainingJob))


# --- 3-5. deliveries under load and kill -9 -----------------------------------------------------


def _send(url, auth, headers, bodies, senders, answered) -> None:
    """Send ``bodies`` (annotation id, JSON) from ``senders`` threads; put the ids answered 2xx."""
    lock = threading.Lock()
    ok, codes = [], {}

    def sender(share):
        with httpx.Client(base_url=url, auth=auth, headers=headers, timeout=30) as client:
            for annotation_id, body in share:
                try:
                    status = client.post("/webhook", content=body).status_code
                except httpx.TransportError:
                    status = -1  # the server is gone (killed)
                with lock:
                    codes[status] = codes.get(status, 0) + 1
                    if 200 <= status < 300:
                        ok.append(annotation_id)

    threads = [threading.Thread(target=sender, args=(bodies[s::senders],)) for s in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    answered.put((ok, codes))


def send_from_own_process(url, auth, headers, bodies, senders, on_started=None) -> tuple[list[int], dict]:
    context = multiprocessing.get_context("spawn")
    answered = context.Queue()
    child = context.Process(target=_send, args=(url, auth, headers, bodies, senders, answered))
    child.start()
    if on_started is not None:
        on_started()
    ok, codes = answered.get()
    child.join()
    return ok, codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--senders", type=int, default=8)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        ws = init_workspace(tmp / "ws")
        ws.config.ingest.quicklooks = False
        store = open_store(ws)
        ingest_synthetic_scene(ws, store, size=1024, seed=0, labelled=False, quiet=True)
        with store.session() as session:
            patch_ids = list(session.scalars(select(Patch.id).order_by(Patch.id)))
        masks = []
        for _ in range(8):
            mask = np.zeros((256, 256), np.uint8)
            mask[: rng.integers(20, 200), : rng.integers(20, 200)] = 1
            mask[100:140, 100:140] = 2
            masks.append(json.dumps(mask_to_brush_results(mask)))
        cfg = ws.config.backend
        auth, headers = (cfg.username, cfg.password), {SECRET_HEADER: cfg.webhook_secret,
                                                       "content-type": "application/json"}
        server = Server(ws.root, free_port()).start()

        print("1. bad HTTP requests")
        results = bad_requests(server.url, auth, headers, patch_ids[0], json.loads(masks[0]))
        for name, status in results:
            print(f"   {status}  {name}")
        server_errors = [name for name, status in results if status >= 500 and name != "predict: without a model"]
        model_missing = dict(results)["predict: without a model"]
        check(not server_errors, f"5xx for {server_errors}")
        check(model_missing == 503, "predict without a model must be a 503 that says why")
        labels_after_bad = sum(accepted(store).values())
        check(labels_after_bad == 0, f"{labels_after_bad} labels stored by bad requests")
        print(f"   {len(results)} bad requests, 5xx: {len(server_errors)} (plus the 503 for /predict without a "
              f"model, as designed), labels stored: {labels_after_bad}")

        print("2. bad files and options through the CLI")
        server.stop()
        files = bad_files(ws.root, tmp)
        for name, code, unchanged, message in files:
            print(f"   exit {code}  {'store unchanged' if unchanged else 'STORE CHANGED'}  {name}: {message[-100:]!r}")
        check(all(code == 2 for _, code, _, _ in files), "a bad file or option did not exit 2")
        check(all(unchanged for _, _, unchanged, _ in files), "a bad file or option changed the store")
        print(f"   {len(files)} cases, exit 2: {sum(code == 2 for _, code, _, _ in files)}, "
              f"store unchanged: {sum(u for _, _, u, _ in files)}")

        print(f"3. load: {args.deliveries} deliveries from {args.senders} senders, 20% duplicates")
        server = Server(ws.root, free_port()).start()
        n_unique = int(args.deliveries / 1.2)
        unique = [(k + 1, json.dumps(event(k + 1, patch_ids[k % len(patch_ids)], None)).replace(
            '"result": null', f'"result": {masks[k % len(masks)]}').encode()) for k in range(n_unique)]
        duplicates = [unique[i] for i in rng.integers(0, n_unique, args.deliveries - n_unique)]
        bodies = unique + duplicates
        order = rng.permutation(len(bodies))
        bodies = [bodies[i] for i in order]
        began = time.perf_counter()
        ok, codes = send_from_own_process(server.url, auth, headers, bodies, args.senders)
        wall = time.perf_counter() - began
        wait_drained(ws.root)
        stored = accepted(store)
        ids = {int(o.rsplit(":", 1)[1]) for o in stored}
        lost = set(ok) - ids
        twice = [o for o, n in stored.items() if n > 1]
        print(f"   sent {len(bodies)} ({n_unique} annotations), answered 2xx {len(ok)} {codes}, stored "
              f"{len(ids)}, lost {len(lost)}, duplicated {len(twice)}; {len(bodies) / wall:.0f} answered/s")
        check(not lost and not twice and len(ids) == n_unique, "load: lost or duplicated")

        print("4. kill -9 in the middle of a burst")
        burst = [(100_000 + k, json.dumps(event(100_000 + k, patch_ids[k % len(patch_ids)], None)).replace(
            '"result": null', f'"result": {masks[k % len(masks)]}').encode()) for k in range(600)]

        def kill_soon():
            time.sleep(2.0)
            server.kill()

        ok, codes = send_from_own_process(server.url, auth, headers, burst, args.senders, on_started=kill_soon)
        server = Server(ws.root, free_port()).start()
        wait_drained(ws.root)
        ids = {int(o.rsplit(":", 1)[1]) for o in accepted(store)}
        lost = set(ok) - ids
        print(f"   answered 2xx before the kill {len(ok)} of {len(burst)} {codes}; stored after the restart "
              f"{len(ids & {i for i, _ in burst})}, lost {len(lost)}")
        check(not lost and 0 < len(ok) < len(burst), "kill -9 mid-burst: an answered delivery was lost")

        print("5. kill -9 while another process holds SQLite's write lock")
        lock = sqlite3.connect(ws.root / "al-loop.db", timeout=30)
        lock.execute("BEGIN IMMEDIATE")
        held = [(200_000 + k, json.dumps(event(200_000 + k, patch_ids[k % len(patch_ids)], None)).replace(
            '"result": null', f'"result": {masks[0]}').encode()) for k in range(40)]
        ok, codes = send_from_own_process(server.url, auth, headers, held, args.senders)
        server.kill()
        lock.rollback()
        lock.close()
        server = Server(ws.root, free_port()).start()
        wait_drained(ws.root)
        ids = {int(o.rsplit(":", 1)[1]) for o in accepted(store)}
        lost = set(ok) - ids
        print(f"   answered {codes}, stored after the restart {len(ids & {i for i, _ in held})}, lost {len(lost)}")
        check(not lost and len(ok) == len(held), "kill -9 under a held lock: an answered delivery was lost")
        server.stop()
        store.dispose()
    print("all checks passed" if not FAILURES else "FAILED: " + "; ".join(FAILURES))
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
