"""Writing webhook deliveries to the store: group commit, follow-ups in the background.

Label Studio waits (up to 1 s, blocking the annotator's save) for a webhook answer and never
retries one. A webhook request checks the annotation (bad input is answered with a 4xx at once
and stored nowhere), makes it durable in the :class:`~backends.inbox.Inbox` and hands it to this
writer; one thread writes everything that has queued up in one transaction (many annotations per
commit under load) and then releases the waiting requests. When the writer falls 0.8 s behind
(an overload, or another process holding SQLite's write lock) a delivery is answered 202: it is
on disk, and written as soon as the store takes it, or replayed after a crash. A delivery that
fails on its own (its patch was deleted meanwhile, ...) is written alone so that it never sinks
the others of its group, and set aside with its reason; while the store is unreachable the
deliveries stay in the inbox and are tried again. What labels set off (closing rounds, queueing a
training job, the training itself) runs after the answer. One writer per process serialises
deliveries of the same annotation; the unique revision constraint catches the rare race with
another process (``al-loop sync``, another server process), retried one by one.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from al_loop import jobs
from al_loop.config import Workspace
from al_loop.rounds import close_finished_rounds
from backends import accepted_labels
from backends.inbox import Inbox, Item, Retire, describe
from db.session import Store

log = logging.getLogger(__name__)

MAX_BATCH = 256
FOLLOW_UP_EVERY_S = 1.0
RETRY_EVERY_S = 10.0  # how often deliveries left in the inbox (the store was unreachable) are tried again


@dataclass
class _Work:
    item: Item
    future: Future
    path: Path | None  # its inbox file


def write(session: Session, item: Item) -> Counter:
    """Apply one delivery; the outcome counts (created, revised, unchanged, retired, ...)."""
    return write_all(session, [item])[0]


def write_all(session: Session, items: list[Item]) -> list[Counter]:
    """Apply deliveries in order, what they need from the store read for all at once."""
    known = accepted_labels.Known.read(session, [item for item in items if not isinstance(item, Retire)])
    outcomes = []
    for item in items:
        if isinstance(item, Retire):
            outcomes.append(Counter(retired=accepted_labels.retire(session, item.project, list(item.annotation_ids),
                                                               known)))
        else:
            outcomes.append(Counter([accepted_labels.apply(session, item, known)]))
    return outcomes


def after_labels(session: Session, workspace: Workspace) -> tuple[list[int], int | None]:
    """What new labels set off: rounds closed, a training job queued (its id)."""
    closed = close_finished_rounds(session)
    job = jobs.queue_if_due(session, workspace)
    return closed, job.id if job else None


class LabelWriter:
    """The queue and the thread that writes it (see the module docstring)."""

    def __init__(self, workspace: Workspace, store: Store, inbox: Inbox | None = None,
                 on_job_queued: Callable[[int], None] | None = None,
                 on_written: Callable[[], None] | None = None) -> None:
        self.workspace, self.store, self.inbox = workspace, store, inbox
        self.on_job_queued, self.on_written = on_job_queued, on_written
        self.outcomes: Counter = Counter()
        self._queue: queue.Queue[_Work | None] = queue.Queue()
        self._followed_at = self._retried_at = 0.0
        self._in_flight: set[Path] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="label-writer", daemon=True)

    def start(self) -> LabelWriter:
        """Start writing; deliveries left in the inbox (a crash, an unreachable store) go first."""
        self._replay(older_than_s=0.0)
        self._thread.start()
        return self

    def put(self, item: Item, path: Path | None = None) -> Future:
        """Queue ``item`` (made durable at ``path``); the future resolves to its outcome counts
        once committed, or to the error that kept it out."""
        future: Future = Future()
        if path is not None:
            with self._lock:
                self._in_flight.add(path)
        self._queue.put(_Work(item, future, path))
        return future

    def join(self) -> None:
        """Wait until everything queued so far is written and followed up."""
        self._queue.join()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _replay(self, older_than_s: float = RETRY_EVERY_S) -> None:
        """Queue the inbox's deliveries this writer does not hold. Past the start only those
        older than ``older_than_s``: a younger one may be another server process's."""
        if self.inbox is None:
            return
        with self._lock:
            in_flight = set(self._in_flight)
        for path, item in self.inbox.pending(older_than_s):
            if path in in_flight:
                continue
            if item is None:
                self.inbox.set_aside(path, "the file cannot be read")
                continue
            self.put(item, path)

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=RETRY_EVERY_S)
            except queue.Empty:
                self._replay()
                continue
            batch = [first]
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
                    if time.monotonic() - self._retried_at >= RETRY_EVERY_S and self._queue.empty():
                        self._retried_at = time.monotonic()
                        self._replay()
            except Exception:  # the store is down: requests got the error; keep serving
                log.exception("label writer")
            finally:
                for _ in batch:
                    self._queue.task_done()
            if len(work) < len(batch):
                return

    def _write(self, work: list[_Work]) -> None:
        try:
            with self.store.session() as session:
                results = write_all(session, [w.item for w in work])
        except Exception:  # one delivery may sink the group: write them one at a time
            for w in work:
                self._write_one(w)
            return
        for w, outcome in zip(work, results, strict=True):
            self._done(w, outcome)

    def _write_one(self, w: _Work, attempts: int = 3) -> None:
        for attempt in range(attempts):
            try:
                with self.store.session() as session:
                    outcome = write(session, w.item)
            except IntegrityError as exc:  # another process wrote the same annotation meanwhile
                if attempt == attempts - 1:
                    self._failed(w, exc, permanent=True)
                continue
            except (OperationalError, DBAPIError) as exc:  # the store is unreachable or locked: retried later
                self._failed(w, exc, permanent=False)
                return
            except Exception as exc:  # this delivery cannot be stored, ever: set it aside
                self._failed(w, exc, permanent=True)
                return
            self._done(w, outcome)
            return

    def _done(self, w: _Work, outcome: Counter) -> None:
        self.outcomes += outcome
        if w.path is not None and self.inbox is not None:
            self.inbox.done(w.path)
            with self._lock:
                self._in_flight.discard(w.path)
        w.future.set_result(outcome)

    def _failed(self, w: _Work, exc: Exception, permanent: bool) -> None:
        log.error("%s not stored%s", describe(w.item), "" if permanent else " yet (it stays in the inbox)",
                  exc_info=exc)
        if w.path is not None and self.inbox is not None:
            if permanent:
                self.inbox.set_aside(w.path, f"{type(exc).__name__}: {exc}")
            with self._lock:
                self._in_flight.discard(w.path)
        w.future.set_exception(exc)

    def _follow_up(self) -> None:
        self._followed_at = time.monotonic()
        with self.store.session() as session:
            closed, job_id = after_labels(session, self.workspace)
        if closed:
            log.info("round(s) %s fully labelled: closed", ", ".join(map(str, closed)))
        if job_id is not None:
            log.info("training job %s queued (%s)", job_id, dict(self.outcomes))
            if self.on_job_queued:
                self.on_job_queued(job_id)
        if self.on_written:
            self.on_written()
