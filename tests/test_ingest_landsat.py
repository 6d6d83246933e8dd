"""Raw Landsat 7 data into the store through the CLI: a 6-band ETM+ stack with a DEM on another
grid (the real Olinda files)."""

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from al_loop.bands import MissingChannelError
from al_loop.config import open_workspace
from al_loop.patches import read_patch
from al_loop.workspace import open_store
from cli import app
from db.models import Patch, Scene

runner = CliRunner()


@pytest.fixture
def olinda(shared_data):
    return shared_data / "landsat7_olinda"


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_band_stack_with_dem_is_built_ingested_and_idempotent(tmp_path, olinda, database_url):
    ws = tmp_path / "ws"
    assert _invoke("init", ws, "--database-url", database_url).exit_code == 0
    args = ("ingest", "scene", olinda / "L7_ETMs.tif", "--bands", "B1,B2,B3,B4,B5,B7",
            "--dem", olinda / "olinda_dem_utm25s.tif", "-w", ws, "-q")
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    assert "4 patches" in result.output  # 352 x 349 px in 256-px patches
    assert "lacks 4 of the 15 channels: B6_VCID_1, B6_VCID_2, B8, BQA" in " ".join(result.output.split())
    workspace = open_workspace(ws)
    store = open_store(workspace)
    with store.session() as session:
        scene = session.scalars(select(Scene)).one()
        assert scene.source_kind == "band_stack"
        assert scene.available_channels == ["B1", "B2", "B3", "B4", "B5", "B7", "ndvi", "ndsi", "ndwi",
                                            "elevation", "slope"]
        assert scene.details["missing_channels"] == ["B6_VCID_1", "B6_VCID_2", "B8", "BQA"]
        assert not scene.data_path.startswith("/")  # the derived stack lives in the workspace
        patch = session.scalars(select(Patch).where(Patch.row_off == 0, Patch.col_off == 0)).one()
        pixels, valid = read_patch(workspace, patch, ["ndsi", "elevation", "slope"])
        assert valid.any() and (pixels[1][valid] != 0).any()
        with pytest.raises(MissingChannelError, match="lacks channel.*B8"):
            read_patch(workspace, patch, ["B8"])
    again = _invoke(*args)
    assert again.exit_code == 0 and "already ingested" in again.output
    with store.session() as session:
        assert session.scalar(select(func.count(Scene.id))) == 1
    store.dispose()


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--bands", "B1,B2,B3"), "names 3 bands (B1, B2, B3) but the file has 6"),
        (("--bands", "B1,B2,B3,B4,B5,B9"), "B9"),
        (("--bands", "B1,B2,B3,B4,B5,B7", "--dem", "BALTORO"), "overlap"),
    ],
)
def test_bad_stacks_exit_2_naming_the_problem_and_write_nothing(tmp_path, olinda, shared_data, extra, message):
    ws = tmp_path / "ws"
    assert _invoke("init", ws).exit_code == 0
    extra = [shared_data / "oggm_hkh" / "baltoro_srtm_clip.tif" if e == "BALTORO" else e for e in extra]
    result = _invoke("ingest", "scene", olinda / "L7_ETMs.tif", *extra, "-w", ws, "-q")
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    store = open_store(open_workspace(ws))
    with store.session() as session:
        assert session.scalar(select(func.count(Scene.id))) == 0
    store.dispose()
    assert not any((ws / "scenes").glob("*")) and not any((ws / "staging").glob("*"))


def test_renamed_band_files_need_the_sensor_and_take_the_date_by_option(tmp_path):
    from al_loop.synthetic import make_level1_folder

    data = make_level1_folder(tmp_path / "data", height=300, width=300)
    renamed = tmp_path / "my scene"
    renamed.mkdir()
    for path in data.folder.iterdir():
        path.rename(renamed / path.name.replace("LE71400412000304SGS00", "khumbu"))
    ws = tmp_path / "ws"
    assert _invoke("init", ws).exit_code == 0
    refused = _invoke("ingest", "scene", renamed, "-w", ws)
    assert refused.exit_code == 2 and "--sensor (LT05, LE07, LC08 or LC09)" in " ".join(refused.output.split())
    other = _invoke("ingest", "scene", renamed, "--sensor", "LC08", "-w", ws)  # ETM+ files called OLI
    assert other.exit_code == 2 and "is 8-bit (uint8), but Landsat 8 OLI/TIRS Level-1 bands are 16-bit" in " ".join(
        other.output.split())
    unknown = _invoke("ingest", "scene", renamed, "--sensor", "MSS", "-w", ws)
    assert unknown.exit_code == 2 and "--sensor 'MSS': not a sensor al-loop knows" in " ".join(unknown.output.split())
    bad_date = _invoke("ingest", "scene", renamed, "--sensor", "LE07", "--date", "30/10/2000", "-w", ws)
    assert bad_date.exit_code == 2 and "--date '30/10/2000': expected YYYY-MM-DD" in bad_date.output
    result = _invoke("ingest", "scene", renamed, "--sensor", "L7", "--date", "2000-10-30", "-w", ws, "-q")
    assert result.exit_code == 0, result.output
    store = open_store(open_workspace(ws))
    with store.session() as session:
        scene = session.scalars(select(Scene)).one()
        assert (scene.sensor, str(scene.acquired)) == ("Landsat 7 ETM+", "2000-10-30")
        assert scene.available_channels == ["B1", "B2", "B3", "B4", "ndvi"]
    store.dispose()


def test_pre_collection_folder_is_ingested_with_its_date(tmp_path):
    from al_loop.synthetic import make_level1_folder

    data = make_level1_folder(tmp_path / "data", height=300, width=300)
    ws = tmp_path / "ws"
    assert _invoke("init", ws).exit_code == 0
    conflict = _invoke("ingest", "scene", data.folder, "--date", "2001-01-01", "-w", ws)
    assert conflict.exit_code == 2 and "acquired on 2000-10-30, --date says 2001-01-01" in conflict.output
    assert _invoke("ingest", "scene", data.folder, "-w", ws, "-q").exit_code == 0
    store = open_store(open_workspace(ws))
    with store.session() as session:
        scene = session.scalars(select(Scene)).one()
        assert (scene.sensor, str(scene.acquired), scene.source_kind) == ("Landsat 7 ETM+", "2000-10-30", "usgs_l1")
    store.dispose()
