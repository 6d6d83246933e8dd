"""Landsat 5 TM and 8/9 OLI scenes in the ETM+ layout: the conversions keep what the sensors
measured (reflectance, brightness temperature), the synthesised pan matches a real ETM+ pan, and
a model trained on ETM+ maps a TM and an OLI scene of the same ground as it maps the ETM+ one."""

from __future__ import annotations

import csv
import datetime as dt
import math

import numpy as np
import pytest
import rasterio
from sqlalchemy import select
from typer.testing import CliRunner

import cli
from al_loop import bands, sensors
from al_loop.config import open_workspace
from al_loop.io import landsat
from al_loop.io.rasters import RasterInputError
from al_loop.prediction import NODATA_CLASS, predict_scene_file
from al_loop.synthetic import make_level1_folder
from al_loop.training_run import run_training
from al_loop.workspace import open_store
from db.models import Scene
from tests.test_rounds import labelled_and_pool

CLIP = "lila_hkh/LE07_134040_20070922_clip.tif"
ALL_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6_VCID_1", "B6_VCID_2", "B7", "B8", "BQA")
SCENES = {  # the same ground and weather, as each sensor recorded it
    "LE07": "LE07_L1TP_140041_20001012_20170209_01_T1",
    "LT05": "LT05_L1TP_140041_19901012_20200916_02_T1",
    "LC08": "LC08_L1TP_140041_20201012_20201019_02_T1",
}


def _etm_scene(rng, shape=(64, 64)) -> dict[str, np.ndarray]:
    """ETM+ DN a sensor can record without saturating: reflective 20-240, thermal -25 to +35 C
    (within the high thermal gain's range)."""
    channels = {c: rng.integers(20, 240, shape).astype(np.float32) for c in ("B1", "B2", "B3", "B4", "B5", "B7")}
    channels["B6_VCID_1"] = rng.integers(80, 170, shape).astype(np.float32)
    channels["BQA"] = rng.choice([672, 2720, 2976], shape).astype(np.float32)
    return channels


@pytest.mark.parametrize("sensor", [sensors.TM5, sensors.OLI8, sensors.OLI9], ids=lambda s: s.code)
def test_a_scene_recorded_by_another_sensor_comes_back_as_the_etm_dn(sensor):
    etm = _etm_scene(np.random.default_rng(1))
    etm["B1"][0, :4] = 0  # fill stays fill
    cal = sensors.calibration(sensor, dt.date(2020, 7, 4))
    own = sensors.from_etm(etm, sensor, cal)
    assert set(own) == {*(sensor.optical[c] for c in ("B1", "B2", "B3", "B4", "B5", "B7")), sensor.thermal, "BQA"}
    back = sensors.to_etm(own, sensor, cal)
    for channel in ("B1", "B2", "B3", "B4", "B5", "B7"):
        # TM's steps are up to 1.9x coarser than ETM+ high gain; OLI's 12 bits are finer
        assert np.abs(back[channel] - etm[channel]).max() <= (1 if sensor.bits == 8 else 0), channel
    assert (back["B1"][0, :4] == 0).all() and (back["B1"][1:] > 0).all()
    np.testing.assert_array_equal(back["BQA"], etm["BQA"])
    # both ETM+ thermal gains carry the brightness temperature the sensor measured
    truth = bands.brightness_temperature(etm["B6_VCID_1"])
    for channel, step in (("B6_VCID_1", 0.6), ("B6_VCID_2", 0.5)):
        assert np.abs(bands.brightness_temperature(back[channel], channel) - truth).max() <= step, channel
    assert back["B8"].shape == etm["B1"].shape and (back["B8"][1:] > 0).all()  # the pan is synthesised


def test_oli_reflectance_becomes_the_etm_radiance_of_the_same_reflectance():
    """An OLI blue DN of 10,000 is a reflectance (times the sun's sine) of 0.1; the ETM+ blue DN
    it becomes is the reflectance ETM+ measures where OLI measures 0.1 (OLI = 0.9785 ETM+ - 0.0095,
    Roy et al. 2016), at ETM+ high gain, under the same sun, on the same day."""
    day = dt.date(2020, 1, 3)  # perihelion: 0.9833 AU
    assert sensors.earth_sun_distance(day) == pytest.approx(0.9833, abs=2e-4)
    assert sensors.earth_sun_distance(dt.date(2020, 7, 4)) == pytest.approx(1.0167, abs=2e-4)
    cal = sensors.calibration(sensors.OLI8, day)
    etm = sensors.to_etm({"B2": np.array([[10000.0]])}, sensors.OLI8, cal)["B1"]
    lmin, lmax = -6.2, 191.6  # ETM+ band 1, high gain (Landsat 7 handbook)
    radiance = lmin + (etm - 1) * (lmax - lmin) / 254
    reflectance = math.pi * radiance * 0.9833**2 / 1997.0  # ETM+ band 1 solar irradiance
    half_step = 0.5 * (lmax - lmin) / 254 * math.pi * 0.9833**2 / 1997.0
    assert float(reflectance[0, 0]) == pytest.approx((0.1 + 0.0095) / 0.9785, abs=half_step)


