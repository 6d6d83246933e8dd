"""Training jobs: one state machine, and retraining by label counts.

The queue is the ``training_jobs`` table, so that any process (``al-loop serve``, ``al-loop
worker`` on a GPU machine, ``al-loop train``) can take part. Every change of a job's state goes
through this module:

    queued ──claim──> running ──finish──> done | failed
       │                │  ▲                     │
       │         cancel │  │ take over / resume  │ resume
       │                ▼  │                     ▼
       └──cancel──> cancelling ──stop──> cancelled ──resume──> running

* One claim (:func:`claim`), under the queue lock (PostgreSQL: an advisory transaction lock;
  SQLite: the database's single writer lock), for every way a job starts running: a worker taking
  the oldest queued job, ``al-loop train`` starting a new one, ``--resume N``, or a take-over.
* Never two trainings at once: a new job starts only while none is queued or running.
* Whoever runs a job beats its heartbeat (:class:`Heartbeat`, a thread, whatever the training
  does meanwhile). A running job is *stale*, and may be taken over or resumed, when its heartbeat
  is older than ``retraining.stale_seconds``, or at once when it was claimed on this host by a
  process that no longer exists. A runner whose job was taken over stops at its next beat.
* A job is queued when the accepted labels stored since the newest version was trained reach
  ``retraining.label_threshold``, or earlier when they hold ``debris_pixel_threshold`` debris
  pixels; counting against the newest version (not only the champion) means a rejected candidate
  does not re-queue itself forever.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from al_loop.config import Workspace
from db import queries, registry
from db.models import TrainingJob, utcnow
from db.session import Store

log = logging.getLogger(__name__)


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = (JobState.QUEUED, JobState.RUNNING, JobState.CANCELLING)
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.RUNNING, JobState.CANCELLING, JobState.DONE, JobState.FAILED,
                                 JobState.CANCELLED}),
    JobState.CANCELLING: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.DONE, JobState.FAILED}),
    JobState.FAILED: frozenset({JobState.RUNNING}),
    JobState.CANCELLED: frozenset({JobState.RUNNING}),
    JobState.DONE: frozenset(),
}


class JobError(LookupError):
    """A job cannot make the change asked of it; the message says why and what to do."""


class JobLost(RuntimeError):
    """The job was taken over by another runner: this one must stop."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def _move(job: TrainingJob, state: JobState) -> None:
    if state not in TRANSITIONS[JobState(job.status)]:
        raise JobError(f"training job {job.id} is {job.status}: it cannot become {state}")
    job.status = state.value


