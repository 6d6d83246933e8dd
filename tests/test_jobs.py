"""Retraining by label counts: thresholds, the job queue and atomic claims (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import threading
import time

import numpy as np
import pytest
from sqlalchemy import select

from al_loop import jobs
from al_loop.classes import BACKGROUND, DEBRIS
from al_loop.ingest import ingest_hkh_tile, ingest_synthetic_scene
from al_loop.synthetic import make_scene
from al_loop.training_run import run_training
from al_loop.workspace import open_store
from db.models import ModelVersion, Patch, TrainingJob
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


def _claim(store, worker, **kwargs):
    claimed = jobs.claim(store, worker, stale_seconds=kwargs.pop("stale_seconds", 600), **kwargs)
    return None if claimed is None else claimed.id


def test_exactly_one_of_many_concurrent_workers_claims_a_job(ws_store):
    ws, store = ws_store
    with store.session() as session:
        job_id = jobs.queue_job(session, "manual").id
    stores = [open_store(ws) for _ in range(6)]
    barrier, claims = threading.Barrier(len(stores)), []

    def claim(own_store, k):
        barrier.wait()
        claims.append(_claim(own_store, f"worker-{k}"))

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
    assert _claim(store, "another") is None


def test_a_silent_workers_job_is_taken_over_and_the_old_runner_stops(ws_store):
    ws, store = ws_store
    with store.session() as session:
        job_id = jobs.queue_job(session, "manual").id
    assert _claim(store, "otherhost:1:1") == job_id
    with store.session() as session:
        session.get(TrainingJob, job_id).heartbeat_at = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    assert _claim(store, "otherhost:2:1") == job_id
    with store.session() as session:
        job = session.get(TrainingJob, job_id)
        assert job.claimed_by == "otherhost:2:1" and "taken over: otherhost:1:1 silent" in job.error
    with pytest.raises(jobs.JobLost, match="held by otherhost:2:1"):
        jobs.beat(store, job_id, "otherhost:1:1")  # the first runner learns it at its next beat
    with pytest.raises(jobs.JobLost):
        jobs.finish(store, job_id, "otherhost:1:1", jobs.JobState.DONE)  # and records nothing


def test_a_job_whose_process_is_gone_is_taken_over_at_once(ws_store):
    import subprocess
    import sys

    ws, store = ws_store
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = f"{jobs.socket.gethostname()}:{int(gone.stdout)}:1"
    with store.session() as session:
        job_id = jobs.queue_job(session, "manual").id
    assert _claim(store, dead) == job_id  # its heartbeat is fresh, but its process has exited
    assert _claim(store, "me:1:1", stale_seconds=3600) == job_id
    with store.session() as session:
        assert f"its process {dead} is gone" in session.get(TrainingJob, job_id).error


def test_resume_goes_through_the_claim_and_refuses_a_live_job(ws_store):
    ws, store = ws_store
    with store.session() as session:
        job_id = jobs.queue_job(session, "manual").id
    live = jobs.worker_name()  # this very process: alive
    assert _claim(store, live) == job_id
    with pytest.raises(jobs.JobError, match=f"training job {job_id} is running .*alive.*--cancel {job_id}"):
        _claim(store, "me:2:2", job_id=job_id)
    jobs.request_cancel(store, job_id)
    jobs.finish(store, job_id, live, jobs.JobState.CANCELLED)
    assert _claim(store, "me:2:2", job_id=job_id) == job_id  # a cancelled job resumes
    with store.session() as session:
        assert session.get(TrainingJob, job_id).status == "running"
    with pytest.raises(jobs.JobError, match="no training job 99"):
        _claim(store, "me:3:3", job_id=99)
    for missing in (lambda: jobs.beat(store, 99, live), lambda: jobs.record_normalization(store, 99, {}),
                    lambda: jobs.finish(store, 99, live, jobs.JobState.FAILED)):
        with pytest.raises(jobs.JobError, match="no training job 99"):  # not None's AttributeError
            missing()


def test_every_transition_follows_the_state_machine(ws_store):
    ws, store = ws_store
    with store.session() as session:
        job_id = jobs.queue_job(session, "manual").id
    jobs.request_cancel(store, job_id)  # a queued job is cancelled at once
    with store.session() as session:
        assert session.get(TrainingJob, job_id).status == "cancelled"
    claimed = jobs.claim(store, "w:1:1", 600, job_id=job_id)
    jobs.finish(store, job_id, "w:1:1", jobs.JobState.DONE)
    with pytest.raises(jobs.JobError, match="is done: only a cancelled, failed or interrupted job can be resumed"):
        jobs.claim(store, "w:1:1", 600, job_id=job_id)
    assert claimed.resumed
    with store.session() as session:  # no path leads out of done
        with pytest.raises(jobs.JobError, match="is done: it cannot become failed"):
            jobs._move(session.get(TrainingJob, job_id), jobs.JobState.FAILED)


def test_a_job_that_cannot_train_is_marked_failed_and_the_worker_goes_on(ws_store, caplog):
    ws, store = ws_store  # no labels at all: nothing to train on
    with store.session() as session:
        jobs.queue_job(session, "manual")
    with caplog.at_level("ERROR", logger="al_loop.jobs"):
        jobs.Worker(ws, store).run(once=True)
    assert [status for status, _ in _jobs(store)] == ["failed"]
    failed = [r for r in caplog.records if "training job failed" in r.getMessage()]
    assert failed and failed[0].exc_info is not None  # the traceback is kept


def test_a_manual_training_waits_for_the_running_job(workspace):
    ws = _small(workspace)
    store = open_store(ws)
    try:
        ingest_synthetic_scene(ws, store, size=512, seed=0, quiet=True)
        with store.session() as session:
            job_id = jobs.queue_job(session, "label_count").id
        _claim(store, "busy-worker:1:1")
        with pytest.raises(LookupError, match=f"training job {job_id} is running \\(busy-worker:1:1\\)"):
            run_training(ws, store, quiet=True)
    finally:
        store.dispose()


def test_a_live_cli_training_beats_its_heartbeat_and_is_never_taken_over(workspace):
    """`al-loop train` runs in one thread while a worker keeps trying to claim: with a stale
    limit shorter than the training, the heartbeat keeps the job the CLI's, and it registers
    exactly one version."""
    ws = _small(workspace)
    ws.config.training.max_epochs = 8
    stale = ws.config.retraining.stale_seconds = 2.0  # heartbeats every 0.5 s
    store = open_store(ws)
    try:
        ingest_synthetic_scene(ws, store, size=512, seed=0, quiet=True)
        reports, failures = [], []

        def cli_train():
            try:
                reports.append(run_training(ws, store, quiet=True))
            except BaseException as exc:  # the loop below must end whatever happens to the training
                failures.append(exc)

        began = time.monotonic()
        trainer = threading.Thread(target=cli_train)
        trainer.start()
        worker = jobs.Worker(ws, store)
        taken = []
        while trainer.is_alive():
            taken.append(jobs.claim(store, worker.name + ":other", stale))
            trainer.join(0.3)
        trained_s = time.monotonic() - began
        assert not failures and not any(taken), (failures, taken)
        assert reports and trained_s > stale, trained_s  # the training outlived the stale limit
        with store.session() as session:
            assert [(j.status, j.result_model_id is not None) for j in session.scalars(select(TrainingJob))] == [
                ("done", True)
            ]
            assert len(session.scalars(select(ModelVersion)).all()) == 1
    finally:
        store.dispose()
