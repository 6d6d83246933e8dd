"""Faults and bad input at the backend: nothing answered 2xx is lost, a poison delivery sinks no
other, deletions stay deleted, times are compared as times, bad requests get a 4xx (never a 500),
and a backend whose champion cannot be loaded still takes labels."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import select

from al_loop.ingest import ingest_synthetic_scene
from al_loop.workspace import init_workspace, open_store
from backends import SECRET_HEADER
from backends.accepted_labels import Annotation
from backends.inbox import Inbox
from backends.label_config import label_config
from backends.label_writer import LabelWriter
from backends.results import mask_to_brush_results
from backends.studio_process import free_port
from db.models import Label, Patch
from tests.test_backend_app import PROJECT, _event, _labels, _mask, _post_webhook, served  # noqa: F401
from tests.test_label_studio_e2e import wait_for


def _brush():
    return mask_to_brush_results(_mask())


def test_a_poison_delivery_is_refused_in_the_request_and_stores_nothing(served):
    ws, store, backend, client, patches = served
    body = _event(patches[0], _brush())
    body["annotation"]["completed_by"] = {"id": 1, "email": ["a@b", "c@d"]}
    response = _post_webhook(ws, client, body)
    assert response.status_code == 422 and "completed_by.email must be a text" in response.json()["error"]
    for field, value, problem in [("lead_time", "long", "lead_time must be seconds"),
                                  ("updated_at", "yesterday", "updated_at must be an ISO 8601 time"),
                                  ("id", 2**63, "annotation.id must be an id between 1 and")]:
        bad = _event(patches[0], _brush(), **{field: value})
        answer = _post_webhook(ws, client, bad)
        assert answer.status_code == 422 and problem in answer.json()["error"], answer.json()
    backend.writer.join()
    assert _labels(store) == [] and not list(backend.inbox.folder.glob("*.json"))


def _unlabelled_scene(root):
    """A workspace with one unlabelled synthetic scene of 16 patches of 128 px; its patch ids."""
    ws = init_workspace(root)
    ws.config.ingest.patch_size, ws.config.ingest.quicklooks = 128, False
    store = open_store(ws)
    ingest_synthetic_scene(ws, store, size=512, seed=0, labelled=False, quiet=True)
    with store.session() as session:
        patch_ids = session.scalars(select(Patch.id).order_by(Patch.id)).all()
    return ws, store, patch_ids


def test_a_delivery_that_fails_at_write_time_sinks_no_other_of_its_group(tmp_path):
    ws, store, patch_ids = _unlabelled_scene(tmp_path / "ws")
    inbox = Inbox(tmp_path / "inbox")
    writer = LabelWriter(ws, store, inbox)

    def annotation(k, mask):
        return Annotation(7, 1000 + k, None, patch_ids[k % len(patch_ids)], False, mask, "1", None, None, None)

    good = [annotation(k, np.zeros((128, 128), np.uint8)) for k in range(20)]
    poison = annotation(99, np.zeros((64, 64), np.uint8))  # checked wrongly somewhere: fails at the insert
    futures = [writer.put(item, inbox.put(item)) for item in [*good[:10], poison, *good[10:]]]
    writer.start()  # all 21 queued before the thread starts: one group
    writer.join()
    writer.stop()
    assert [f.exception() is None for f in futures] == [True] * 10 + [False] + [True] * 10
    with store.session() as session:
        assert session.scalar(select(Label.id).where(Label.origin == "label-studio:7:1099")) is None
        assert len(session.scalars(select(Label)).all()) == 20
    assert not list(inbox.folder.glob("*.json"))  # the good ones were removed once committed
    aside = list(inbox.failed.glob("*.json"))
    assert len(aside) == 1 and "label mask for patch" in aside[0].with_suffix(".reason.txt").read_text()
    store.dispose()


def test_a_deleted_annotation_never_comes_back(served):
    ws, store, backend, client, patches = served
    created = _event(patches[0], _brush(), annotation_id=501, updated_at="2026-11-24T10:00:00Z")
    update_before_delete = _event(patches[0], _brush(), annotation_id=501, action="ANNOTATION_UPDATED",
                                  updated_at="2026-11-24T10:01:00Z")
    deleted = {"action": "ANNOTATIONS_DELETED", "project": PROJECT, "annotations": [{"id": 501}, {"id": 502}]}
    _post_webhook(ws, client, created)
    assert _post_webhook(ws, client, deleted).json()["outcome"] == {"retired": 1}
    assert _post_webhook(ws, client, created).json()["outcome"] == {"deleted": 1}  # a late duplicate
    assert _post_webhook(ws, client, update_before_delete).json()["outcome"] == {"deleted": 1}  # overtaken
    # Deleted before its creation was delivered (deliveries overtake each other): no label either.
    late_create = _event(patches[1], _brush(), annotation_id=502)
    assert _post_webhook(ws, client, late_create).json()["outcome"] == {"deleted": 1}
    assert [(r[1], r[3]) for r in _labels(store)] == [("label-studio:7:501", "retired")]


def test_update_times_are_compared_as_times(served):
    ws, store, backend, client, patches = served
    first = _event(patches[0], _brush(), annotation_id=601, updated_at="2026-11-24T10:00:00Z")
    half_second_later = _event(patches[0], mask_to_brush_results(_mask(debris_rows=slice(50, 60))),
                               annotation_id=601, action="ANNOTATION_UPDATED", updated_at="2026-11-24T10:00:00.500000Z")
    assert _post_webhook(ws, client, first).json()["outcome"] == {"created": 1}
    assert _post_webhook(ws, client, half_second_later).json()["outcome"] == {"revised": 1}  # text order says older
    # 12:00+02:00 is 10:00 UTC: older than 10:00:00.5Z, whatever the text says.
    other_offset = _event(patches[0], _brush(), annotation_id=601, action="ANNOTATION_UPDATED",
                          updated_at="2026-11-24T12:00:00+02:00")
    assert _post_webhook(ws, client, other_offset).json()["outcome"] == {"stale": 1}
    newer = _event(patches[0], _brush(), annotation_id=601, action="ANNOTATION_UPDATED",
                   updated_at="2026-11-24T11:00:00.100+01:00")  # 10:00:00.1 UTC: older too
    assert _post_webhook(ws, client, newer).json()["outcome"] == {"stale": 1}
    assert [(r[2], r[3]) for r in _labels(store)] == [(1, "superseded"), (2, "accepted")]


def test_bad_requests_get_a_4xx_never_a_500(served):
    ws, store, backend, client, patches = served
    headers = {SECRET_HEADER: ws.config.backend.webhook_secret, "content-type": "application/json"}
    huge_id = _event(2**63, _brush())
    response = _post_webhook(ws, client, huge_id)
    assert (
        response.status_code == 422
        and "task.data.patch_id must be an id between 1 and 2147483647" in response.json()["error"]
    )
    deep = b"[" * 100_000 + b"]" * 100_000
    assert client.post("/webhook", content=deep, headers=headers).status_code == 400
    assert client.post("/predict", content=deep, headers=headers).status_code == 400
    too_big = client.post("/webhook", content=b" " * (33 * 2**20), headers=headers)
    assert too_big.status_code == 413 and "larger than 32 MiB" in too_big.json()["error"]
    not_xml = client.post("/predict", json={"tasks": [{"id": 1, "data": {"patch_id": patches[0]}}],
                                            "label_config": "<View><Image"})
    assert not_xml.status_code == 422 and "label_config" in not_xml.json()["error"]
    huge_task = client.post("/predict", json={"tasks": [{"id": 1, "data": {"patch_id": 2**63}}]})
    assert huge_task.status_code == 422
    trailing = _brush()
    trailing[0]["value"]["rle"] = trailing[0]["value"]["rle"] + [0] * 5000
    answer = _post_webhook(ws, client, _event(patches[0], trailing))
    assert answer.status_code == 422 and "trailing data" in answer.json()["error"]
    assert _post_webhook(ws, client, {"action": "ANNOTATIONS_DELETED", "project": PROJECT,
                                      "annotations": [{"id": -4}]}).status_code == 422
    backend.writer.join()
    assert _labels(store) == []


def test_a_champion_that_cannot_be_loaded_still_lets_labels_in(served):
    from fastapi.testclient import TestClient

    from backends.app import create_app
    from backends.service import Backend
    from db import registry

    ws, store, _, _, patches = served
    with store.session() as session:
        path = ws.resolve(registry.champion(session).checkpoint_path)
    path.write_bytes(path.read_bytes()[:500])  # the champion's file damaged on disk
    backend = Backend(ws, store).start(worker=False)  # starts: storing labels needs no model
    try:
        client = TestClient(create_app(backend))
        client.auth = (ws.config.backend.username, ws.config.backend.password)
        health = client.get("/health").json()
        assert health["model_version"] is None and "v1 cannot be served" in health["problem"]
        predicted = client.post("/predict", json={"tasks": [{"id": 1, "data": {"patch_id": patches[0]}}],
                                                  "label_config": label_config()})
        assert predicted.status_code == 503 and "not a readable model file" in predicted.json()["error"]
        assert "al-loop models promote" in predicted.json()["error"]
        stored = _post_webhook(ws, client, _event(patches[0], _brush(), annotation_id=701))
        assert stored.status_code == 200 and stored.json()["outcome"] == {"created": 1}
    finally:
        backend.stop()


def test_deliveries_answered_while_the_store_is_locked_survive_kill_9(tmp_path):
    """`al-loop serve` as its own process; another process holds SQLite's write lock, so nothing
    can be committed and deliveries are answered 202; the server is killed with SIGKILL; once the
    lock is gone a new server stores every one of them."""
    ws, store, patch_ids = _unlabelled_scene(tmp_path / "ws")
    store.dispose()
    port = free_port()
    env = {**os.environ, "AL_LOOP_WORKSPACE": str(ws.root), "AL_LOOP_BACKEND_PORT": str(port),
           "AL_LOOP_INGEST_PATCH_SIZE": "128"}
    url = f"http://127.0.0.1:{port}"
    auth = (ws.config.backend.username, ws.config.backend.password)
    headers = {SECRET_HEADER: ws.config.backend.webhook_secret}

    def serve():
        process = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--no-worker"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _answers(url), 60, "al-loop serve to answer")
        return process

    server = serve()
    lock = sqlite3.connect(ws.root / "al-loop.db", timeout=30)
    lock.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    answers = []
    with httpx.Client(auth=auth, headers=headers, timeout=30) as http:
        for k in range(12):
            body = _event(patch_ids[k], _brush(), annotation_id=800 + k)
            answers.append(http.post(f"{url}/webhook", content=json.dumps(body)).status_code)
    assert answers == [202] * 12
    server.send_signal(signal.SIGKILL)
    server.wait(30)
    lock.rollback()
    lock.close()
    assert len(list((ws.root / "inbox").glob("*.json"))) == 12
    server = serve()
    try:
        store = open_store(ws)
        wait_for(lambda: len(_labels(store)) == 12, 60, "the 12 answered deliveries in the store")
        assert sorted(r[1] for r in _labels(store)) == sorted(f"label-studio:7:{800 + k}" for k in range(12))
        wait_for(lambda: not list((ws.root / "inbox").glob("*.json")), 30, "an empty inbox")
        store.dispose()
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(60)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _server_processes(parent: int) -> set[int]:
    """The live server processes `al-loop serve --processes N` (``parent``) started."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return {int(pid) for pid in children
            if "multiprocessing.spawn" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            and "resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")}


