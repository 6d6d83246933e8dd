"""Writing webhook deliveries to the store in the background.

Label Studio waits (up to 1 s, blocking the annotator's save) for a webhook answer and never
retries one. So a webhook request only checks the annotation (bad input is answered with a
4xx at once and stored nowhere) and puts it on this writer's queue; one thread writes what
has queued up in one transaction (many annotations per commit under load), then checks the
retraining thresholds. One writer per process serialises deliveries of the same annotation,
the unique revision constraint the rare race with another process (``al-loop sync``), which is
retried. An annotation accepted here but not yet written when the process dies is recovered by
the sync that ``al-loop serve`` runs on start.
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Callable
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
    """A queue and the thread that writes it (see the module docstring)."""

    def __init__(self, workspace: Workspace, store: Store, on_job_queued: Callable[[int], None] | None = None,
                 log: Callable[[str], None] = print) -> None:
        self.workspace, self.store, self.on_job_queued, self.log = workspace, store, on_job_queued, log
        self.outcomes: Counter = Counter()
        self._queue: queue.Queue[Item | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="label-writer", daemon=True)

    def start(self) -> LabelWriter:
        self._thread.start()
        return self

    def put(self, item: Item) -> None:
        self._queue.put(item)

    def join(self) -> None:
        """Wait until everything queued so far is written."""
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
            items = [item for item in batch if item is not None]
            try:
                if items:
                    self._write(items)
            finally:
                for _ in batch:
                    self._queue.task_done()
            if len(items) < len(batch):
                return

    def _write(self, items: list[Item]) -> None:
        try:
            with self.store.session() as session:
                outcomes = sum((write(session, item) for item in items), Counter())
                closed, job_id = after_labels(session, self.workspace)
        except (IntegrityError, OperationalError):
            # Another process wrote one of these annotations meanwhile: redo them one at a time.
            outcomes, closed, job_id = Counter(), [], None
            for item in items:
                outcomes += self._write_one(item)
            with self.store.session() as session:
                closed, job_id = after_labels(session, self.workspace)
        self.outcomes += outcomes
        if closed:
            self.log(f"round(s) {', '.join(map(str, closed))} fully labelled: closed")
        if job_id is not None:
            self.log(f"training job {job_id} queued ({self.outcomes})")
            if self.on_job_queued:
                self.on_job_queued(job_id)

    def _write_one(self, item: Item, attempts: int = 3) -> Counter:
        for attempt in range(attempts):
            try:
                with self.store.session() as session:
                    return write(session, item)
            except (IntegrityError, OperationalError) as exc:
                if attempt == attempts - 1:
                    what = f"annotation {item.annotation_id}" if isinstance(item, Annotation) else f"deletion of {item.annotation_ids}"
                    self.log(f"could not store the {what}: {exc}; `al-loop sync` will recover it")
        return Counter(failed=1)

