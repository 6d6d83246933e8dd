"""``al-loop demo``: the live loop on the embedded default, from nothing to a Label Studio project
whose first round waits with predictions.

The workspace gets two synthetic scenes: one with a complete glacier inventory (the labels the
first model is trained on) and one without labels (the pool experts annotate). Sizes are the
compute profile's that `al-loop init` picks (on a CPU: the first training takes about two
minutes on two cores); the demo only makes rounds and the retraining threshold smaller, in the
workspace's al-loop.toml. Each step is skipped when already done, so running the demo again
resumes it.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from al_loop.config import CONFIG_FILE, Workspace, open_workspace, write_config
from al_loop.ingest import ingest_hkh_tile, ingest_synthetic_scene
from al_loop.rounds import next_round
from al_loop.synthetic import make_scene
from al_loop.training_run import run_training
from al_loop.workspace import init_workspace, open_store
from db import queries, registry
from db.session import Store

POOL_SCENE = "LE07_145039_20081012_pool"


def demo_settings(workspace: Workspace) -> None:
    """Rounds of 8 patches, and a fine-tuning after every 8 labels: a demo's pace."""
    cfg = workspace.config
    cfg.sampling.round_size = 8
    cfg.retraining.label_threshold = 8


@dataclass
class DemoState:
    workspace: Workspace
    store: Store


def prepare(root: Path, size: int, log: Callable[[str], None]) -> DemoState:
    """Workspace, scenes, first model and first round (each only if missing)."""
    fresh = not (root / CONFIG_FILE).exists()
    workspace = init_workspace(root)
    if fresh:
        demo_settings(workspace)
        write_config(workspace.root, workspace.config)
        workspace = open_workspace(workspace.root)
    store = open_store(workspace)
    inventory = ingest_synthetic_scene(workspace, store, size=size, seed=workspace.config.synthetic.seed)
    log(f"inventory scene {inventory.name}: {inventory.patches} patches with labels")
    pool_image = workspace.scenes_dir / "pool" / f"{POOL_SCENE}.tif"
    if not pool_image.exists():
        make_scene(pool_image.parent, height=size, seed=7, name=POOL_SCENE)
    pool = ingest_hkh_tile(workspace, store, pool_image)
    log(f"pool scene {pool.name}: {pool.patches} patches to annotate")
    with store.session() as session:
        champion = registry.champion(session)
        open_round = next(iter(queries.open_round_numbers(session)), None)
    if champion is None:
        report = run_training(workspace, store)
        log(f"model {report.version} trained: {report.gate}")
    if open_round is None:
        chosen = next_round(workspace, store)
        log(f"round {chosen.number}: {len(chosen.patches)} patches chosen with {chosen.model_version} "
            f"({chosen.strategy})")
    return DemoState(workspace, store)


LABEL_STUDIO_PORT = 8080


def run_live(state: DemoState, port: int | None, log: Callable[[str], None], wait: bool = True) -> None:
    """Start Label Studio (its data in the workspace) and the backend, connect them, and keep
    both running until interrupted, by Ctrl-C, SIGTERM or a closed terminal (or return at once
    when not ``wait``). Label Studio takes ``port``; without one, 8080, or a free port when
    another program holds 8080. Whatever stops the demo stops its Label Studio."""
    from backends.service import Backend, ThreadedServer
    from backends.studio import connect
    from backends.studio_process import LabelStudioServer, free_port, port_in_use

    workspace, store = state.workspace, state.store
    if port is None:
        port = LABEL_STUDIO_PORT
        if port_in_use(port):
            port = free_port()
            log(f"port {LABEL_STUDIO_PORT} is in use by another program: Label Studio takes port {port}")
    elif port_in_use(port):
        raise ValueError(f"--port {port} is in use by another program (another Label Studio?): stop it, or "
                         "choose another --port")
    cfg = workspace.config
    if port_in_use(cfg.backend.port):
        cfg.backend.port = free_port()
        cfg.backend.url = ""
        log(f"the backend's port is in use by another program: it takes port {cfg.backend.port}")
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    label_studio = LabelStudioServer(document_root=workspace.root, data_dir=workspace.root / "label-studio", port=port)
    backend = http = None
    try:
        label_studio.start()
        cfg.label_studio.url, cfg.label_studio.api_key = label_studio.url, label_studio.api_key
        cfg.label_studio.document_root = str(workspace.root)
        write_config(workspace.root, cfg)  # so that `al-loop sync` and `serve` find this Label Studio
        backend = Backend(workspace, store)
        backend.sync()
        backend.start()
        http = ThreadedServer(backend, cfg.backend.host, cfg.backend.port)
        report = connect(workspace, store, backend.holder)
        log(f"Label Studio: {label_studio.url}/projects/{report.project_id} "
            f"(user {label_studio.username}, password {label_studio.password})")
        log(f"{sum(report.imported.values())} tasks imported, {report.predictions} predictions by "
            f"{report.model_version}; "
            f"after {cfg.retraining.label_threshold} accepted annotations a fine-tuned model is trained and served")
        if wait:
            log("press Ctrl-C to stop")
            http.thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        if http is not None:
            http.stop()
        if backend is not None:
            backend.stop()
        label_studio.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM and SIGHUP stop the demo as Ctrl-C does, so its Label Studio stops too."""
    raise KeyboardInterrupt(signal.Signals(signum).name)
