"""``al-loop serve``: the backend's parts wired together and run.

One :class:`Backend` holds the served model, the label writer with its inbox and (by default) a
training worker thread. After a training job it swaps in the new champion, re-predicts the open
Label Studio tasks with it and, if configured, chooses the next round and imports it. Storing
labels needs no model: a backend whose champion cannot be loaded still takes annotations and
answers predictions with a 503 that says why.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

from al_loop import jobs
from al_loop.config import Workspace
from al_loop.gate import describe_change
from al_loop.rounds import next_round
from al_loop.training_run import TrainingReport
from backends import studio
from backends.accepted_labels import PatchSizes
from backends.inbox import Inbox
from backends.label_writer import LabelWriter
from backends.predictor import ModelHolder
from db.session import Store

if TYPE_CHECKING:
    import multiprocessing.process
    import socket

log = logging.getLogger(__name__)
EMAILS_EVERY_S = 60.0
RESTART_AFTER_S = 10.0  # a server process failing sooner cannot start: stop instead of starting it again
STOP_WAIT_S = 30.0


class Backend:
    def __init__(self, workspace: Workspace, store: Store) -> None:
        self.workspace, self.store = workspace, store
        self.holder = ModelHolder(workspace, store)
        self.holder.refresh()
        self.worker = jobs.Worker(workspace, store, on_trained=self.after_training)
        self.inbox = Inbox(workspace.root / "inbox")
        self.patch_sizes = PatchSizes(store)
        self.writer = LabelWriter(workspace, store, self.inbox, on_job_queued=lambda _: self.worker.wake.set(),
                                  on_written=self._record_author_emails)
        self._worker_thread: threading.Thread | None = None
        self._emails_at = 0.0

    @property
    def connected(self) -> bool:
        cfg = self.workspace.config.label_studio
        return bool(cfg.url and cfg.api_key)

    def start(self, worker: bool | None = None) -> Backend:
        self.writer.start()
        if self.workspace.config.backend.worker if worker is None else worker:
            self._worker_thread = threading.Thread(target=self.worker.run, name="training-worker", daemon=True)
            self._worker_thread.start()
        return self

    def stop(self) -> None:
        self.writer.stop()
        self.worker.stop()
        if self._worker_thread is not None:
            self._worker_thread.join()

    def _record_author_emails(self) -> None:
        """Webhooks name annotators by Label Studio user id: add their emails (once a minute at
        most, and only when connected)."""
        if not self.connected or time.monotonic() - self._emails_at < EMAILS_EVERY_S:
            return
        self._emails_at = time.monotonic()
        try:
            studio.record_author_emails(studio.client(self.workspace), self.store)
        except Exception:  # Label Studio unreachable: the ids stay, emails come later
            log.warning("annotators' emails not recorded", exc_info=True)

    def queue_training(self, trigger: str) -> int | None:
        with self.store.session() as session:
            job = jobs.queue_job(session, trigger)
            job_id = job.id if job else None
        self.worker.wake.set()
        return job_id

    def sync(self) -> None:
        """Reconcile with Label Studio (on start: deliveries missed while down)."""
        if not self.connected:
            return
        try:
            report = studio.sync(self.workspace, self.store)
        except LookupError:
            log.info("no Label Studio project yet: nothing to sync")
            return
        except Exception:  # Label Studio down: serve anyway
            log.warning("sync with Label Studio skipped", exc_info=True)
            return
        log.info("synced %d tasks: %s", report.tasks, dict(report.outcomes))
        if report.job_id is not None:
            self.worker.wake.set()

    def after_training(self, report: TrainingReport) -> None:
        log.info("%s", describe_change(report.version, report.metrics))
        if self.connected:  # the experts see what their labels did, promoted or not
            studio.describe_models(studio.client(self.workspace), self.workspace, self.store)
        if report.status != "champion" or not self.holder.refresh():
            return
        log.info("serving %s", self.holder.version_title)
        ls = project_id = None
        if self.connected:
            ls = studio.client(self.workspace)
            project_id = studio.project_or_fail(ls, self.workspace).id
            n = studio.push_predictions(ls, self.workspace, self.store, self.holder, project_id,
                                        studio.open_tasks(self.store, project_id))
            log.info("refreshed %d open tasks' predictions with %s", n, self.holder.version_name)
        if self.workspace.config.retraining.auto_next_round:
            chosen = next_round(self.workspace, self.store, quiet=True)
            log.info("round %d: %d patches chosen with %s", chosen.number, len(chosen.patches), chosen.model_version)
            if ls is not None and project_id is not None:
                tasks = studio.import_round(ls, self.workspace, self.store, project_id, chosen.number)
                studio.push_predictions(ls, self.workspace, self.store, self.holder, project_id, tasks)


class ThreadedServer:
    """The backend's HTTP server in a thread (for ``al-loop demo`` and the tests)."""

    def __init__(self, backend: Backend, host: str, port: int) -> None:
        import uvicorn

        from backends.app import create_app

        self.server = uvicorn.Server(uvicorn.Config(create_app(backend), host=host, port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="backend-http", daemon=True)
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"the backend could not listen on {host}:{port} (port in use?)")
            self.thread.join(0.05)

        self.url = f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join()

    def __enter__(self) -> ThreadedServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve(workspace: Workspace, store: Store, host: str | None = None, port: int | None = None,
          processes: int | None = None) -> None:
    """Run the backend in the foreground until interrupted, in ``processes`` server processes
    (default ``backend.processes``)."""
    import uvicorn

    from backends.app import create_app

    cfg = workspace.config.backend
    host, port, processes = host or cfg.host, port or cfg.port, processes or cfg.processes
    if processes > 1:
        store.dispose()  # each process opens its own
        serve_processes(workspace, host, port, processes)
        return
    backend = Backend(workspace, store)
    backend.sync()
    backend.start()
    try:
        uvicorn.run(create_app(backend), host=host, port=port, log_level="warning")
    finally:
        backend.stop()


