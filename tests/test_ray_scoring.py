"""Pool scoring on a Ray cluster (the optional extra al-loop[ray]): a real local cluster started by
the test (`ray start --head`), two model actors, scores written to the store by the driver, equal
to what the same champion gives in one process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import delete, select

from al_loop import rounds
from al_loop.training_run import run_training
from backends.studio_process import free_port
from db import registry
from db.models import PatchScore
from tests.test_rounds import labelled_and_pool

ray = pytest.importorskip("ray", reason="the ray extra: pip install 'al-loop[ray]'")
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A one-node Ray cluster of 2 CPUs on loopback, started as a user would (`ray start --head`).
    Token authentication is off for it and for the driver alike: Ray turns it on by itself where a
    ~/.ray/auth_token exists, and then only processes that find the token may connect."""
    port = free_port()
    temp = tmp_path_factory.mktemp("ray")
    before = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                    "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
                   check=True, capture_output=True, timeout=180)
    yield f"127.0.0.1:{port}"
    if ray.is_initialized():
        ray.shutdown()
    subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)
    shutil.rmtree(temp, ignore_errors=True)
    if before is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = before


def _scores(store, version_id):
    with store.session() as session:
        rows = session.scalars(select(PatchScore).where(PatchScore.model_version_id == version_id)).all()
        return {r.patch_id: (r.score, r.components) for r in rows}


def test_the_pool_scored_on_ray_is_scored_as_in_one_process(tmp_path, cluster):
    ws, store = labelled_and_pool(tmp_path / "ws", tmp_path / "pool", mc_samples=2)
    run_training(ws, store, quiet=True)
    with store.session() as session:
        version = registry.champion(session)
        session.expunge(version)
    here = rounds.score_pool(ws, store, version, quiet=True)
    expected = _scores(store, version.id)
    with store.session() as session:
        session.execute(delete(PatchScore))
    ws.config.sampling.ray_address, ws.config.sampling.ray_workers = cluster, 2
    assert rounds.score_pool(ws, store, version, quiet=True) == here == len(expected) > 0
    found = _scores(store, version.id)
    assert set(found) == set(expected)
    for patch_id, (score, components) in expected.items():
        assert found[patch_id][0] == pytest.approx(score, rel=1e-5, abs=1e-7)
        assert found[patch_id][1].keys() == components.keys()
        np.testing.assert_allclose(found[patch_id][1]["embedding"], components["embedding"], atol=1e-3)
    assert rounds.score_pool(ws, store, version, quiet=True) == 0  # nothing left to score
    result = rounds.next_round(ws, store, size=4, quiet=True)  # a round chosen from the Ray scores
    assert len(result.patches) == 4 and result.scored == 0
    store.dispose()


def test_without_ray_installed_the_option_says_what_to_install(tmp_path, monkeypatch):
    from al_loop import ray_scoring

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    ws, store = labelled_and_pool(tmp_path / "ws", tmp_path / "pool", pool_height=256, mc_samples=2)
    ws.config.sampling.ray_address = "local"
    with pytest.raises(ray_scoring.RayUnavailable, match=r"pip install 'al-loop\[ray\]'"):
        rounds.score_pool(ws, store, None, quiet=True)
    with store.session() as session:
        assert not session.scalars(select(PatchScore)).all()  # nothing written
    store.dispose()
