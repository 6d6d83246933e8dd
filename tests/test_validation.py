"""The validation split: drawn from labelled patches only, stratified by class, routed for later
labels, shown to the user, and guarded against changed settings."""

import csv

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from al_loop.ingest import ingest_synthetic_scene
from al_loop.rounds import next_round
from al_loop.training_run import run_training
from al_loop.validation import Block, SplitSettingsChanged, assign_splits, choose_validation_blocks
from al_loop.workspace import open_store
from cli import app
from db.models import Label, Patch
from tests.test_rounds import pool_ws  # noqa: F401 (a fixture)


def _block(n, **pixels):
    return Block([object()] * n, {"background": 1000, **pixels})


def test_a_rare_class_is_drawn_into_validation_and_training_keeps_every_class():
    # Debris in two of twenty blocks, clean ice in six: both must be in validation and in training.
    blocks = {(0, i, 0): _block(2) for i in range(20)}
    for i in (3, 11):
        blocks[(0, i, 0)].pixels["debris"] = 500
    for i in (1, 3, 5, 8, 13, 17):
        blocks[(0, i, 0)].pixels["clean_ice"] = 2000
    for seed in range(5):
        chosen = choose_validation_blocks(blocks, 0.2, seed)
        val = {name for k in chosen for name in blocks[k].classes}
        train = {name for k in blocks if k not in chosen for name in blocks[k].classes}
        assert {"debris", "clean_ice"} <= val and {"debris", "clean_ice", "background"} <= train
        assert 3 <= len(chosen) <= 5  # about a fifth of the 40 patches, in blocks of 2
    assert choose_validation_blocks(blocks, 0.2, 0) == choose_validation_blocks(blocks, 0.2, 0)
    assert choose_validation_blocks(blocks, 0.2, 0) != choose_validation_blocks(blocks, 0.2, 1)


def test_a_class_in_one_block_stays_in_training_and_one_block_is_never_split():
    blocks = {("a",): _block(4, debris=50), ("b",): _block(4), ("c",): _block(4)}
    chosen = choose_validation_blocks(blocks, 0.3, 0)
    assert chosen and ("a",) not in chosen
    assert choose_validation_blocks({("a",): _block(5)}, 0.2, 0) == set()


def test_validation_comes_only_from_labelled_patches_and_holds_every_class(pool_ws):
    ws, store = pool_ws
    with store.session() as session:
        report = assign_splits(session, ws.config.training)
        labelled = set(session.scalars(select(Label.patch_id)))
        patches = session.scalars(select(Patch)).all()
        assert {p.id for p in patches if p.split} == labelled  # the pool scene is not split
        val = [p for p in patches if p.split == "val"]
        assert val and report.assigned["val"] == len(val) and report.assigned["train"] == len(labelled) - len(val)
        val_labels = session.scalars(select(Label).where(Label.patch_id.in_([p.id for p in val]))).all()
        assert sum(lab.n_clean_ice for lab in val_labels) > 0 and sum(lab.n_debris for lab in val_labels) > 0


def test_handed_out_patches_are_routed_and_the_handout_says_which_validate(pool_ws):
    ws, store = pool_ws
    run_training(ws, store, quiet=True)
    ws.config.training.validation_fraction = 0.5  # so that some new blocks go to validation
    chosen = next_round(ws, store, size=16, strategy="random", quiet=True)
    with store.session() as session:
        splits = {
            p.id: p.split
            for p in session.scalars(select(Patch).where(Patch.id.in_([c.patch_id for c in chosen.patches])))
        }
    assert set(splits.values()) == {"val", "train"}
    manifest = {int(r["patch_id"]): r["label_used_for"] for r in csv.DictReader(open(chosen.handout / "manifest.csv"))}
    assert manifest == {k: {"val": "validation", "train": "training"}[v] for k, v in splits.items()}
    by_block = {}
    for patch in chosen.patches:  # neighbours in one 256-px block never sit on both sides
        by_block.setdefault((patch.row_off // 256, patch.col_off // 256), set()).add(splits[patch.patch_id])
    assert all(len(v) == 1 for v in by_block.values())


def test_with_train_routing_new_labels_never_validate(pool_ws):
    ws, store = pool_ws
    run_training(ws, store, quiet=True)
    ws.config.training.validation_routing = "train"
    chosen = next_round(ws, store, size=16, strategy="random", quiet=True)
    with store.session() as session:
        assert {
            p.split for p in session.scalars(select(Patch).where(Patch.id.in_([c.patch_id for c in chosen.patches])))
        } == {"train"}


def test_a_changed_seed_redraws_before_any_model_and_is_refused_after(pool_ws):
    ws, store = pool_ws
    ws.config.training.validation_block = 128  # one patch per block: many equally good splits
    with store.session() as session:
        assign_splits(session, ws.config.training)
        first = {p.id: p.split for p in session.scalars(select(Patch).where(Patch.split.is_not(None)))}
    ws.config.training.validation_seed = 7
    with store.session() as session:
        assign_splits(session, ws.config.training)
        second = {p.id: p.split for p in session.scalars(select(Patch).where(Patch.split.is_not(None)))}
    assert first.keys() == second.keys() and first != second  # re-drawn
    run_training(ws, store, quiet=True)
    ws.config.training.validation_seed = 0
    with pytest.raises(SplitSettingsChanged, match=r"validation_seed 7 -> 0.*v1.*training.validation_seed = 7"):
        run_training(ws, store, quiet=True)
    ws.config.training.validation_seed = 7
    ws.config.training.validation_fraction = 0.3  # the fraction only routes later labels: allowed
    with store.session() as session:
        assign_splits(session, ws.config.training)
        assert {p.id: p.split for p in session.scalars(select(Patch).where(Patch.split.is_not(None)))} == second


def test_labels_in_one_block_hold_out_single_patches_and_say_so(tmp_path):
    from al_loop.workspace import init_workspace
    from tests.test_training import _small

    ws = _small(init_workspace(tmp_path / "ws"))
    ws.config.training.validation_block = 4096  # the whole scene is one block
    store = open_store(ws)
    ingest_synthetic_scene(ws, store, size=512, seed=0, quiet=True)
    report = run_training(ws, store, quiet=True)
    assert report.status == "champion" and "single patches are held out" in report.notes[0]
    store.dispose()


def test_status_and_models_show_which_labels_validate(pool_ws):
    ws, store = pool_ws
    run_training(ws, store, quiet=True)
    env = {"AL_LOOP_WORKSPACE": str(ws.root), "COLUMNS": "200", "AL_LOOP_DATABASE_URL": ws.database_url,
           "AL_LOOP_TRAINING_VALIDATION_BLOCK": str(ws.config.training.validation_block)}
    status = CliRunner().invoke(app, ["status"], env=env)
    assert status.exit_code == 0, status.output
    assert "validation: labelled patches by split" in status.output
    assert "validation │ inventory" in status.output and "training   │ inventory" in status.output
    assert "newest version v1 (champion): promoted" in status.output
    models = CliRunner().invoke(app, ["models"], env=env)
    assert models.exit_code == 0, models.output
    assert "IoU on the current validation set" in models.output and "v1" in models.output
