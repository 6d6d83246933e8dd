"""Training, fine-tuning, the registry and its gate, on a small synthetic scene (CPU)."""

import pickle

import numpy as np
import pytest
import rasterio
import torch
from sqlalchemy import func, select
from typer.testing import CliRunner

from al_loop import bands
from al_loop.bands import MissingChannelError
from al_loop.ingest import ingest_synthetic_scene
from al_loop.model.checkpoints import CheckpointError, atomic_save, load_model
from al_loop.model.data import TrainingDataError, split_samples
from al_loop.model.training import TrainingCancelled, train
from al_loop.training_run import run_training
from al_loop.workspace import init_workspace, open_store
from cli import app
from db.models import Label, ModelVersion, Scene, TrainingJob


def _small(ws):
    """A model and data small enough for quick CPU tests (smaller than the cpu profile)."""
    ws.config.ingest.patch_size = 128
    ws.config.ingest.quicklooks = False
    ws.config.model.depth, ws.config.model.base_filters = 3, 8
    ws.config.training.crop_size = 0
    ws.config.training.max_epochs = 2
    ws.config.training.min_steps = 1  # each patch once an epoch: these tests are not about learning
    ws.config.training.validation_block = 256
    ws.config.training.learning_rate = 3e-3
    return ws


@pytest.fixture
def scene_ws(tmp_path, database_url):
    ws = _small(init_workspace(tmp_path / "ws", database_url=database_url))
    store = open_store(ws)
    ingest_synthetic_scene(ws, store, size=512, seed=0, quiet=True)
    yield ws, store
    store.dispose()


def test_first_model_is_registered_with_its_provenance_and_served(scene_ws):
    ws, store = scene_ws
    report = run_training(ws, store, quiet=True)
    assert report.version == "v1" and report.status == "champion"
    with store.session() as session:
        version = session.scalars(select(ModelVersion)).one()
        trained_on = {label.patch.split for label in version.labels}
        assert trained_on == {"train"}  # never a validation patch
        assert len(version.labels) == report.metrics["train_patches"] > 0
        assert report.metrics["val_patches"] > 0
        # every channel of the scene but BQA (automatic channel choice leaves quality flags out)
        assert version.channels == [c for c in bands.CHANNELS if c != "BQA"]
        assert len(version.normalization["mean"]) == 14 and version.label_set_hash
        assert ws.resolve(version.checkpoint_path).is_file()
        job = session.scalars(select(TrainingJob)).one()
        assert job.status == "done" and job.result_model_id == version.id
    model, meta = load_model(ws.resolve(version.checkpoint_path), version.channels, version.classes)
    assert meta["classes"] == ["background", "clean_ice", "debris"]


def test_fine_tuning_records_its_parent_and_the_gate_can_reject(scene_ws):
    ws, store = scene_ws
    run_training(ws, store, quiet=True)
    ws.config.training.promotion_margin = -1.0  # demand a gain of a whole IoU point: impossible
    report = run_training(ws, store, parent_name="v1", quiet=True)
    assert report.status == "rejected" and report.gate.startswith("rejected") and "against v1" in report.gate
    with store.session() as session:
        v1, v2 = session.scalars(select(ModelVersion).order_by(ModelVersion.id)).all()
        assert v2.parent_id == v1.id and v1.status == "champion"
        gate = v2.metrics["gate"]  # both measured on the same validation set
        assert gate["validation_set"] == v2.metrics["validation_set"] == v1.metrics["validation_set"]
        assert gate["rows"]["glacier"]["champion"] == pytest.approx(v1.metrics["val"]["glacier"]["iou"], abs=1e-4)


