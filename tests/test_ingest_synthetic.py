"""The built-in synthetic scene through the CLI: what `al-loop demo` brings up."""

import numpy as np
import rasterio
from sqlalchemy import select
from typer.testing import CliRunner

from al_loop.config import open_workspace
from al_loop.patches import read_patch
from al_loop.workspace import open_store
from cli import app
from db.models import Label, Patch, Scene
from db.queries import unpack_mask


def test_synthetic_scene_is_ingested_with_exact_labels(tmp_path, database_url):
    runner = CliRunner()
    ws = tmp_path / "ws"
    assert runner.invoke(app, ["init", str(ws), "--database-url", database_url]).exit_code == 0
    result = runner.invoke(app, ["ingest", "synthetic", "--size", "512", "--seed", "3", "-w", str(ws), "-q"])
    assert result.exit_code == 0, result.output
    workspace = open_workspace(ws)
    store = open_store(workspace)
    with store.session() as session:
        scene = session.scalars(select(Scene)).one()
        label_file = workspace.resolve(scene.data_path).with_name(f"{scene.name}_labels.tif")
        with rasterio.open(label_file) as src:
            truth = src.read(1)
        for patch in session.scalars(select(Patch)):
            (label,) = patch.labels
            mask = unpack_mask(label.mask, patch.height, patch.width)
            window = truth[patch.row_off : patch.row_off + patch.height, patch.col_off : patch.col_off + patch.width]
            assert np.array_equal(mask, window)
            pixels, valid = read_patch(workspace, patch, ["B5", "slope"])
            assert 0 < patch.valid_fraction == valid.mean() < 1  # SLC-off stripes
        assert session.scalar(select(Label.n_debris)) > 0
    store.dispose()
    again = runner.invoke(app, ["ingest", "synthetic", "--size", "512", "--seed", "3", "-w", str(ws), "-q"])
    assert "already ingested" in again.output
    status = runner.invoke(app, ["status", "-w", str(ws)], env={"COLUMNS": "120"})
    assert status.exit_code == 0
    assert "synthetic-512-seed3" in status.output and "inventory" in status.output
