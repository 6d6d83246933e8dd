"""The README's walkthrough as a new user runs it: the CLI with default settings (the profile
`al-loop init` picks on this CPU), no config edits, on the built-in scene and on a small
real-like scene (800x655 px, bands B1-B4 only, no DEM, partial labels)."""

import re

import numpy as np
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from al_loop.config import open_workspace
from al_loop.synthetic import make_level1_folder
from al_loop.workspace import open_store
from backends import SECRET_HEADER
from backends.app import create_app
from backends.results import mask_to_brush_results
from backends.service import Backend
from cli import app
from db import registry

runner = CliRunner()


def _run(env, *args):
    result = runner.invoke(app, [str(a) for a in args], env=env)
    assert result.exit_code == 0, f"al-loop {' '.join(map(str, args))}:\n{result.output}"
    return " ".join(result.output.split())


def _iou(output: str, row: str) -> float:
    """A row's IoU in a metrics table (printed with its interval: ``0.712 [0.650, 0.770]``)."""
    return float(re.search(rf"│ {row} +│ +([0-9.]+)(?: \[[0-9., ]+\])? │", output).group(1))


def _first_model(root) -> dict:
    ws = open_workspace(root, environ={})
    store = open_store(ws)
    with store.session() as session:
        metrics = dict(registry.version(session, "v1").metrics)
    store.dispose()
    return metrics


def test_defaults_train_a_useful_first_model_on_the_built_in_scene(tmp_path):
    env = {"AL_LOOP_WORKSPACE": str(tmp_path / "ws"), "COLUMNS": "200"}
    _run(env, "init")
    assert "compute profile" in (tmp_path / "ws" / "al-loop.toml").read_text()
    _run(env, "ingest", "synthetic", "-q")
    trained = runner.invoke(app, ["train", "-q"], env=env)
    assert trained.exit_code == 0, trained.output
    assert "model v1 (champion)" in trained.output
    assert _iou(trained.output, "glacier") >= 0.6  # the target of the learning-loop issue, on 2 CPU cores
    assert "class weights (auto): background 1 (" in trained.output
    baseline = _first_model(tmp_path / "ws")["baseline"]  # a tuned single-band threshold, same validation pixels
    assert baseline["difference"] >= 0.05 and baseline["low"] > 0, baseline  # measured: +0.243 [+0.118, +0.286]
    assert f"{baseline['difference']:+.3f}" in trained.output and baseline["rule"] in trained.output
    evaluated = runner.invoke(app, ["evaluate"], env=env)
    assert evaluated.exit_code == 0 and _iou(evaluated.output, "glacier") == _iou(trained.output, "glacier")
    pool = _run(env, "ingest", "synthetic", "--unlabelled", "-q")
    assert "synthetic-1024-seed1-unlabelled" in pool
    # A scene with bands B1-B4 only: the 14-channel model cannot read it; the round says so and goes on.
    other = make_level1_folder(tmp_path / "other")
    _run(env, "ingest", "scene", other.folder, "-q")
    chosen = _run(env, "next-round", "-q")
    assert "round 1: combined, model v1" in chosen
    assert "scene 3 (LE71400412000304SGS00) lacks B5, B6_VCID_1" in chosen and "left out of the pool" in chosen
    manifest = (tmp_path / "ws" / "rounds" / "round-001" / "manifest.csv").read_text().splitlines()
    assert len(manifest) == 1 + 10 and all(",synthetic-1024-seed1-unlabelled," in line for line in manifest[1:])


def test_defaults_work_on_a_small_b1_to_b4_scene_with_partial_labels(tmp_path):
    data = make_level1_folder(tmp_path / "data")
    env = {"AL_LOOP_WORKSPACE": str(tmp_path / "ws"), "COLUMNS": "200"}
    _run(env, "init")
    ingested = _run(env, "ingest", "scene", data.folder)
    assert "12 patches" in ingested and "lacks 10 of the 15 channels: B5," in ingested
    _run(env, "ingest", "labels", data.outlines, "-q")
    _run(env, "ingest", "labels", data.glacier_map, "--map", "0=unlabeled", "--map", "1=clean_ice",
         "--map", "2=debris", "-q")
    trained = _run(env, "train", "-q")
    assert "model v1 (champion)" in trained
    assert _iou(trained, "glacier") > 0.3  # four bands, six labelled patches
    # A tuned single-band threshold on the same validation pixels: the first model beats it by 0.05 here
    # (measured +0.084 [+0.061, +0.084]; on 4 of 6 such scenes, see the README).
    baseline = _first_model(tmp_path / "ws")["baseline"]
    assert baseline["rule"] in trained and f"{baseline['difference']:+.3f}" in trained
    assert baseline["difference"] >= 0.05, baseline
    assert "clean_ice, debris: n/a" in trained  # the typed map lies in training blocks only: honest n/a
    status = _run(env, "status")
    assert "validation │ inventory" in status
    chosen = _run(env, "next-round", "-q")
    assert "round 1: combined, model v1" in chosen
    _run(env, "predict", "1", "--mc", "2", "--out", tmp_path / "prediction.tif")
    fine_tuned = _run(env, "train", "--from", "v1", "-q")
    assert "promotion gate:" in fine_tuned and "glacier" in fine_tuned.split("promotion gate:")[1]
    models = _run(env, "models")
    assert "v1" in models and "v2" in models

    # serve: Label Studio's /predict and an annotation by webhook on this 5-channel model
    ws = open_workspace(tmp_path / "ws")
    store = open_store(ws)
    backend = Backend(ws, store).start(worker=False)
    try:
        client = TestClient(create_app(backend))
        client.auth = (ws.config.backend.username, ws.config.backend.password)
        from sqlalchemy import select

        from db.models import Label, RoundPatch

        with store.session() as session:
            patch_id = session.scalars(select(RoundPatch.patch_id).order_by(RoundPatch.rank)).first()
            icy = session.scalars(select(Label.patch_id).order_by(
                (Label.n_clean_ice + Label.n_debris + Label.n_glacier).desc())).first()
        # a patch the labels show glacier on (the round's first may hold none the model sees)
        predicted = client.post("/predict", json={"tasks": [{"id": 1, "data": {"patch_id": icy}}]})
        assert predicted.status_code == 200 and predicted.json()["results"][0]["result"]
        mask = np.zeros((256, 256), np.uint8)
        mask[:100, :100] = 1
        event = {"action": "ANNOTATION_CREATED", "project": {"id": 1},
                 "task": {"id": 1, "data": {"patch_id": patch_id}},
                 "annotation": {"id": 9, "result": mask_to_brush_results(mask),
                                "completed_by": {"id": 1, "email": "a@b"}, "lead_time": 3.0,
                                "was_cancelled": False, "updated_at": "2026-11-27T10:00:00Z"}}
        stored = client.post("/webhook", json=event, headers={SECRET_HEADER: ws.config.backend.webhook_secret})
        assert stored.status_code == 200 and stored.json()["status"] == "stored"
    finally:
        backend.stop()
        store.dispose()

    simulated = _run(env, "simulate", "--scene", "1", "--patch-size", "64", "--seeds", "0", "--rounds", "1",
                     "--round-size", "2", "--seed-set", "2", "--strategies", "combined", "--out", tmp_path / "sim",
                     "-q")
    assert re.search(r"│ combined │ [0-9.]+ ± [0-9.]+ │ [+-][0-9.]+ ± n/a │", simulated), simulated