def test_the_scene_mtl_overrides_the_published_constants():
    mtl = {"RADIANCE_MULT_BAND_3": "1.2", "RADIANCE_ADD_BAND_3": "-2.0", "K1_CONSTANT_BAND_6": "600.0",
           "K2_CONSTANT_BAND_6": "1250.0", "EARTH_SUN_DISTANCE": "0.99"}
    cal = sensors.calibration(sensors.TM5, None, mtl)
    assert cal.radiance["B3"] == (1.2, -2.0) and cal.thermal == (600.0, 1250.0) and cal.earth_sun_au == 0.99
    assert cal.source == "MTL file" and cal.radiance["B1"] != (1.2, -2.0)
    published = sensors.calibration(sensors.TM5, None)
    assert published.source == "published constants" and published.earth_sun_au == 1.0
    brighter = sensors.to_etm({"B3": np.array([[100.0]])}, sensors.TM5, cal)["B3"]
    assert brighter > sensors.to_etm({"B3": np.array([[100.0]])}, sensors.TM5, published)["B3"]


def test_the_pan_synthesised_from_green_red_and_nir_matches_the_real_tiles_pan(shared_data):
    """On the real HKH tile, the ETM+ pan made from B2-B4 (in the gains al-loop assumes for the
    tiles) is within a few DN of the pan the sensor measured, with almost no bias."""
    with rasterio.open(shared_data / CLIP) as src:
        pixels = {name: src.read(i + 1).astype(np.float32) for i, name in enumerate(src.descriptions[:9])}
    measured = pixels["B8"]
    unsaturated = (pixels["B1"] > 0) & (np.stack([pixels[c] for c in ("B2", "B3", "B4", "B8")]) < 250).all(axis=0)
    assert unsaturated.sum() > 10_000
    error = (sensors.synthesised_pan(pixels) - measured)[unsaturated]
    assert abs(error.mean()) < 1.5 and np.abs(error).mean() < 5
    assert np.corrcoef(sensors.synthesised_pan(pixels)[unsaturated], measured[unsaturated])[0, 1] > 0.97


def test_level1_folders_of_tm_and_oli_are_found_with_their_bands(tmp_path):
    oli = tmp_path / "oli"
    oli.mkdir()
    scene = "LC09_L1TP_140041_20220912_20230401_02_T1"
    for band in ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11", "QA_PIXEL", "MTL"):
        (oli / f"{scene}_{band}.{'txt' if band == 'MTL' else 'TIF'}").write_text("EARTH_SUN_DISTANCE = 1.0061\n")
    found = landsat.find_level1_scene(oli)
    assert found.sensor == "Landsat 9 OLI-2/TIRS-2" and found.acquired == dt.date(2022, 9, 12)
    assert found.mtl == {"EARTH_SUN_DISTANCE": "1.0061"}
    used = [s.name for s in found.sources(sensors.OLI9)]
    assert used == ["B2", "B3", "B4", "B5", "B6", "B7", "B10", "BQA"]  # coastal, pan, cirrus, B11 left out
    tm = tmp_path / "tm"
    tm.mkdir()
    for band in ("B1", "B6", "B7", "B8"):
        (tm / f"LT51400411990255ISP00_{band}.TIF").touch()
    found = landsat.find_level1_scene(tm)
    assert found.sensor == "Landsat 5 TM" and found.acquired == dt.date(1990, 9, 12)
    with pytest.raises(RasterInputError, match=r"_B8\.TIF: Landsat 5 TM has no band B8"):
        found.sources(sensors.TM5)


