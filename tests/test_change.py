"""`al-loop change` on two synthetic dates of the same ground with a known retreat: with exact
labels the measured change is the truth; from the model alone the truth lies in the stated band
for every glacier that is not flagged; the synthetic generator's retreat and weather."""

from __future__ import annotations

import csv
import datetime as dt

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

import cli
from al_loop.change import run
from al_loop.export import rasterize_inventory
from al_loop.ingest import ingest_hkh_tile
from al_loop.io.inventory import read_inventory
from al_loop.label_ingest import ingest_labels
from al_loop.synthetic import generate, make_scene
from al_loop.training_run import run_training
from al_loop.workspace import init_workspace, open_store
from tests.test_export import _inventory
from tests.test_rounds import labelled_and_pool
from tests.test_training import _small

RETREAT_PX = 3
DATES = (dt.date(2000, 10, 12), dt.date(2020, 10, 12))


def _dates(root):
    """The same ground (seed 5) in 2000 and, after a retreat of RETREAT_PX pixels, in 2020."""
    first = make_scene(root / "a", height=384, seed=5, name="LE07_145039_20001012")
    second = make_scene(root / "b", height=384, seed=5, name="LE07_145039_20201012", retreat_px=RETREAT_PX,
                        date=DATES[1])
    return first, second


def _truth(scenes, inventory) -> dict[str, float]:
    """True glacier area change (km²) per inventory glacier, from the scenes' exact labels."""
    with rasterio.open(scenes[0].label_raster) as src:
        before, crs, transform = src.read(1), src.crs.to_wkt(), src.transform
    with rasterio.open(scenes[1].label_raster) as src:
        after = src.read(1)
    outlines = read_inventory(inventory, crs)
    owners = rasterize_inventory(outlines, transform, before.shape)
    n = len(outlines.ids) + 1
    loss = (np.bincount(owners[after > 0], minlength=n) - np.bincount(owners[before > 0], minlength=n)) * 900 / 1e6
    return {glacier: loss[i] for i, glacier in enumerate(outlines.ids, start=1)}


@pytest.fixture(scope="module")
def modelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("change")
    ws, store = labelled_and_pool(root / "ws", root / "pool", pool_height=384, mc_samples=2)
    ws.config.training.max_epochs = 20  # a model that finds glaciers: the band is about its doubt
    run_training(ws, store, quiet=True)
    scenes = _dates(root)
    ids = [ingest_hkh_tile(ws, store, s.image, quiet=True).scene_id for s in scenes]
    yield ws, store, root, scenes, ids, _inventory(root / "rgi.gpkg", scenes[0])
    store.dispose()


def test_the_synthetic_retreat_shrinks_glaciers_over_the_same_ground_under_other_weather():
    pixels, labels, dem = generate(128, 128, 3)
    later_pixels, later_labels, later_dem = generate(128, 128, 3, retreat_px=2, date=DATES[1])
    np.testing.assert_array_equal(dem, later_dem)
    assert not ((later_labels > 0) & (labels == 0)).any()  # no new ice
    assert 0 < (later_labels > 0).sum() < (labels > 0).sum()
    assert not np.array_equal(pixels[0] == 0, later_pixels[0] == 0)  # other SLC-off gaps


def test_with_exact_labels_the_measured_change_is_the_truth(tmp_path):
    ws = _small(init_workspace(tmp_path / "ws"))
    store = open_store(ws)
    scenes = _dates(tmp_path)
    ids = []
    for scene in scenes:
        ids.append(ingest_hkh_tile(ws, store, scene.image, quiet=True).scene_id)
        ingest_labels(ws, store, scene.label_raster, scene_ids=[ids[-1]],
                      raster_values={0: "background", 1: "clean_ice", 2: "debris"}, quiet=True)
    inventory = _inventory(tmp_path / "rgi.gpkg", scenes[0])
    rows, found, out = run(ws, store, ids, inventory, tmp_path / "change")
    truth = _truth(scenes, inventory)
    assert not any(r.flagged for r in rows)  # labels leave no gap
    measured = {c.glacier: c for c in found if c.glacier != "region"}
    assert set(measured) == set(truth)
    for glacier, c in measured.items():
        assert c.delta_km2 == pytest.approx(truth[glacier], abs=1e-9)
        assert c.low_km2 == pytest.approx(c.delta_km2) and c.high_km2 == pytest.approx(c.delta_km2)
    region = next(c for c in found if c.glacier == "region")
    assert region.delta_km2 == pytest.approx(sum(truth.values())) and region.delta_km2 < 0
    store.dispose()


def test_from_the_model_the_truth_lies_in_the_band_and_thin_dates_are_flagged(modelled):
    ws, store, root, scenes, ids, inventory = modelled
    rows, found, out = run(ws, store, ids, inventory, root / "out")
    truth = _truth(scenes, inventory)
    per_glacier = [c for c in found if c.glacier != "region"]
    assert len(per_glacier) >= 3
    for c in per_glacier:
        assert c.low_km2 <= truth[c.glacier] <= c.high_km2, c
    region = next(c for c in found if c.glacier == "region")
    counted = [c.glacier for c in per_glacier]
    assert region.glaciers == len(counted)
    assert region.low_km2 <= sum(truth[g] for g in counted) <= region.high_km2
    flagged = {r.glacier for r in rows if r.flagged}
    assert not flagged & set(counted)  # a flagged glacier-date is never in a change
    written = list(csv.DictReader(open(out / "areas.csv")))
    assert len(written) == len(rows) and {"valid_fraction", "flagged", "low_km2", "high_km2"} <= set(written[0])
    assert (out / "region.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((out / "glaciers").glob("*.png"))) == len({r.glacier for r in rows})
    strict = run(ws, store, ids, inventory, root / "strict", min_valid=0.99)[0]
    assert all(r.flagged for r in strict)


def test_the_change_command_and_its_errors(modelled, tmp_path):
    ws, _, _, _, ids, inventory = modelled
    runner = CliRunner()
    ok = runner.invoke(cli.app, ["change", *map(str, ids), "--inventory", str(inventory), "--out", str(tmp_path),
                                 "-w", str(ws.root)])
    assert ok.exit_code == 0, ok.output
    assert "region, 2000-10-12 -> 2020-10-12" in ok.output
    one = runner.invoke(cli.app, ["change", str(ids[0]), "--inventory", str(inventory), "-w", str(ws.root)])
    assert one.exit_code == 2 and "at least two scenes" in one.output
    bad = runner.invoke(cli.app, ["change", *map(str, ids), "--inventory", str(inventory), "--min-valid", "2",
                                  "-w", str(ws.root)])
    assert bad.exit_code == 2 and "--min-valid" in bad.output
    undated = runner.invoke(cli.app, ["change", "1", str(ids[0]), "--inventory", str(inventory), "-w", str(ws.root)])
    assert undated.exit_code == 2 and "no acquisition date" in undated.output
