"""Ingesting the HKH slices/ layout, with the real masks and footprints."""

import numpy as np
import pytest
from sqlalchemy import func, select

from al_loop.classes import CLEAN_ICE
from al_loop.ingest import ingest_slices
from al_loop.patches import read_patch
from db.models import Label, Patch, Scene
from db.queries import unpack_mask


def _slices_folder(tmp_path, shared_data, with_orphan_mask=False):
    """Real masks and footprints; images made here (the real ones are not available)."""
    folder = tmp_path / "slices"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [("14", "062"), ("6", "072")]
    for tile, n in names[: 1 if with_orphan_mask else 2]:
        image = rng.uniform(20, 200, size=(512, 512, 15)).astype(np.float32)
        image[:, 100:140, :] = np.nan  # an SLC-off stripe
        np.save(folder / f"slice_{tile}_img_{n}.npy", image)
    for tile, n in names:
        (folder / f"slice_{tile}_mask_{n}.npy").symlink_to(
            shared_data / "lila_hkh" / "slices" / f"slice_{tile}_mask_{n}.npy"
        )
    return folder, shared_data / "lila_hkh" / "slices.geojson"


def test_slices_become_patches_with_their_real_masks_as_labels(tmp_path, shared_data, workspace, store):
    folder, footprints = _slices_folder(tmp_path, shared_data)
    result = ingest_slices(workspace, store, folder, footprints=footprints, quiet=True)
    assert result.patches == 2 and result.labels["created"] == 2
    with store.session() as session:
        scene = session.get(Scene, result.scene_id)
        assert "32643" in scene.crs
        patches = session.scalars(select(Patch).order_by(Patch.row_off)).all()
        for patch in patches:
            assert patch.valid_fraction == pytest.approx(1 - 40 / 512)
            assert patch.maxx - patch.minx == pytest.approx(512 * 29.65, rel=1e-3)
            pixels, valid = read_patch(workspace, patch, ["B2", "B5"])
            assert pixels.shape == (2, 512, 512) and not valid[:, 100:140].any()
            assert workspace.resolve(patch.quicklook_rgb).is_file()
        labels = session.scalars(select(Label).order_by(Label.patch_id)).all()
        assert sorted(lab.n_clean_ice for lab in labels) == [33, 697]
        assert all(lab.n_debris == 0 and lab.n_glacier == 0 for lab in labels)
        mask = unpack_mask(labels[0].mask, 512, 512)
        assert set(np.unique(mask)) <= {0, CLEAN_ICE}
    again = ingest_slices(workspace, store, folder, footprints=footprints, quiet=True)
    assert again.already_present and again.scene_id == result.scene_id


def test_masks_without_images_are_counted_not_ingested(tmp_path, shared_data, sqlite_workspace):
    from al_loop.workspace import open_store

    store = open_store(sqlite_workspace)
    folder, footprints = _slices_folder(tmp_path, shared_data, with_orphan_mask=True)
    result = ingest_slices(sqlite_workspace, store, folder, footprints=footprints, quiet=True)
    assert result.patches == 1 and result.labels["masks_without_image"] == 1
    store.dispose()


def test_a_bad_slice_is_refused_and_nothing_is_written(tmp_path, shared_data, workspace, store):
    folder, footprints = _slices_folder(tmp_path, shared_data)
    np.save(folder / "slice_6_img_072.npy", np.zeros((512, 512, 4), np.float32))
    with pytest.raises(ValueError, match=r"slice_6_img_072.npy.*expected .*15.*found \(512, 512, 4\)"):
        ingest_slices(workspace, store, folder, footprints=footprints, quiet=True)
    with store.session() as session:
        assert session.scalar(select(func.count(Patch.id))) == 0
        assert session.scalar(select(func.count(Label.id))) == 0
    assert not any(workspace.scenes_dir.glob("*"))