@pytest.fixture(scope="module")
def three_sensors(tmp_path_factory):
    """A model trained on synthetic ETM+ tiles, and one ground seen by ETM+, TM and OLI, each
    ingested through the CLI from its Level-1 folder (with a DEM) and predicted."""
    root = tmp_path_factory.mktemp("sensors")
    ws, store = labelled_and_pool(root / "ws", root / "pool", pool_height=256, mc_samples=2)
    ws.config.training.max_epochs = 12
    run_training(ws, store, quiet=True)
    store.dispose()
    runner, scenes = CliRunner(), {}
    for code, scene_id in SCENES.items():
        delivered = ALL_BANDS if code == "LE07" else tuple(b for b in ALL_BANDS if b not in ("B6_VCID_2", "B8"))
        data = make_level1_folder(root / code, height=256, width=256, seed=4, band_names=delivered,
                                  scene_id=scene_id, outline_fraction=1.0, with_dem=True)
        result = runner.invoke(cli.app, ["ingest", "scene", str(data.folder), "--dem", str(data.dem),
                                         "-w", str(ws.root), "-q"])
        assert result.exit_code == 0, result.output
        scenes[code] = data
    workspace = open_workspace(ws.root)
    store = open_store(workspace)
    with store.session() as session:
        rows = {s.name: (s.id, s.sensor, s.details, s.available_channels) for s in session.scalars(select(Scene))}
    predictions = {}
    for code, scene_id in SCENES.items():
        scene, sensor, details, available = rows[scene_id]
        out = predict_scene_file(workspace, store, scene, out=root / f"{code}.tif")
        with rasterio.open(out) as src:
            predictions[code] = src.read(1)
        predictions[code + "_meta"] = (sensor, details, available)
    store.dispose()
    yield scenes, predictions, ws.root, {code: rows[scene_id][0] for code, scene_id in SCENES.items()}


def _iou(predicted, truth, valid, classes):
    a, b = np.isin(predicted, classes) & valid, np.isin(truth, classes) & valid
    return (a & b).sum() / max((a | b).sum(), 1)


def test_a_model_trained_on_etm_maps_tm_and_oli_scenes_of_the_same_ground_alike(three_sensors):
    scenes, predictions, _, _ = three_sensors
    truth = scenes["LE07"].truth
    valid = predictions["LE07"] != NODATA_CLASS
    etm_iou = _iou(predictions["LE07"], truth, valid, [1, 2])
    assert etm_iou > 0.2  # the model finds glaciers, so agreeing with it means something
    for code in ("LT05", "LC08"):
        np.testing.assert_array_equal(predictions[code] != NODATA_CLASS, valid)
        agreement = (predictions[code] == predictions["LE07"])[valid].mean()
        assert agreement > 0.98, (code, agreement)
        assert abs(_iou(predictions[code], truth, valid, [1, 2]) - etm_iou) < 0.03, code
        sensor, details, available = predictions[code + "_meta"]
        assert sensor == sensors.SENSORS[code].name
        assert details["harmonised_from"] == sensor and details["calibration"] == "MTL file"
        assert "synthesised" in details["approximations"]["B8"]
        assert available == list(bands.CHANNELS)  # pan and both thermal gains made, DEM given


def test_a_change_of_sensor_is_not_measured_as_glacier_change(three_sensors, tmp_path):
    """1990 TM and 2020 OLI over the same, unchanged ground (same weather): `al-loop change`
    finds no change beyond its band, glacier by glacier, and the sensor of each date is named."""
    scenes, _, root, ids = three_sensors
    out = tmp_path / "change"
    result = CliRunner().invoke(cli.app, ["change", str(ids["LT05"]), str(ids["LC08"]), "--inventory",
                                          str(scenes["LE07"].outlines), "--out", str(out), "-w", str(root)])
    assert result.exit_code == 0, result.output
    with open(out / "areas.csv") as handle:
        areas = list(csv.DictReader(handle))
    assert {r["sensor"] for r in areas} == {"Landsat 5 TM", "Landsat 8 OLI/TIRS"}
    with open(out / "changes.csv") as handle:
        found = list(csv.DictReader(handle))
    glaciers = [c for c in found if c["glacier"] != "region"]
    assert len(glaciers) >= 3
    for c in glaciers:
        assert float(c["low_km2"]) <= 0 <= float(c["high_km2"]), c
    region = next(c for c in found if c["glacier"] == "region")
    before = sum(float(r["glacier_km2"]) for r in areas if r["glacier"] != "region" and r["sensor"] == "Landsat 5 TM")
    assert abs(float(region["delta_km2"])) < 0.02 * before
