"""The ML backend's HTTP protocol, in process (FastAPI's test client over the real app, store
and model); the same app against a real Label Studio is in test_label_studio_e2e.py."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from scipy import ndimage
from sqlalchemy import func, select

from al_loop.classes import BACKGROUND, CLEAN_ICE, DEBRIS, UNLABELED
from al_loop.config import write_config
from al_loop.effort import effort_points
from al_loop.model.data import IGNORE, labelled_patches, load_samples
from al_loop.model.training import loss_fn
from al_loop.prelabels import clean_prediction
from al_loop.rounds import next_round
from al_loop.sampling.regions import Region
from al_loop.training_run import run_training
from backends import SECRET_HEADER
from backends.app import create_app
from backends.label_config import label_config
from backends.predictor import MIN_PART_PX, mapping_unit_pixels, predict_masks
from backends.results import (
    mask_to_brush_results,
    mask_to_polygon_results,
    results_to_mask,
)
from backends.service import Backend
from db.models import Label, Patch, RoundPatch, TrainingJob
from db.queries import status_summary, unpack_mask
from tests.test_rounds import labelled_and_pool

PROJECT = {"id": 7, "title": "glaciers"}


@pytest.fixture
def served(tmp_path, database_url):
    """A trained v1, a pool scene and a first round of 4 of its patches, served in process."""
    ws, store = labelled_and_pool(tmp_path / "ws", tmp_path / "pool", database_url, pool_height=384, mc_samples=2)
    ws.config.retraining.label_threshold = 0  # tests that want the trigger set it
    ws.config.retraining.debris_pixel_threshold = 0
    run_training(ws, store, quiet=True)
    round_ = next_round(ws, store, size=4, strategy="bald", quiet=True)
    backend = Backend(ws, store).start(worker=False)
    client = TestClient(create_app(backend))
    client.auth = (ws.config.backend.username, ws.config.backend.password)
    yield ws, store, backend, client, [p.patch_id for p in round_.patches]
    backend.stop()
    store.dispose()


def _without_specks(mask, min_px):
    out = mask.copy()
    for code in (CLEAN_ICE, DEBRIS):
        parts, _ = ndimage.label(mask == code)
        out[(np.bincount(parts.ravel()) < min_px)[parts] & (parts > 0)] = BACKGROUND
    return out


def _mask(size=128, debris_rows=slice(10, 40)):
    mask = np.full((size, size), BACKGROUND, np.uint8)
    mask[:, : size // 2] = CLEAN_ICE
    mask[debris_rows, 70:100] = DEBRIS
    return mask


def _event(patch_id, result, annotation_id=101, action="ANNOTATION_CREATED", **annotation):
    return {
        "action": action,
        "project": PROJECT,
        "task": {"id": 500 + patch_id, "data": {"image": "/data/local-files/?d=x.png", "patch_id": patch_id}},
        "annotation": {"id": annotation_id, "result": result, "completed_by": {"id": 1, "email": "ana@hkh.org"},
                       "lead_time": 42.5, "was_cancelled": False, "updated_at": "2026-11-24T10:00:00Z",
                       **annotation},
    }


def _post_webhook(ws, client, body):
    return client.post("/webhook", json=body, headers={SECRET_HEADER: ws.config.backend.webhook_secret})


def _labels(store):
    with store.session() as session:
        return [(lab.patch_id, lab.origin, lab.revision, lab.status, lab.author, lab.details.get("lead_time"))
                for lab in session.scalars(select(Label).where(Label.source == "annotation").order_by(Label.id))]


def test_health_is_open_and_everything_else_needs_basic_auth(served):
    ws, _, backend, client, patches = served
    health = client.get("/health", auth=None).json()
    assert health == {"status": "UP", "model_class": "al-loop", "model_version": backend.holder.version_title}
    assert health["model_version"].split(" ")[0] == "v1"
    task = {"id": 1, "data": {"patch_id": patches[0]}}
    for method, path, body in [("post", "/setup", {}), ("post", "/predict", {"tasks": [task]}),
                               ("post", "/webhook", {}), ("get", "/versions", None)]:
        for auth in (None, ("al-loop", "wrong")):
            response = client.request(method.upper(), path, json=body, auth=auth)
            assert response.status_code == 401, path
    # Basic auth alone does not open the webhook: the shared secret is needed too.
    response = client.post("/webhook", json=_event(patches[0], []))
    assert response.status_code == 403 and SECRET_HEADER in response.json()["error"]
    assert client.get("/versions").json()["versions"] == ["v1"]
    ws.config.backend.password = ""
    with pytest.raises(ValueError, match="backend.password empty"):
        create_app(backend)


def test_setup_answers_the_model_version_and_refuses_a_foreign_config(served):
    _, _, backend, client, _ = served
    response = client.post("/setup", json={"project": "3.1700000000", "schema": label_config()})
    assert response.json() == {"model_version": backend.holder.version_title}
    foreign = label_config().replace('value="Clean ice"', 'value="Snow"')
    response = client.post("/setup", json={"project": "4.1700000000", "schema": foreign})
    assert response.status_code == 422 and "Snow" in response.json()["error"]


@pytest.mark.parametrize("fmt", ["brush", "polygons"])
def test_predict_answers_one_result_per_task_in_order_with_version_and_calibrated_confidence(served, fmt):
    ws, store, backend, client, patches = served
    ws.config.backend.prediction_format = fmt
    asked = [patches[2], patches[0], patches[1]]
    body = {"tasks": [{"id": 10 + i, "data": {"patch_id": p}} for i, p in enumerate(asked)],
            "label_config": label_config(polygons=True), "project": "1.0"}
    results = client.post("/predict", json=body).json()["results"]
    assert len(results) == 3 and {r["model_version"] for r in results} == {backend.holder.version_title}
    with store.session() as session:
        patch_rows = [session.get(Patch, p) for p in asked]
        for p in patch_rows:
            _ = p.scene  # loaded while the session is open
    expected, confidences = predict_masks(ws, backend.holder.current, patch_rows, backend.holder.device, 4)
    # Pre-labels are the model's masks cleaned: smoothed, nothing below the mapping unit.
    cfg = ws.config.backend
    expected = [clean_prediction(m, mapping_unit_pixels(p, cfg.min_mapping_unit_m2), cfg.smoothing_radius)
                for m, p in zip(expected, patch_rows, strict=True)]
    assert mapping_unit_pixels(patch_rows[0], cfg.min_mapping_unit_m2) == 12  # 0.01 km² on 30 m pixels
    # The score is the model's calibrated confidence for the patch, not its place in the round.
    assert [r["score"] for r in results] == pytest.approx(confidences, abs=1e-6)
    assert all(0 < c <= 1 for c in confidences)
    for result, mask in zip(results, expected, strict=True):
        kinds = {r["type"] for r in result["result"]}
        assert kinds <= ({"brushlabels"} if fmt == "brush" else {"polygonlabels"})
        decoded = results_to_mask(result["result"], 128, 128, complete=True)
        if fmt == "polygons":  # specks are left out (then read back as background), outlines simplified
            mask = _without_specks(mask, MIN_PART_PX)
        labelled = mask != UNLABELED
        agreement = (decoded[labelled] == mask[labelled]).mean()
        assert agreement == 1.0 if fmt == "brush" else agreement > 0.9


def test_predict_names_bad_tasks_with_a_4xx(served):
    ws, _, _, client, patches = served
    response = client.post("/predict", json={"tasks": [{"id": 1, "data": {"patch_id": patches[0]}},
                                                       {"id": 2, "data": {"patch_id": 99999}}]})
    assert response.status_code == 404 and "no patch 99999" in response.json()["error"]
    response = client.post("/predict", json={"tasks": [{"id": 3, "data": {"image": "x.png"}}]})
    assert response.status_code == 422 and "data.patch_id" in response.json()["error"]
    ws.config.backend.prediction_format = "polygons"  # but the project offers brushes only
    response = client.post("/predict", json={"tasks": [{"id": 4, "data": {"patch_id": patches[0]}}],
                                             "label_config": label_config(polygons=False)})
    assert response.status_code == 422 and "does not fit the project's labeling config" in response.json()["error"]
    assert client.post("/predict", json={"tasks": []}).status_code == 400
    assert (
        client.post("/predict", content=b"{not json", headers={"content-type": "application/json"}).status_code == 400
    )


def test_annotations_become_labels_revisions_and_retirements(served):
    ws, store, backend, client, patches = served
    created = _event(patches[0], mask_to_brush_results(_mask()))
    assert _post_webhook(ws, client, created).json() == {"status": "stored", "annotation": 101,
                                                         "outcome": {"created": 1}}
    assert _post_webhook(ws, client, created).json()["outcome"] == {"unchanged": 1}  # delivered twice
    assert _labels(store) == [(patches[0], "label-studio:7:101", 1, "accepted", "ana@hkh.org", 42.5)]

    updated = _event(patches[0], mask_to_polygon_results(_mask(debris_rows=slice(50, 90)), simplify_tolerance_px=0),
                     action="ANNOTATION_UPDATED", updated_at="2026-11-24T10:05:00Z")
    _post_webhook(ws, client, updated)
    late = _event(patches[0], [], updated_at="2026-11-24T09:00:00Z")  # an older delivery arriving last
    _post_webhook(ws, client, late)
    backend.writer.join()
    assert [(r[2], r[3]) for r in _labels(store)] == [(1, "superseded"), (2, "accepted")]
    with store.session() as session:
        label = session.scalars(select(Label).where(Label.status == "accepted", Label.source == "annotation")).one()
        assert label.n_debris == 40 * 30

    deleted = {"action": "ANNOTATIONS_DELETED", "project": PROJECT, "annotations": [{"id": 101}]}
    assert _post_webhook(ws, client, deleted).json()["retire"] == [101]
    skipped = _event(patches[1], [], annotation_id=102, was_cancelled=True)
    _post_webhook(ws, client, skipped)
    backend.writer.join()
    assert [(r[2], r[3]) for r in _labels(store)] == [(1, "superseded"), (2, "retired")]
    assert backend.writer.outcomes == {"created": 1, "unchanged": 1, "revised": 1, "stale": 1, "retired": 1,
                                       "skipped": 1}


def test_concurrent_deliveries_of_one_annotation_give_one_label(served):
    ws, store, backend, client, patches = served
    body = _event(patches[0], mask_to_brush_results(_mask()))
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(_post_webhook(ws, client, body).status_code))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    backend.writer.join()
    assert answers == [200] * 8
    assert [(r[0], r[2], r[3]) for r in _labels(store)] == [(patches[0], 1, "accepted")]


def _bad_rle():
    results = mask_to_brush_results(_mask())
    results[0]["value"]["rle"] = results[0]["value"]["rle"][:30]
    return results


def _polygon_outside():
    results = mask_to_polygon_results(_mask())
    results[0]["value"]["points"][0] = [120.0, 5.0]
    return results


def _unknown_label():
    results = mask_to_brush_results(_mask())
    results[0]["value"]["brushlabels"] = ["Snow"]
    return results


@pytest.mark.parametrize(("make", "patch", "problem"), [
    (_bad_rle, 0, "malformed rle"),
    (_polygon_outside, 0, "outside 0-100 percent"),
    (_unknown_label, 0, "unknown label 'Snow'"),
    (lambda: mask_to_brush_results(_mask()), None, "no patch 99999 in the store"),
    (lambda: mask_to_brush_results(_mask(size=64)), 0, "do not match the patch 128x128"),
])
def test_bad_annotations_get_a_clear_4xx_and_store_nothing(served, make, patch, problem):
    ws, store, backend, client, patches = served
    response = _post_webhook(ws, client, _event(99999 if patch is None else patches[patch], make()))
    assert response.status_code == 422 and problem in response.json()["error"]
    backend.writer.join()
    assert _labels(store) == []
    assert _post_webhook(ws, client, {"action": "NO_SUCH_EVENT", "project": PROJECT}).status_code == 400
    assert _post_webhook(ws, client, {"action": "ANNOTATIONS_DELETED", "project": PROJECT,
                                      "annotations": ["x"]}).status_code == 422


def test_label_count_queues_one_job_the_worker_trains_and_the_new_champion_is_served(served):
    ws, store, backend, client, patches = served
    ws.config.retraining.label_threshold = 2
    for k, patch_id in enumerate(patches[:3]):
        _post_webhook(ws, client, _event(patch_id, mask_to_brush_results(_mask()), annotation_id=200 + k))
        backend.writer.join()
    with store.session() as session:
        jobs = session.scalars(select(TrainingJob).where(TrainingJob.status == "queued")).all()
        assert [j.trigger for j in jobs] == ["label_count"]  # the third label queued no second job
    backend.worker.run(once=True)
    with store.session() as session:
        job = session.get(TrainingJob, jobs[0].id)
        assert job.status == "done" and job.result_model_id is not None
    task = {"id": 1, "data": {"patch_id": patches[3]}}
    served_version = client.post("/predict", json={"tasks": [task]}).json()["results"][0]["model_version"]
    assert served_version == backend.holder.version_title
    assert served_version.split(" ")[0] == ("v2" if backend.holder.current.version_id == job.result_model_id else "v1")


def test_start_training_from_label_studio_queues_at_most_one_job(served):
    ws, store, _, client, _ = served
    first = _post_webhook(ws, client, {"action": "START_TRAINING", "project": PROJECT}).json()
    second = _post_webhook(ws, client, {"action": "START_TRAINING", "project": PROJECT}).json()
    assert first["status"] == "queued" and isinstance(first["job"], int)
    assert second["job"] is None and "already" in second["status"]
    with store.session() as session:
        assert session.scalar(select(func.count(TrainingJob.id)).where(TrainingJob.status == "queued")) == 1


def test_a_fully_labelled_round_is_closed(served):
    ws, store, backend, client, patches = served
    for k, patch_id in enumerate(patches):
        _post_webhook(ws, client, _event(patch_id, mask_to_brush_results(_mask()), annotation_id=300 + k))
    backend.writer.join()
    with store.session() as session:
        round_ = session.scalars(select(RoundPatch)).first().round
        assert round_.status == "closed"


def test_a_new_champion_is_swapped_in_while_requests_are_in_flight(served):
    ws, store, backend, client, patches = served
    ws.config.training.promotion_margin = 1.0  # promote whatever comes out
    assert run_training(ws, store, parent_name="v1", quiet=True).status == "champion"
    assert backend.holder.version_name == "v1"  # not yet noticed
    body = {"tasks": [{"id": 1, "data": {"patch_id": patches[0]}}, {"id": 2, "data": {"patch_id": patches[1]}}]}
    answers, swapped = [], threading.Event()

    def ask():
        while not swapped.is_set() or len(answers) < 8:
            response = client.post("/predict", json=body)
            answers.append((response.status_code, {r["model_version"] for r in response.json()["results"]}))

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    assert backend.holder.refresh()
    swapped.set()
    for t in threads:
        t.join()
    assert {status for status, _ in answers} == {200}
    assert all(len(versions) == 1 for _, versions in answers)  # no answer mixes two models
    after = client.post("/predict", json=body).json()["results"]
    assert {r["model_version"] for r in after} == {backend.holder.version_title} and backend.holder.version_name == "v2"


def test_a_region_query_is_predicted_as_a_box_and_only_its_pixels_are_stored_and_trained(served):
    ws, store, backend, client, _ = served
    ws.config.sampling.query = "region"
    round_ = next_round(ws, store, size=2, strategy="bald", quiet=True)
    patch_id = round_.patches[0].patch_id
    region = Region(*round_.patches[0].region)
    assert region.pixels == 64 * 64  # a quarter of the 128-px patch
    body = {"tasks": [{"id": 1, "data": {"patch_id": patch_id}}], "label_config": label_config(polygons=True)}
    result = client.post("/predict", json=body).json()["results"][0]["result"]
    boxes = [r for r in result if r["type"] == "rectanglelabels"]
    assert len(boxes) == 1 and boxes[0]["from_name"] == "region"
    # A project whose config has no region tag gets the prediction without a box.
    old = {**body, "label_config": label_config(polygons=True).replace('name="region"', 'name="area"')
           .replace('<Label value="Label inside this box" background="#FFD400"/>', '<Label value="x"/>')}
    assert all(r["type"] != "rectanglelabels" for r in client.post("/predict", json=old).json()["results"][0]["result"])

    # The expert keeps the model's box and paints debris over the whole patch.
    painted = np.full((128, 128), DEBRIS, np.uint8)
    answer = _event(patch_id, mask_to_brush_results(painted) + boxes, annotation_id=301)
    assert _post_webhook(ws, client, answer).status_code in (200, 202)
    backend.writer.join()
    with store.session() as session:
        label = session.scalars(select(Label).where(Label.origin == "label-studio:7:301")).one()
        assert label.n_debris == region.pixels  # what was painted outside the box is not kept
        item = labelled_patches(session, [patch_id])[patch_id]
        (sample,) = load_samples(ws, [item], ws.config.model.channels or ["B1", "B2", "B3", "B4", "B5"],
                                 ws.config.model.classes)
    inside = region.mask(128, 128)
    _, valid = sample.read()
    assert (sample.target[~inside] == IGNORE).all() and (sample.target[inside & valid] == 2).all()
    # The masked loss does not see outside the box: changing logits there changes nothing.
    weights = torch.ones(3)
    target = torch.from_numpy(sample.target[None].astype(np.int64))
    logits = torch.zeros(1, 3, 128, 128)
    scrambled = logits.clone()
    scrambled[:, :, torch.from_numpy(~inside)] = torch.randn(3, int((~inside).sum()))
    assert loss_fn(logits, target, weights, 1.0, 1.0) == pytest.approx(
        float(loss_fn(scrambled, target, weights, 1.0, 1.0))
    )


def test_effort_puts_each_version_against_the_expert_seconds_behind_it(served):
    from PIL import Image
    from typer.testing import CliRunner

    from cli import app

    ws, store, backend, client, patches = served
    for k, patch_id in enumerate(patches[:3]):
        answer = _event(patch_id, mask_to_brush_results(_mask()), annotation_id=400 + k, lead_time=60.0 * (k + 1))
        assert _post_webhook(ws, client, answer).status_code in (200, 202)
    backend.writer.join()
    run_training(ws, store, parent_name="v1", quiet=True)
    points, scored_on = effort_points(ws, store)
    assert [p.version for p in points] == ["v1", "v2"] and "validation set" in scored_on
    v1, v2 = points
    assert (v1.timed_labels, v1.expert_seconds) == (0, 0.0) and v1.labels > 0
    with store.session() as session:  # a new label may go to validation: a version counts those it trained on
        splits = {p.id: p.split for p in session.scalars(select(Patch).where(Patch.id.in_(patches[:3])))}
    trained = [k for k, patch_id in enumerate(patches[:3]) if splits[patch_id] == "train"]
    seconds = sum(60.0 * (k + 1) for k in trained)
    assert trained and v2.timed_labels == len(trained) and v2.labels == v1.labels + len(trained)
    assert v2.expert_seconds == pytest.approx(seconds)
    assert all(p.iou["glacier"] is not None for p in points)
    write_config(ws.root, ws.config)  # the command reads the workspace's file
    result = CliRunner().invoke(app, ["effort", "--workspace", str(ws.root)])
    assert result.exit_code == 0, result.output
    assert f"{seconds / 60:.1f}" in result.output and "v2" in result.output  # expert minutes
    with Image.open(ws.root / "reports" / "effort.png") as png:
        assert png.size[0] > 400


def test_unsure_and_cloud_pixels_are_stored_unlabeled_and_counted_and_an_empty_submission_is_no_label(served):
    ws, store, backend, client, patches = served
    mask = _mask()
    results = mask_to_brush_results(mask)
    unsure = np.zeros(mask.shape, bool)
    unsure[100:110, :] = True
    layer = mask_to_brush_results(unsure.astype(np.uint8) * CLEAN_ICE)[0]
    layer["value"]["brushlabels"] = ["Unsure"]
    _post_webhook(ws, client, _event(patches[0], results + [layer], annotation_id=701))
    _post_webhook(ws, client, _event(patches[1], [], annotation_id=702))  # submitted with nothing painted
    backend.writer.join()
    with store.session() as session:
        labels = {lab.patch_id: lab for lab in session.scalars(select(Label).where(Label.source == "annotation"))}
        assert set(labels) == {patches[0]}  # the empty one is no label
        stored = labels[patches[0]]
        assert stored.details["ignored"] == {"unsure": int(unsure.sum())}
        assert stored.n_unlabeled == int(unsure.sum())  # ignored by the loss and metrics
        assert (unpack_mask(stored.mask, 128, 128)[unsure] == UNLABELED).all()
        assert status_summary(session)["ignored"] == {"unsure": int(unsure.sum())}