def test_several_server_processes_store_every_delivery_once_and_replace_a_killed_one(tmp_path):
    """`al-loop serve --processes 2`: concurrent deliveries are stored once each; a server process
    killed with SIGKILL is started again and the deliveries after it are stored too; Ctrl-C stops all."""
    ws, store, patch_ids = _unlabelled_scene(tmp_path / "ws")
    port = free_port()
    env = {**os.environ, "AL_LOOP_WORKSPACE": str(ws.root), "AL_LOOP_BACKEND_PORT": str(port)}
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    server = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--no-worker", "--processes", "2"], env=env,
                              stdout=subprocess.DEVNULL, stderr=log.open("w"))
    auth = (ws.config.backend.username, ws.config.backend.password)
    headers = {SECRET_HEADER: ws.config.backend.webhook_secret}

    def send(annotation_ids):
        def one(annotation_id):
            body = _event(patch_ids[annotation_id % len(patch_ids)], _brush(), annotation_id=annotation_id)
            with httpx.Client(auth=auth, headers=headers, timeout=30) as http:
                return http.post(f"{url}/webhook", content=json.dumps(body)).status_code
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(one, annotation_ids))

    try:
        wait_for(lambda: _answers(url) and len(_server_processes(server.pid)) == 2, 90, "two server processes")
        assert set(send(range(1, 25))) <= {200, 202}
        killed = min(_server_processes(server.pid))
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda: len(_server_processes(server.pid) - {killed}) == 2, 90, "the killed process started again")
        wait_for(lambda: _answers(url), 30, "the backend to answer")
        assert set(send(range(25, 37))) <= {200, 202}
        wait_for(lambda: len(_labels(store)) == 36, 60, "the 36 answered deliveries in the store")
        assert sorted(r[1] for r in _labels(store)) == sorted(f"label-studio:7:{k}" for k in range(1, 37))
        assert {r[2] for r in _labels(store)} == {1}  # one revision each: none was stored twice
        wait_for(lambda: not list((ws.root / "inbox").glob("*.json")), 30, "an empty inbox")
        children = _server_processes(server.pid)
    finally:
        server.send_signal(signal.SIGINT)
        code = server.wait(90)
    assert code == 0, log.read_text()[-3000:]
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)
    store.dispose()
