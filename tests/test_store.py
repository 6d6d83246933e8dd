"""The SQL store, against SQLite and PostgreSQL."""

import numpy as np
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from al_loop.classes import CLEAN_ICE, DEBRIS, UNLABELED
from al_loop.workspace import init_workspace, open_store
from db import queries, registry
from db.models import Label, ModelVersion, Patch, Scene
from db.session import SchemaError, current_revision, head_revision


def _scene(session, fingerprint="f" * 64):
    scene = Scene(
        name="s", source_kind="synthetic", source_uri="mem", fingerprint=fingerprint,
        width=8, height=8, channels=["B1"], available_channels=["B1"],
    )
    patch = Patch(scene=scene, row_off=0, col_off=0, height=4, width=4, valid_fraction=1.0)
    session.add_all([scene, patch])
    session.flush()
    return scene, patch


def test_init_brings_the_schema_to_head_and_is_repeatable(workspace, store):
    assert current_revision(store.engine) == head_revision()
    init_workspace(workspace.root)  # again: nothing to do, nothing lost
    assert current_revision(store.engine) == head_revision()


def test_a_workspace_from_a_newer_schema_is_refused(workspace, store):
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'from_the_future'"))
    with pytest.raises(SchemaError, match="newer al-loop"):
        open_store(workspace)
    with pytest.raises(SchemaError, match="from_the_future"):
        init_workspace(workspace.root)


def test_label_revisions_are_idempotent_and_keep_history(store):
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[1:3, 1:3] = CLEAN_ICE
    with store.session() as session:
        _, patch = _scene(session)
        first, what = queries.save_label(session, patch, mask, source="annotation", origin="ls:1", author="ana")
        assert what == "created" and first.revision == 1 and first.n_clean_ice == 4
        again, what = queries.save_label(session, patch, mask.copy(), source="annotation", origin="ls:1")
        assert what == "unchanged" and again.id == first.id
        edited = mask.copy()
        edited[0, 0] = DEBRIS
        second, what = queries.save_label(session, patch, edited, source="annotation", origin="ls:1")
        assert what == "revised" and second.revision == 2
    with store.session() as session:
        rows = session.scalars(select(Label).order_by(Label.revision)).all()
        assert [(r.revision, r.status) for r in rows] == [(1, "superseded"), (2, "accepted")]
        assert np.array_equal(queries.unpack_mask(rows[1].mask, 4, 4), edited)
        assert rows[1].n_debris == 1 and rows[1].n_clean_ice == 4


def test_bad_label_masks_are_refused_and_nothing_is_stored(store):
    with store.session() as session:
        _scene(session)
    with store.session() as session:
        patch = session.scalars(select(Patch)).one()
        with pytest.raises(ValueError, match=r"shape \(3, 4\), expected \(4, 4\)"):
            queries.save_label(session, patch, np.zeros((3, 4), np.uint8), source="oracle", origin="o")
        with pytest.raises(ValueError, match=r"unknown class codes \[7\]"):
            queries.save_label(session, patch, np.full((4, 4), 7, np.uint8), source="oracle", origin="o")
    with store.session() as session:
        assert session.scalar(select(Label)) is None


def test_scene_fingerprints_are_unique(store):
    with store.session() as session:
        _scene(session)
    with pytest.raises(IntegrityError):
        with store.session() as session:
            _scene(session)
    with store.session() as session:
        assert len(session.scalars(select(Scene)).all()) == 1


def test_model_versions_keep_the_labels_they_were_trained_on(store):
    mask = np.full((4, 4), UNLABELED, dtype=np.uint8)
    with store.session() as session:
        _, patch = _scene(session)
        label, _ = queries.save_label(session, patch, mask, source="inventory", origin="file")
        parent = ModelVersion(name="v1", channels=["B1"], classes=["background", "clean_ice", "debris"])
        child = ModelVersion(name="v2", parent_id=None, channels=["B1"], classes=["background"], labels=[label])
        session.add_all([parent, child])
        session.flush()
        child.parent_id = parent.id
    with store.session() as session:
        child = session.scalars(select(ModelVersion).where(ModelVersion.name == "v2")).one()
        assert [lab.origin for lab in child.labels] == ["file"]
        assert child.parent_id is not None and child.status == "candidate"


def test_the_version_asked_for_or_the_champion_and_what_to_do_without_one(store):
    with store.session() as session:
        with pytest.raises(registry.RegistryError, match=r"no champion model yet: train one with `al-loop train`"):
            registry.version_or_champion(session)
        session.add(ModelVersion(name="v1", channels=["B1"], classes=["background", "glacier"]))
        session.flush()
        with pytest.raises(registry.RegistryError, match=r"no champion model yet"):  # a candidate serves nobody
            registry.version_or_champion(session)
        assert registry.version_or_champion(session, "v1").name == "v1"
        with pytest.raises(registry.RegistryError, match=r"no model version 'v9'; versions: v1"):
            registry.version_or_champion(session, "v9")
        registry.promote(session, registry.version(session, "v1"))
        assert registry.version_or_champion(session).name == "v1"


def test_status_summary_counts_scenes_patches_and_labels(store):
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[0] = DEBRIS
    with store.session() as session:
        _, patch = _scene(session)
        queries.save_label(session, patch, mask, source="inventory", origin="file")
    with store.session() as session:
        summary = queries.status_summary(session)
    assert summary["scenes"][0]["patches"] == 1
    assert summary["labels"] == [
        {"source": "inventory", "labels": 1, "patches": 1, "background": 12, "clean_ice": 0, "debris": 4, "glacier": 0}
    ]
    assert summary["rounds"] == 0 and summary["models"] == {}
