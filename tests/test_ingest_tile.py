"""Ingesting HKH fused tiles: the real clip, idempotency, a moved workspace, bad input."""

import shutil

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin
from sqlalchemy import func, select
from typer.testing import CliRunner

from al_loop import bands
from al_loop.bands import BandNameError
from al_loop.config import open_workspace
from al_loop.ingest import ingest_hkh_tile
from al_loop.io.rasters import RasterInputError
from al_loop.patches import read_patch
from al_loop.workspace import open_store
from cli import app
from db.models import Patch, Scene


def _nothing_written(workspace, store):
    with store.session() as session:
        assert session.scalar(select(func.count(Scene.id))) == 0
        assert session.scalar(select(func.count(Patch.id))) == 0
    assert not any(workspace.scenes_dir.glob("*")) if workspace.scenes_dir.exists() else True
    assert not any(workspace.staging_dir.glob("*")) if workspace.staging_dir.exists() else True


def test_real_clip_is_cut_into_patches_with_valid_fractions(shared_data, workspace, store):
    clip = shared_data / "lila_hkh" / "LE07_134040_20070922_clip.tif"
    workspace.config.ingest.patch_size = 64
    result = ingest_hkh_tile(workspace, store, clip, quiet=True)
    with rasterio.open(clip) as src:
        pixels = src.read()
        assert tuple(src.descriptions) == bands.CHANNELS
    # 169 rows x 139 cols in 64-pixel patches, the last row and column reaching past the edges
    # (read as nodata there)
    pixels = np.pad(pixels, ((0, 0), (0, 3 * 64 - 169), (0, 3 * 64 - 139)))
    valid = bands.valid_mask(pixels)
    assert result.patches == 3 * 3 and not result.already_present
    with store.session() as session:
        scene = session.get(Scene, result.scene_id)
        assert scene.sensor == "Landsat 7 ETM+" and str(scene.acquired) == "2007-09-22"
        assert scene.available_channels == list(bands.CHANNELS)
        assert scene.data_path == str(clip.resolve())  # read in place, not copied
        for patch in scene.patches:
            window = valid[patch.row_off : patch.row_off + 64, patch.col_off : patch.col_off + 64]
            assert patch.valid_fraction == pytest.approx(window.mean())
            assert patch.low_valid == (window.mean() < workspace.config.ingest.min_valid_fraction)
            got, got_valid = read_patch(workspace, patch, ["B5", "ndsi"])
            assert np.array_equal(got_valid, window)
            expected = pixels[[4, 11], patch.row_off : patch.row_off + 64, patch.col_off : patch.col_off + 64]
            assert np.array_equal(got, expected)
            quicklook = Image.open(workspace.resolve(patch.quicklook_false))
            assert quicklook.mode == "RGBA" and quicklook.size == (64, 64)
            alpha = np.asarray(quicklook)[..., 3]
            assert np.array_equal(alpha > 0, window)  # nodata is transparent


def test_a_scene_smaller_than_a_patch_reads_as_nodata_past_its_edge(shared_data, sqlite_workspace):
    sqlite_workspace.config.ingest.patch_size = 512
    store = open_store(sqlite_workspace)
    result = ingest_hkh_tile(
        sqlite_workspace, store, shared_data / "lila_hkh" / "LE07_134040_20070922_clip.tif", quiet=True
    )
    with store.session() as session:
        patch = session.scalars(select(Patch)).one()
        pixels, valid = read_patch(sqlite_workspace, patch, ["B1"])
    assert pixels.shape == (1, 512, 512) and result.patches == 1
    assert not valid[169:].any() and not valid[:, 139:].any()
    assert patch.valid_fraction == pytest.approx(0.6403 * 139 * 169 / 512**2, rel=1e-3)
    assert patch.low_valid  # 5.7% valid
    store.dispose()


def test_reingesting_the_same_tile_changes_nothing(shared_data, workspace, store):
    clip = shared_data / "lila_hkh" / "LE07_134040_20070922_clip.tif"
    first = ingest_hkh_tile(workspace, store, clip, quiet=True)
    again = ingest_hkh_tile(workspace, store, clip, quiet=True)
    assert again.already_present and again.scene_id == first.scene_id and again.patches == first.patches
    with store.session() as session:
        assert session.scalar(select(func.count(Patch.id))) == first.patches