def test_training_is_reproducible_and_resumes_where_it_stopped(scene_ws, tmp_path):
    ws, store = scene_ws
    with store.session() as session:
        data = split_samples(session, ws, None, "multiclass")
    train_samples, val_samples = data.train, data.val
    from al_loop.model.data import normalization
    from al_loop.model.training import architecture

    norm = normalization(train_samples, data.channels)
    kwargs = dict(arch=architecture(ws.config.model), train_cfg=ws.config.training,
                  class_names=("background", "clean_ice", "debris"), norm=norm, quiet=True)
    ws.config.training.patience = 99
    whole = train(train_samples, val_samples, **kwargs)
    again = train(train_samples, val_samples, **kwargs)
    for a, b in zip(whole.model.state_dict().values(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    checkpoint = tmp_path / "job.pt"
    calls = iter([False, True])
    with pytest.raises(TrainingCancelled):
        train(train_samples, val_samples, checkpoint=checkpoint, should_stop=lambda: next(calls), **kwargs)
    assert checkpoint.is_file()
    resumed = train(train_samples, val_samples, checkpoint=checkpoint, **kwargs)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_training_reads_patches_lazily_and_workers_do_not_change_the_run(scene_ws):
    """A sample keeps where its pixels are and its compressed target, not the pixels; training
    with a loader worker is the same run as reading in the training process."""
    ws, store = scene_ws
    with store.session() as session:
        data = split_samples(session, ws, None, "multiclass")
    from al_loop.model.data import normalization
    from al_loop.model.training import architecture
    from al_loop.patches import PatchSource

    sample = data.train[0]
    pixels, valid = sample.read()
    assert isinstance(sample.pixels, PatchSource) and pixels.shape == (len(data.channels), *sample.shape)
    assert len(pickle.dumps(sample)) < pixels.nbytes / 20  # what a label costs in memory
    norm = normalization(data.train, data.channels)
    runs = []
    for workers in (0, 1):
        ws.config.training.loader_workers = workers
        runs.append(train(data.train, data.val, arch=architecture(ws.config.model), train_cfg=ws.config.training,
                          class_names=("background", "clean_ice", "debris"), norm=norm, quiet=True))
    assert [h["train_loss"] for h in runs[0].history] == [h["train_loss"] for h in runs[1].history]
    for a, b in zip(runs[0].model.state_dict().values(), runs[1].model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_the_pixel_cache_keeps_the_most_recent_patches_within_its_budget():
    from al_loop.model.data import HeldPixels, PixelCache, Sample

    samples = [Sample(i, 1, (i,), HeldPixels(np.full((2, 8, 8), i, np.float32), np.ones((8, 8), bool)),
                      np.zeros((8, 8), np.uint8)) for i in range(4)]
    one = samples[0].read()[0].nbytes + 64
    cache = PixelCache(2 * one)
    for sample in samples:
        pixels, _ = cache.read(sample)
        assert pixels[0, 0, 0] == sample.patch_id
    assert list(cache.items) == [2, 3] and cache.size == 2 * one
    cache.read(samples[2])  # a hit: 2 becomes the most recent
    cache.read(samples[0])
    assert list(cache.items) == [2, 0]
    empty = PixelCache(0)
    assert empty.read(samples[1])[0][0, 0, 0] == 1 and not empty.items  # read, nothing kept


def _nothing_trained(store):
    with store.session() as session:
        assert session.scalar(select(func.count(ModelVersion.id))) == 0
        assert session.scalar(select(func.count(TrainingJob.id))) == 0


def test_no_labels_is_a_clear_error(tmp_path, shared_data):
    from al_loop.ingest import ingest_hkh_tile

    ws = _small(init_workspace(tmp_path / "ws"))
    store = open_store(ws)
    ingest_hkh_tile(ws, store, shared_data / "lila_hkh" / "LE07_134040_20070922_clip.tif", quiet=True)
    with pytest.raises(TrainingDataError, match="no accepted labels"):
        run_training(ws, store, quiet=True)
    _nothing_trained(store)


def test_labels_of_one_class_only_are_a_clear_error(scene_ws):
    ws, store = scene_ws
    with store.session() as session:
        for label in session.scalars(select(Label)):
            label.n_clean_ice = label.n_debris = 0
            from db.queries import pack_mask

            label.mask = pack_mask(np.zeros((128, 128), np.uint8))
    with pytest.raises(TrainingDataError, match=r"only class\(es\) \['background'\]"):
        run_training(ws, store, quiet=True)
    _nothing_trained(store)


def test_a_named_channel_the_scene_lacks_is_a_clear_error(scene_ws):
    ws, store = scene_ws
    with store.session() as session:
        scene = session.scalars(select(Scene)).one()
        scene.available_channels = [c for c in scene.available_channels if c != "slope"]
    ws.config.model.channels = ["B1", "B2", "B5", "slope"]
    with pytest.raises(MissingChannelError, match=r"labelled scene 1 .*model.channels.* lacks channel\(s\) slope"):
        run_training(ws, store, quiet=True)
    _nothing_trained(store)


def test_without_named_channels_the_model_uses_those_the_labelled_scenes_share(scene_ws):
    ws, store = scene_ws
    with store.session() as session:
        scene = session.scalars(select(Scene)).one()
        scene.available_channels = [c for c in scene.available_channels if c not in ("slope", "B6_VCID_2")]
    report = run_training(ws, store, quiet=True)
    with store.session() as session:
        version = session.scalars(select(ModelVersion)).one()
    assert report.status == "champion"
    assert version.channels == [c for c in bands.CHANNELS if c not in ("slope", "B6_VCID_2", "BQA")]


def test_checkpoints_for_other_channels_or_classes_or_corrupted_are_refused(scene_ws, tmp_path):
    ws, store = scene_ws
    run_training(ws, store, quiet=True)
    with store.session() as session:
        version = session.scalars(select(ModelVersion)).one()
        path = ws.resolve(version.checkpoint_path)
    with pytest.raises(CheckpointError, match="trained on channels"):
        load_model(path, channels=["B1", "B2"])
    with pytest.raises(CheckpointError, match="predicts classes"):
        load_model(path, classes=["background", "glacier"])
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="damaged.pt: not a readable model file"):
        load_model(damaged)
    original = path.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError)):  # what pickle raises depends on where the lambda is
        atomic_save({"bad": lambda: None}, path)  # cannot be saved: the old file must survive
    assert path.read_bytes() == original and not list(path.parent.glob(".*.part"))
    path.write_bytes(original[:1000])  # the champion's file damaged on disk
    result = CliRunner().invoke(app, ["evaluate", "-w", str(ws.root)], env={"AL_LOOP_TRAINING_VALIDATION_BLOCK": "256"})
    assert result.exit_code == 2 and "not a readable model file" in result.output