def serve_processes(workspace: Workspace, host: str, port: int, processes: int) -> None:
    """Several server processes on one listening socket (one Python process per core is what
    takes webhooks past one core: decoding, checking and storing an annotation hold the GIL).
    Every process has its own label writer; the inbox and the store are shared, and storing a
    delivery twice changes nothing. Only the first syncs with Label Studio and runs the training
    worker. A process that dies is started again (its answered deliveries are in the inbox)."""
    import multiprocessing
    import socket
    from multiprocessing.connection import wait

    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on such sockets (else Nagle adds ~40 ms per answer)
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM,
                             socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        raise RuntimeError(f"the backend could not listen on {host}:{port}: {exc.strerror}") from None
    listener.listen(2048)
    level = logging.getLevelName(logging.getLogger("al_loop").getEffectiveLevel()).lower()
    context = multiprocessing.get_context("spawn")

    def start(index: int) -> tuple[multiprocessing.process.BaseProcess, float]:
        process = context.Process(target=_serve_one, args=(workspace, listener, index, processes, level),
                                  name=f"al-loop-serve-{index}")
        process.start()
        return process, time.monotonic()

    running = {index: start(index) for index in range(processes)}
    log.info("serving on %s:%d in %d processes", host, port, processes)
    # Ctrl-C stops them all, also where a shell started us with SIGINT ignored (a background job): Python then
    # installs no KeyboardInterrupt handler of its own. Stopped as a service (SIGTERM): the same.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            wait([process.sentinel for process, _ in running.values()])
            for index, (process, started) in list(running.items()):
                if process.is_alive():
                    continue
                if (process.exitcode or 0) > 0 and time.monotonic() - started < RESTART_AFTER_S:  # failed to start
                    raise RuntimeError(f"server process {index} exited with code {process.exitcode} "
                                       "as it started: see its log above")
                log.error("server process %d exited with code %s: starting it again", index, process.exitcode)
                running[index] = start(index)
    except KeyboardInterrupt:
        log.info("stopping the server processes")
    finally:
        for process, _ in running.values():
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGINT)  # uvicorn's graceful stop; the writer commits what it holds
        deadline = time.monotonic() + STOP_WAIT_S
        for index, (process, _) in running.items():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():  # what it answered is in the inbox: the next start writes it
                log.warning("server process %d did not stop within %.0f s: killed", index, STOP_WAIT_S)
                process.kill()
                process.join()
        listener.close()


def _serve_one(workspace: Workspace, listener: socket.socket, index: int, processes: int, level: str) -> None:
    """One of :func:`serve_processes`' processes."""
    import torch
    import uvicorn

    from al_loop import logs
    from al_loop.workspace import open_store
    from backends.app import create_app

    logs.configure(level)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // processes))  # /predict: the cores shared out
    store = open_store(workspace)
    backend = Backend(workspace, store)
    first = index == 0
    if first:
        backend.sync()
    backend.start(worker=first and workspace.config.backend.worker)
    try:
        config = uvicorn.Config(create_app(backend), log_level="warning",
                                timeout_graceful_shutdown=int(STOP_WAIT_S) // 2)
        uvicorn.Server(config).run(sockets=[listener])
    except KeyboardInterrupt:
        pass
    finally:
        backend.stop()
        store.dispose()
