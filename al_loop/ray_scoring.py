"""Pool scoring on a Ray cluster: the same per-patch scoring as :func:`al_loop.rounds.score_pool`,
spread over Ray Data actors, each holding the model once (``sampling.ray_address``).

The driver (the process running ``next-round``) lists the patches to score, Ray Data hands their
ids out in batches of ``sampling.batch_size`` to ``sampling.ray_workers`` actors (CPU workers, or
GPU ones with ``sampling.ray_gpus``), and the driver writes the scores back to the store as they
come, one transaction per batch, so a crash keeps what was scored. Every actor opens the workspace
itself: on a cluster that means the workspace folder at the same path on every node and the
PostgreSQL store a team shares (a SQLite file works only with workers on the driver's machine).
Ray is an optional dependency (``pip install al-loop[ray]``); nothing else imports this module.
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from al_loop.config import Workspace
from db.models import ModelVersion, PatchScore
from db.session import Store

if TYPE_CHECKING:
    from al_loop.model.network import UNet


class RayUnavailable(RuntimeError):
    """``sampling.ray_address`` is set but Ray is not installed."""


def _ray() -> ModuleType:
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data comes with the extra: ray[data])
    except ImportError:
        raise RayUnavailable("sampling.ray_address is set but Ray is not installed: pip install 'al-loop[ray]', "
                             "or empty sampling.ray_address to score in this process") from None
    return ray


class PatchScorer:
    """A Ray Data actor: opens the driver's workspace (its folder, its configuration as loaded,
    environment overrides included) and loads the model version once, then scores batches of
    patch ids exactly as the in-process scorer does."""

    def __init__(self, workspace: Workspace, version_id: int | None) -> None:
        from al_loop.workspace import open_store

        self.workspace = workspace
        self.store = open_store(self.workspace)
        self.version: ModelVersion | None = None
        self.model: UNet | None = None
        if version_id is not None:
            from al_loop.model.checkpoints import load_version

            with self.store.session() as session:
                version = session.get(ModelVersion, version_id)
                if version is None:
                    raise LookupError(f"no model version with id {version_id} in the store")
                session.expunge(version)
            self.version, self.model = version, load_version(self.workspace, version)[0]
        self.thresholds: dict[int, dict[str, float] | None] = {}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from al_loop import rounds
        from al_loop.model.inference import pick_device
        from db import queries

        ids = [int(i) for i in batch["patch_id"]]
        with self.store.session() as session:
            patches = queries.patches_by_id(session, ids, with_scenes=True)
            for patch in patches:
                if patch.scene_id not in self.thresholds:
                    self.thresholds[patch.scene_id] = rounds.scene_cloud_thresholds(self.workspace, patch.scene)
            scored = rounds.score_batch(self.workspace, patches, self.model, self.version, self.thresholds,
                                        pick_device())
        return {"patch_id": np.array([p.id for p in patches]),
                "score": np.array([c.pop("_score") for c in scored], dtype=np.float64),
                "components": np.array([json.dumps(c) for c in scored], dtype=object)}


def score_pool(workspace: Workspace, store: Store, version: ModelVersion | None, todo: list[int]) -> int:
    """Score the patches ``todo`` on the Ray cluster at ``sampling.ray_address``; returns how many."""
    ray = _ray()
    cfg = workspace.config.sampling
    if not ray.is_initialized():
        address = None if cfg.ray_address == "local" else cfg.ray_address
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    items = ray.data.from_items([{"patch_id": i} for i in todo])
    scored = items.map_batches(
        PatchScorer,
        fn_constructor_kwargs={"workspace": workspace, "version_id": version.id if version else None},
        batch_size=max(1, cfg.batch_size), concurrency=max(1, cfg.ray_workers), num_gpus=cfg.ray_gpus,
        batch_format="numpy",
    )
    done = 0
    version_id = version.id if version else None
    for batch in scored.iter_batches(batch_size=max(1, cfg.batch_size), batch_format="numpy"):
        rows = [PatchScore(patch_id=int(p), model_version_id=version_id, score=float(s), components=json.loads(c))
                for p, s, c in zip(batch["patch_id"], batch["score"], batch["components"], strict=True)]
        with store.session() as session:  # one transaction per batch, as in this process
            session.add_all(rows)
        done += len(rows)
    return done