def test_cli_trains_lists_evaluates_predicts_and_rolls_back(tmp_path):
    ws = tmp_path / "ws"
    runner = CliRunner()
    assert runner.invoke(app, ["init", str(ws)]).exit_code == 0
    env = {
        "AL_LOOP_INGEST_PATCH_SIZE": "128", "AL_LOOP_INGEST_QUICKLOOKS": "false", "AL_LOOP_MODEL_DEPTH": "3",
        "AL_LOOP_MODEL_BASE_FILTERS": "8", "AL_LOOP_TRAINING_CROP_SIZE": "0", "AL_LOOP_TRAINING_MAX_EPOCHS": "1",
        "AL_LOOP_TRAINING_VALIDATION_BLOCK": "128", "AL_LOOP_WORKSPACE": str(ws), "COLUMNS": "150",
    }
    assert runner.invoke(app, ["ingest", "synthetic", "--size", "256", "-q"], env=env).exit_code == 0
    result = runner.invoke(app, ["train", "-q"], env=env)
    assert result.exit_code == 0, result.output
    assert "model v1 (champion)" in result.output and "clean_ice" in result.output
    assert runner.invoke(app, ["train", "--from", "v1", "-q"], env=env).exit_code == 0
    listing = runner.invoke(app, ["models"], env=env).output
    assert "v1" in listing and "v2" in listing
    evaluation = runner.invoke(app, ["evaluate", "v1"], env=env)
    assert evaluation.exit_code == 0 and (ws / "evaluations" / "v1-val" / "confusion.png").is_file()
    result = runner.invoke(app, ["predict", "1", "--mc", "4", "--out", str(tmp_path / "p.tif")], env=env)
    assert result.exit_code == 0, result.output
    with rasterio.open(tmp_path / "p.tif") as src, rasterio.open(next((ws / "scenes").glob("*/*-seed0.tif"))) as scene:
        assert src.crs == scene.crs and src.transform == scene.transform and src.shape == scene.shape
        assert src.descriptions == ("class", "p_background", "p_clean_ice", "p_debris", "entropy", "bald")
        classes, bald = src.read(1), src.read(6)
        assert set(np.unique(classes)) <= {0, 1, 2, 255} and (bald >= 0).all()
    store = open_store(init_workspace(ws))
    with store.session() as session:
        statuses = dict(session.execute(select(ModelVersion.name, ModelVersion.status)).all())
    store.dispose()
    rollback = runner.invoke(app, ["models", "rollback", "v1"], env=env)
    assert rollback.exit_code == 0
    refused = runner.invoke(app, ["models", "rollback", "v9"], env=env)
    assert refused.exit_code == 2 and "no model version 'v9'" in refused.output
    assert "champion" in statuses.values()