def test_a_moved_workspace_still_reads_its_patches(shared_data, tmp_path):
    from al_loop.workspace import init_workspace

    workspace = init_workspace(tmp_path / "before")
    store = open_store(workspace)
    ingest_hkh_tile(workspace, store, shared_data / "lila_hkh" / "LE07_134040_20070922_clip.tif", quiet=True)
    store.dispose()
    shutil.move(tmp_path / "before", tmp_path / "after")
    moved = open_workspace(tmp_path / "after")
    store = open_store(moved)
    with store.session() as session:
        patch = session.scalars(select(Patch)).one()
        assert moved.resolve(patch.quicklook_rgb).is_file()
        pixels, _ = read_patch(moved, patch, ["elevation"])
    assert np.nanmax(pixels) > 2000
    store.dispose()


def test_asking_for_a_channel_the_scene_lacks_is_a_clear_error(shared_data, sqlite_workspace):
    store = open_store(sqlite_workspace)
    ingest_hkh_tile(sqlite_workspace, store, shared_data / "lila_hkh" / "LE07_134040_20070922_clip.tif", quiet=True)
    with store.session() as session:
        patch = session.scalars(select(Patch)).one()
        with pytest.raises(bands.MissingChannelError, match="unknown channel name"):
            read_patch(sqlite_workspace, patch, ["B9"])
        patch.scene.available_channels = [c for c in bands.CHANNELS if c != "slope"]
        with pytest.raises(bands.MissingChannelError, match="lacks channel.*slope"):
            read_patch(sqlite_workspace, patch, ["B1", "slope"])
    store.dispose()


def _write(path, count=15, crs="EPSG:32645", descriptions=bands.CHANNELS):
    profile = dict(driver="GTiff", width=40, height=30, count=count, dtype="float32",
                   transform=from_origin(500000, 3000000, 30, 30))
    if crs:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((count, 30, 40), 50, dtype=np.float32))
        for i, name in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, name)
    return path


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda p: (p.write_text("not a raster"), p)[1], RasterInputError, "not a readable raster"),
        (lambda p: _write(p, crs=None), RasterInputError, "no CRS"),
        (lambda p: _write(p, count=3, descriptions=["red", "green", "blue"]), BandNameError, "do not "
                                                                                             "match the HKH channels"),
        (lambda p: _write(p, count=6, descriptions=None), BandNameError, "bands have no names"),
    ],
)
def test_bad_scenes_are_refused_naming_the_file_and_nothing_is_written(
    tmp_path, workspace, store, make, error, message
):
    path = make(tmp_path / "bad.tif")
    with pytest.raises(error, match=message) as info:
        ingest_hkh_tile(workspace, store, path, quiet=True)
    assert "bad.tif" in str(info.value)
    _nothing_written(workspace, store)


def test_a_truncated_tile_is_refused_and_nothing_is_written(shared_data, tmp_path, sqlite_workspace):
    clip = shared_data / "lila_hkh" / "LE07_134040_20070922_clip.tif"
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    store = open_store(sqlite_workspace)
    with pytest.raises(RasterInputError, match="truncated.tif"):
        ingest_hkh_tile(sqlite_workspace, store, truncated, quiet=True)
    _nothing_written(sqlite_workspace, store)
    store.dispose()


def test_cli_reports_bad_input_with_exit_code_2(tmp_path):
    runner = CliRunner()
    ws = tmp_path / "ws"
    assert runner.invoke(app, ["init", str(ws)]).exit_code == 0
    bad = _write(tmp_path / "rgb.tif", count=3, descriptions=["red", "green", "blue"])
    result = runner.invoke(app, ["ingest", "scene", str(bad), "--workspace", str(ws)])
    assert result.exit_code == 2
    assert "rgb.tif" in result.output and "do not match" in result.output
    result = runner.invoke(app, ["status"], env={"AL_LOOP_WORKSPACE": str(tmp_path / "nowhere")})
    assert result.exit_code == 2 and "not an al-loop workspace" in result.output
