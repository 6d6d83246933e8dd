"""Writing webhook deliveries to the store: group commit, follow-ups in the background.

Label Studio waits (up to 1 s, blocking the annotator's save) for a webhook answer and never
retries one. A webhook request checks the annotation (bad input is answered with a 4xx at once
and stored nowhere) and hands it to this writer; one thread writes everything that has queued up
in one transaction (many annotations per commit under load) and only then releases the waiting
requests, so an answered delivery is in the store. Only when the writer falls 0.8 s behind (an
overload) is a delivery answered 202 while still queued; should the process die before writing
it, the sync that ``al-loop serve`` runs on start recovers it from Label Studio. What labels set off
(closing rounds, queueing a training job, the training itself) runs after the answer.
One writer per process serialises deliveries of the same annotation; the unique revision
constraint catches the rare race with another process (``al-loop sync``), retried one by one.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from al_loop import jobs
from al_loop.config import Workspace
from backends import annotations
from backends.annotations import Annotation
from db import queries
from db.models import Round, RoundPatch
from db.session import Store

MAX_BATCH = 256
FOLLOW_UP_EVERY_S = 1.0


@dataclass(frozen=True)
class Retire:
    project: int
    annotation_ids: tuple[int, ...]


Item = Annotation | Retire


def write(session: Session, item: Item) -> Counter:
    """Apply one delivery; the outcome counts (created, revised, unchanged, retired, ...)."""
    if isinstance(item, Retire):
        return Counter(retired=annotations.retire(session, item.project, list(item.annotation_ids)))
    return Counter([annotations.apply(session, item)])


def close_finished_rounds(session: Session) -> list[int]:
    """Close open rounds whose every patch has an accepted label; their numbers."""
    unlabeled = (
        select(RoundPatch.round_id)
        .where(RoundPatch.patch_id.not_in(queries.labelled_patch_ids()))
        .distinct()
    )
    finished = session.scalars(select(Round).where(Round.status == "open", Round.id.not_in(unlabeled))).all()
    for round_ in finished:
        round_.status = "closed"
    return [r.number for r in finished]


def after_labels(session: Session, workspace: Workspace) -> tuple[list[int], int | None]:
    """What new labels set off: rounds closed, a training job queued (its id)."""
    closed = close_finished_rounds(session)
    job = jobs.queue_if_due(session, workspace)
    return closed, job.id if job else None


class LabelWriter:
    """The queue and the thread that writes it (see the module docstring)."""

    def __init__(self, workspace: Workspace, store: Store, on_job_queued: Callable[[int], None] | None = None,
                 log: Callable[[str], None] = print) -> None:
        self.workspace, self.store, self.on_job_queued, self.log = workspace, store, on_job_queued, log
        self.outcomes: Counter = Counter()
        self._queue: queue.Queue[tuple[Item, Future] | None] = queue.Queue()
        self._followed_at = 0.0
        self._thread = threading.Thread(target=self._run, name="label-writer", daemon=True)

    def start(self) -> LabelWriter:
        self._thread.start()
        return self

    def put(self, item: Item) -> Future:
        """Queue ``item``; the future resolves to its outcome counts once committed (or to the
        database error that kept it out)."""
        future: Future = Future()
        self._queue.put((item, future))
        return future

    def join(self) -> None:
        """Wait until everything queued so far is written and followed up."""
        self._queue.join()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            work = [entry for entry in batch if entry is not None]
            try:
                if work:
                    self._write(work)
                    # Under load, follow up at most once a second (its queries cost as much as
                    # several writes); always once the queue is drained.
                    if self._queue.empty() or time.monotonic() - self._followed_at >= FOLLOW_UP_EVERY_S:
                        self._follow_up()
            except Exception as exc:  # the store is down: requests got the error; keep serving
                self.log(f"label writer: {exc}")
            finally:
                for _ in batch:
                    self._queue.task_done()
            if len(work) < len(batch):
                return

    def _write(self, work: list[tuple[Item, Future]]) -> None:
        try:
            with self.store.session() as session:
                results = [write(session, item) for item, _ in work]
        except (IntegrityError, OperationalError):
            # Another process wrote one of these annotations meanwhile: redo them one at a time.
            for item, future in work:
                self._write_one(item, future)
            return
        except Exception as exc:
            for _, future in work:
                future.set_exception(exc)
            raise
        for (_, future), outcome in zip(work, results):
            self.outcomes += outcome
            future.set_result(outcome)

    def _write_one(self, item: Item, future: Future, attempts: int = 3) -> None:
        for attempt in range(attempts):
            try:
                with self.store.session() as session:
                    outcome = write(session, item)
            except (IntegrityError, OperationalError) as exc:
                if attempt == attempts - 1:
                    future.set_exception(exc)
                continue
            self.outcomes += outcome
            future.set_result(outcome)
            return

    def _follow_up(self) -> None:
        self._followed_at = time.monotonic()
        with self.store.session() as session:
            closed, job_id = after_labels(session, self.workspace)
        if closed:
            self.log(f"round(s) {', '.join(map(str, closed))} fully labelled: closed")
        if job_id is not None:
            self.log(f"training job {job_id} queued ({dict(self.outcomes)})")
            if self.on_job_queued:
                self.on_job_queued(job_id)
