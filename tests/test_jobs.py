"""Retraining by label counts: thresholds, the job queue and atomic claims (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import threading

import numpy as np
import pytest
from sqlalchemy import select

from al_loop import jobs
from al_loop.classes import BACKGROUND, DEBRIS
from al_loop.ingest import ingest_hkh_tile, ingest_synthetic_scene
from al_loop.retrain import run_training
from al_loop.synthetic import make_scene
from al_loop.workspace import open_store
from db.models import Patch, TrainingJob
from db.queries import save_label
from tests.test_training import _small


@pytest.fixture
def ws_store(workspace, tmp_path):
    """A scene of 4 patches without labels."""
    ws = _small(workspace)
    store = open_store(ws)
    ingest_hkh_tile(ws, store, make_scene(tmp_path / "scene", height=256, seed=0).image, quiet=True)
    yield ws, store
    store.dispose()


def _annotate(store, n, debris_px=0):
    with store.session() as session:
        patches = session.scalars(select(Patch).order_by(Patch.id)).all()[:n]
        for k, patch in enumerate(patches):
            mask = np.full((patch.height, patch.width), BACKGROUND, np.uint8)
            mask.flat[:debris_px] = DEBRIS
            save_label(session, patch, mask, source="annotation", origin=f"test:{k}")


def _jobs(store):
    with store.session() as session:
        return [(j.status, j.trigger) for j in session.scalars(select(TrainingJob).order_by(TrainingJob.id))]


def test_label_count_and_debris_pixels_queue_one_job(ws_store):
    ws, store = ws_store
    ws.config.retraining.label_threshold, ws.config.retraining.debris_pixel_threshold = 3, 1000
    _annotate(store, 2)
    with store.session() as session:
        assert jobs.new_labels(session) == jobs.NewLabels(2, 0)
        assert jobs.queue_if_due(session, ws) is None
    _annotate(store, 3)  # patches 0-1 unchanged, one new
    with store.session() as session:
        assert jobs.queue_if_due(session, ws).trigger == "label_count"
        assert jobs.queue_if_due(session, ws) is None  # one queued is enough
    assert _jobs(store) == [("queued", "label_count")]


def test_many_debris_pixels_queue_a_job_before_the_label_count(ws_store):
    ws, store = ws_store
    ws.config.retraining.label_threshold, ws.config.retraining.debris_pixel_threshold = 10, 1000
    _annotate(store, 1, debris_px=1200)
    with store.session() as session:
        assert jobs.queue_if_due(session, ws).trigger == "debris_pixels"


def test_exactly_one_of_many_concurrent_workers_claims_a_job(ws_store):
    ws, store = ws_store
    with store.session() as session:
        job_id = jobs.queue_job(session, "manual").id
    stores = [open_store(ws) for _ in range(6)]
    barrier, claims = threading.Barrier(len(stores)), []

    def claim(own_store, k):
        barrier.wait()
        claims.append(jobs.claim_job(own_store, f"worker-{k}", stale_seconds=600))

    threads = [threading.Thread(target=claim, args=(s, k)) for k, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.dispose()
    assert sorted(claims, key=str) == [job_id] + [None] * 5
    # While it runs, a newly queued job waits: never two trainings at once.
    with store.session() as session:
        assert jobs.queue_job(session, "manual") is None
        session.add(TrainingJob(trigger="manual"))
    assert jobs.claim_job(store, "another", stale_seconds=600) is None


def test_a_silent_workers_job_is_taken_over(ws_store):
    ws, store = ws_store
    with store.session() as session:
        job_id = jobs.queue_job(session, "manual").id
    assert jobs.claim_job(store, "lost-worker", stale_seconds=600) == job_id
    with store.session() as session:
        session.get(TrainingJob, job_id).heartbeat_at = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    assert jobs.claim_job(store, "new-worker", stale_seconds=600) == job_id
    with store.session() as session:
        job = session.get(TrainingJob, job_id)
        assert job.claimed_by == "new-worker" and "lost-worker" in job.error


def test_a_job_that_cannot_train_is_marked_failed_and_the_worker_goes_on(ws_store):
    ws, store = ws_store  # no labels at all: nothing to train on
    with store.session() as session:
        jobs.queue_job(session, "manual")
    messages = []
    jobs.Worker(ws, store, log=messages.append).run(once=True)
    assert [status for status, _ in _jobs(store)] == ["failed"]
    assert messages and "training job failed" in messages[0]


def test_a_manual_training_waits_for_the_running_job(workspace):
    ws = _small(workspace)
    store = open_store(ws)
    try:
        ingest_synthetic_scene(ws, store, size=512, seed=0, quiet=True)
        with store.session() as session:
            job_id = jobs.queue_job(session, "label_count").id
        jobs.claim_job(store, "busy-worker", stale_seconds=600)
        with pytest.raises(LookupError, match=f"training job {job_id} is running \\(busy-worker\\)"):
            run_training(ws, store, quiet=True)
    finally:
        store.dispose()
