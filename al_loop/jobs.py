"""Retraining by label counts: when to queue a fine-tuning job, and workers that run them.

The queue is the ``training_jobs`` table, so that any process (``al-loop serve``, ``al-loop
worker`` on a GPU machine, several of them) can take part. Rules:

* A job is queued when the accepted labels stored since the newest version was trained reach
  ``retraining.label_threshold``, or earlier when they hold ``debris_pixel_threshold`` debris
  pixels. Counting against the newest version (not only the champion) means a rejected
  candidate does not re-queue itself forever: new labels are needed first.
* At most one job is queued or running at a time, so there are never two trainings at once.
* Claiming is atomic: on PostgreSQL under a transaction-scoped advisory lock, on SQLite under
  the database's single writer lock (``BEGIN IMMEDIATE``).
* A running job whose worker stopped reporting for ``stale_seconds`` is taken over and resumed
  from its last epoch checkpoint.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from al_loop.config import Workspace
from al_loop.model.training import TrainingCancelled
from al_loop.retrain import TrainingReport, run_training
from db import queries, registry
from db.models import Label, ModelVersion, TrainingJob, utcnow
from db.session import Store

ACTIVE = ("queued", "running", "cancelling")


@dataclass
class NewLabels:
    labels: int
    debris_pixels: int


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def new_labels(session: Session) -> NewLabels:
    """Accepted labels stored after the newest trained version read its training data (its
    ``label_watermark``: validation labels it read but did not train on are not new)."""
    newest = session.scalar(select(ModelVersion).order_by(ModelVersion.id.desc()).limit(1))
    query = select(func.count(Label.id), func.coalesce(func.sum(Label.n_debris), 0)).where(Label.status == "accepted")
    if newest is not None:
        query = query.where(Label.id > newest.config.get("label_watermark", 0))
    count, debris = session.execute(query).one()
    return NewLabels(int(count), int(debris))


def active_job(session: Session) -> TrainingJob | None:
    return session.scalar(select(TrainingJob).where(TrainingJob.status.in_(ACTIVE)).limit(1))


def queue_job(session: Session, trigger: str) -> TrainingJob | None:
    """Queue a fine-tuning of the champion (a first model without one) unless a job is
    already queued or running; returns the new job, or None."""
    queries.lock_job_queue(session)
    if active_job(session) is not None:
        return None
    champion = registry.champion(session)
    job = TrainingJob(trigger=trigger, parent_model_id=champion.id if champion else None,
                      progress={"parent": champion.name if champion else None})
    session.add(job)
    session.flush()
    return job


def queue_if_due(session: Session, workspace: Workspace) -> TrainingJob | None:
    """Queue a job when the new labels cross a threshold (see the module docstring)."""
    cfg = workspace.config.retraining
    fresh = new_labels(session)
    if cfg.label_threshold > 0 and fresh.labels >= cfg.label_threshold:
        return queue_job(session, "label_count")
    if cfg.debris_pixel_threshold > 0 and fresh.labels and fresh.debris_pixels >= cfg.debris_pixel_threshold:
        return queue_job(session, "debris_pixels")
    return None


def claim_job(store: Store, worker: str, stale_seconds: float) -> int | None:
    """Take the oldest queued job (or a stale running one) for ``worker``; None when there is
    nothing to do or another worker's job is running."""
    with store.session() as session:
        queries.lock_job_queue(session)
        running = session.scalar(select(TrainingJob).where(TrainingJob.status.in_(("running", "cancelling"))))
        if running is not None:
            beat = running.heartbeat_at or running.claimed_at or running.created_at
            if beat.tzinfo is None:  # SQLite returns naive UTC datetimes
                beat = beat.replace(tzinfo=dt.timezone.utc)
            if (utcnow() - beat).total_seconds() < stale_seconds:
                return None
            job = running
            job.error = f"taken over from {job.claimed_by}, silent since {beat.isoformat()}"
        else:
            job = session.scalar(
                select(TrainingJob).where(TrainingJob.status == "queued").order_by(TrainingJob.id).limit(1)
            )
            if job is None:
                return None
        job.status, job.claimed_by = "running", worker
        job.claimed_at = job.heartbeat_at = utcnow()
        return job.id


def _heartbeat(store: Store, job_id: int) -> bool:
    """Record that the job's worker is alive; True when the job was asked to stop."""
    with store.session() as session:
        job = session.get(TrainingJob, job_id)
        job.heartbeat_at = utcnow()
        return job.status == "cancelling"


def run_next_job(workspace: Workspace, store: Store, worker: str, quiet: bool = True) -> TrainingReport | None:
    """Claim and run one job; None when there was none to claim."""
    job_id = claim_job(store, worker, workspace.config.retraining.stale_seconds)
    if job_id is None:
        return None
    try:
        return run_training(workspace, store, job_id=job_id, should_stop=lambda: _heartbeat(store, job_id), quiet=quiet)
    except TrainingCancelled:
        return None
    except Exception as exc:  # also problems found before training started, e.g. too few labels
        with store.session() as session:
            job = session.get(TrainingJob, job_id)
            if job.status == "running":
                job.status, job.error, job.finished_at = "failed", str(exc), utcnow()
        raise


class Worker:
    """Runs queued training jobs one after the other until :meth:`stop`; ``on_trained`` gets
    each report (the backend swaps models and refreshes predictions from it)."""

    def __init__(self, workspace: Workspace, store: Store, on_trained: Callable[[TrainingReport], None] | None = None,
                 log: Callable[[str], None] = print) -> None:
        self.workspace, self.store, self.on_trained, self.log = workspace, store, on_trained, log
        self.wake = threading.Event()
        self._stop = threading.Event()
        self.name = worker_name()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()

    def run(self, once: bool = False) -> None:
        while not self._stop.is_set():
            try:
                report = run_next_job(self.workspace, self.store, self.name)
            except Exception as exc:  # a failed job is recorded as failed; the worker goes on
                self.log(f"training job failed: {exc}")
                report = None
            if report is not None:
                self.log(f"job {report.job_id}: version {report.version} {report.gate}")
                if self.on_trained is not None:
                    try:
                        self.on_trained(report)
                    except Exception as exc:  # the model is trained and registered; only follow-ups failed
                        self.log(f"after job {report.job_id}: {exc}")
                continue
            if once:
                return
            self.wake.wait(self.workspace.config.retraining.poll_seconds)
            self.wake.clear()