def test_a_cancelled_job_keeps_its_checkpoint_and_resumes_to_a_model(scene_ws):
    from al_loop.jobs import JobError, request_cancel
    from al_loop.training_run import models_dir

    ws, store = scene_ws
    calls = iter([False, True])
    with pytest.raises(TrainingCancelled):
        run_training(ws, store, should_stop=lambda: next(calls), quiet=True)
    with store.session() as session:
        job = session.scalars(select(TrainingJob)).one()
        assert job.status == "cancelled" and "--resume 1" in job.error
        assert session.scalar(select(func.count(ModelVersion.id))) == 0
    assert (models_dir(ws) / "jobs" / "job-1.pt").is_file()
    with pytest.raises(JobError, match="no running or queued training job 1"):
        request_cancel(store, 1)
    report = run_training(ws, store, resume=1, quiet=True)
    assert report.job_id == 1 and report.status == "champion"
    assert report.metrics["epochs"] == ws.config.training.max_epochs
    assert not (models_dir(ws) / "jobs" / "job-1.pt").exists()


def test_semi_supervised_training_learns_from_the_pool_never_from_validation_and_resumes(tmp_path, database_url):
    from al_loop.model.data import normalization, unlabelled_samples
    from al_loop.model.training import architecture
    from al_loop.rounds import next_round
    from tests.test_rounds import labelled_and_pool

    ws, store = labelled_and_pool(tmp_path / "ws", tmp_path / "pool", database_url)
    run_training(ws, store, quiet=True)
    handed_out = {p.patch_id for p in next_round(ws, store, size=4, strategy="random", quiet=True).patches}
    ws.config.training.semi_supervised = True
    with store.session() as session:
        data = split_samples(session, ws, None, "multiclass")
        pool = unlabelled_samples(session, ws, data.channels, data.val, 100, 0)
        labelled = {label.patch_id for label in session.scalars(select(Label))}
        pool_scene = session.scalars(select(Scene).where(Scene.name.like("LE07%"))).one().id
        assert len(unlabelled_samples(session, ws, data.channels, data.val, 3, 0)) == 3  # at most the limit asked
    ids = {s.patch_id for s in pool}
    assert ids and not ids & labelled and not ids & handed_out  # open rounds may validate: never used
    assert {s.scene_id for s in pool} == {pool_scene} and len(ids) == 16 - len(handed_out)
    report = run_training(ws, store, quiet=True)
    assert report.metrics["unlabelled_patches"] == len(pool)
    assert all(0 <= h["pseudo_labelled"] <= 1 for h in report.metrics["history"])
    # The same run again, and resumed from its checkpoint after epoch 1, teacher included.
    norm = normalization(data.train, data.channels)
    kwargs = dict(arch=architecture(ws.config.model), train_cfg=ws.config.training, unlabelled=pool,
                  class_names=("background", "clean_ice", "debris"), norm=norm, quiet=True)
    whole = train(data.train, data.val, **kwargs)
    calls = iter([False, True])
    with pytest.raises(TrainingCancelled):
        train(data.train, data.val, checkpoint=tmp_path / "job.pt", should_stop=lambda: next(calls), **kwargs)
    resumed = train(data.train, data.val, checkpoint=tmp_path / "job.pt", **kwargs)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    store.dispose()