def _aware(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None:  # SQLite returns naive UTC datetimes
        return moment.replace(tzinfo=dt.UTC)
    return moment


def _process_gone(claimed_by: str | None) -> bool:
    """Whether ``claimed_by`` names a process on this host that no longer exists."""
    host, _, rest = (claimed_by or "").partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, run by someone else
        return False
    return False


def staleness(job: TrainingJob, stale_seconds: float) -> str | None:
    """Why a running job may be taken over (None: its runner is alive)."""
    if job.status not in (JobState.RUNNING, JobState.CANCELLING):
        return None
    if _process_gone(job.claimed_by):
        return f"its process {job.claimed_by} is gone"
    beat = _aware(job.heartbeat_at or job.claimed_at or job.created_at)
    silent = (utcnow() - beat).total_seconds()
    if silent >= stale_seconds:
        return f"{job.claimed_by} silent since {beat.isoformat()}"
    return None


def active_job(session: Session) -> TrainingJob | None:
    return queries.first_job_in(session, [s.value for s in ACTIVE])


def _job(session: Session, job_id: int) -> TrainingJob:
    job = session.get(TrainingJob, job_id)
    if job is None:
        raise JobError(f"no training job {job_id}")
    return job


def _running(session: Session) -> TrainingJob | None:
    return queries.first_job_in(session, (JobState.RUNNING.value, JobState.CANCELLING.value))


def queue_job(session: Session, trigger: str) -> TrainingJob | None:
    """Queue a fine-tuning of the champion (a first model without one) unless a job is
    already queued or running; returns the new job, or None."""
    queries.lock_job_queue(session)
    if active_job(session) is not None:
        return None
    champion = registry.champion(session)
    job = TrainingJob(trigger=trigger, status=JobState.QUEUED.value, parent_model_id=champion.id if champion else None,
                      progress={"parent": champion.name if champion else None})
    session.add(job)
    session.flush()
    return job


@dataclass
class Claimed:
    """A job this runner now holds, and what it needs to run it."""

    id: int
    trigger: str
    parent: str | None
    normalization: dict[str, Any] | None  # a resumed job normalises as it started
    resumed: bool


def claim(store: Store, worker: str, stale_seconds: float, *, job_id: int | None = None, new: dict | None = None
          ) -> Claimed | None:
    """The one way a job starts running, under the queue lock.

    * ``new`` (trigger, parent, normalization): start a new job now (``al-loop train``); refused,
      naming the job, while another is queued or running.
    * ``job_id``: resume that job (cancelled, failed, or running but stale); refused otherwise.
    * neither: take the oldest queued job, or a stale running one (a worker); None when there is
      nothing to do or another runner is alive.
    """
    with store.session() as session:
        queries.lock_job_queue(session)
        running = _running(session)
        if new is not None:
            busy = running or active_job(session)
            if busy is not None:
                raise JobError(f"training job {busy.id} is {busy.status}"
                               + (f" ({busy.claimed_by})" if busy.claimed_by else "")
                               + f": wait for it, stop it with --cancel {busy.id}, or, if its process died, "
                               f"--resume {busy.id}")
            job = TrainingJob(trigger=new["trigger"], status=JobState.QUEUED.value, parent_model_id=new["parent_id"],
                              progress={"parent": new["parent"], "normalization": new["normalization"]})
            session.add(job)
            session.flush()
        elif job_id is not None:
            job = _job(session, job_id)
            if job.status in (JobState.RUNNING, JobState.CANCELLING):
                why = staleness(job, stale_seconds)
                if why is None:
                    raise JobError(f"training job {job_id} is running ({job.claimed_by}, alive): it cannot be "
                                   f"resumed; stop it with --cancel {job_id}")
                job.error = f"taken over: {why}"
            elif job.status not in (JobState.CANCELLED, JobState.FAILED):
                raise JobError(f"training job {job_id} is {job.status}: only a cancelled, failed or "
                               "interrupted job can be resumed")
            elif running is not None and running.id != job_id:
                raise JobError(f"training job {running.id} is running ({running.claimed_by}): resume {job_id} after it")
        else:
            if running is not None:
                why = staleness(running, stale_seconds)
                if why is None:
                    return None
                job = running
                job.error = f"taken over: {why}"
            else:
                queued = queries.first_job_in(session, [JobState.QUEUED.value])
                if queued is None:
                    return None
                job = queued
        resumed = job.status != JobState.QUEUED
        _move(job, JobState.RUNNING)
        job.claimed_by, job.claimed_at, job.heartbeat_at = worker, utcnow(), utcnow()
        if not job.error or not job.error.startswith("taken over"):
            job.error = None
        session.flush()
        return Claimed(job.id, job.trigger, job.progress.get("parent"), job.progress.get("normalization"), resumed)


def record_normalization(store: Store, job_id: int, normalization: dict[str, Any]) -> None:
    """Keep the normalisation a job started with, so a resumed run uses it again."""
    with store.session() as session:
        job = _job(session, job_id)
        job.progress = {**job.progress, "normalization": normalization}


def beat(store: Store, job_id: int, worker: str) -> bool:
    """Record that ``worker`` still runs the job; True when it was asked to stop. JobLost when
    another runner has taken it over."""
    with store.session() as session:
        job = _job(session, job_id)
        if job.claimed_by != worker or job.status not in (JobState.RUNNING.value, JobState.CANCELLING.value):
            raise JobLost(f"training job {job_id} is now {job.status}, held by {job.claimed_by}")
        job.heartbeat_at = utcnow()
        return job.status == JobState.CANCELLING


def request_cancel(store: Store, job_id: int) -> None:
    """Ask a job to stop: a running one after its current epoch, a queued one at once."""
    with store.session() as session:
        queries.lock_job_queue(session)
        job = session.get(TrainingJob, job_id)
        if job is None or job.status not in (JobState.RUNNING, JobState.QUEUED):
            raise JobError(f"no running or queued training job {job_id}")
        if job.status == JobState.QUEUED:
            _move(job, JobState.CANCELLED)
            job.finished_at = utcnow()
        else:
            _move(job, JobState.CANCELLING)


def finish(store: Store, job_id: int, worker: str, state: JobState, *, error: str | None = None,
           result_model_id: int | None = None, progress: dict[str, Any] | None = None,
           session: Session | None = None) -> None:
    """End a run: done (with its model), failed or cancelled. Inside ``session`` when given, so
    that a version and its job's end commit together."""
    def apply(s: Session) -> None:
        job = _job(s, job_id)
        if job.claimed_by != worker:
            raise JobLost(f"training job {job_id} was taken over by {job.claimed_by}: its result is not recorded")
        _move(job, state)
        job.error, job.finished_at = error, utcnow()
        if result_model_id is not None:
            job.result_model_id = result_model_id
        if progress:
            job.progress = {**job.progress, **progress}

    if session is not None:
        apply(session)
    else:
        with store.session() as own:
            apply(own)


class Heartbeat:
    """Beats a job's heartbeat from a thread while its runner trains, every ``interval``
    seconds; :meth:`should_stop` says when the job was cancelled or taken over."""

    def __init__(self, store: Store, job_id: int, worker: str, interval: float) -> None:
        self.store, self.job_id, self.worker, self.interval = store, job_id, worker, interval
        self.cancelled = threading.Event()
        self.lost: JobLost | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()

    def check(self) -> None:
        try:
            if beat(self.store, self.job_id, self.worker):
                self.cancelled.set()
        except JobLost as exc:
            self.lost = exc
        except Exception:  # the store is unreachable for a moment: beat again later
            log.warning("heartbeat of training job %s failed", self.job_id, exc_info=True)

    def should_stop(self) -> bool:
        """Checked by the training loop after every epoch (beats then too)."""
        self.check()
        if self.lost is not None:
            raise self.lost
        return self.cancelled.is_set()


# --- retraining by label counts -----------------------------------------------------------------


@dataclass
class NewLabels:
    labels: int
    debris_pixels: int


def new_labels(session: Session) -> NewLabels:
    """Accepted labels stored after the newest trained version read its training data (its
    ``label_watermark``: validation labels it read but did not train on are not new)."""
    newest = queries.newest_version(session)
    return NewLabels(*queries.accepted_labels_after(session, newest.config.get("label_watermark", 0) if newest else 0))


def queue_if_due(session: Session, workspace: Workspace) -> TrainingJob | None:
    """Queue a job when the new labels cross a threshold (see the module docstring)."""
    cfg = workspace.config.retraining
    fresh = new_labels(session)
    if cfg.label_threshold > 0 and fresh.labels >= cfg.label_threshold:
        return queue_job(session, "label_count")
    if cfg.debris_pixel_threshold > 0 and fresh.labels and fresh.debris_pixels >= cfg.debris_pixel_threshold:
        return queue_job(session, "debris_pixels")
    return None


class Worker:
    """Runs queued training jobs one after the other until :meth:`stop`; ``on_trained`` gets
    each report (the backend swaps models and refreshes predictions from it)."""

    def __init__(self, workspace: Workspace, store: Store, on_trained: Callable[[Any], None] | None = None) -> None:
        self.workspace, self.store, self.on_trained = workspace, store, on_trained
        self.wake = threading.Event()
        self._stop = threading.Event()
        self.name = worker_name()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()

    def run_next(self) -> Any:
        """Claim and run one job; None when there was none to claim (or it was cancelled)."""
        from al_loop.model.training import TrainingCancelled
        from al_loop.training_run import run_training

        claimed = claim(self.store, self.name, self.workspace.config.retraining.stale_seconds)
        if claimed is None:
            return None
        try:
            return run_training(self.workspace, self.store, claimed=claimed, worker=self.name, quiet=True)
        except (TrainingCancelled, JobLost) as exc:
            log.info("training job %s stopped: %s", claimed.id, exc)
            return None

    def run(self, once: bool = False) -> None:
        while not self._stop.is_set():
            try:
                report = self.run_next()
            except Exception:  # a failed job is recorded as failed; the worker goes on
                log.exception("training job failed")
                report = None
            if report is not None:
                log.info("job %s: version %s %s", report.job_id, report.version, report.gate)
                if self.on_trained is not None:
                    try:
                        self.on_trained(report)
                    except Exception:  # the model is trained and registered; only follow-ups failed
                        log.exception("after job %s", report.job_id)
                continue
            if once:
                return
            self.wake.wait(self.workspace.config.retraining.poll_seconds)
            self.wake.clear()
