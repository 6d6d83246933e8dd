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
    assert "1 patches" in result.output
    workspace = open_workspace(ws)
    store = open_store(workspace)
    with store.session() as session:
        scene = session.scalars(select(Scene)).one()
        assert scene.source_kind == "band_stack"
        assert scene.available_channels == ["B1", "B2", "B3", "B4", "B5", "B7", "ndvi", "ndsi", "ndwi", "elevation", "slope"]
        assert scene.details["missing_channels"] == ["B6_VCID_1", "B6_VCID_2", "B8", "BQA"]
        assert not scene.data_path.startswith("/")  # the derived stack lives in the workspace
        patch = session.scalars(select(Patch)).one()
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
