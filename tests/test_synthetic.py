"""The synthetic scene generator: determinism, file formats, physics the tests and demo rely on."""

from __future__ import annotations

import fiona
import numpy as np
import pytest
import rasterio
from fiona.transform import transform_geom
from rasterio import features
from scipy import ndimage

from al_loop import bands, synthetic
from al_loop.classes import BACKGROUND, CLEAN_ICE, DEBRIS
from al_loop.terrain import slope_degrees

SIZE = 512
SEED = 2

CLEAR = (672,)
CLOUD = (752, 756, 760)
SNOW = (1696, 1700, 1704)
MEDIUM_CLOUD = (704, 1728)


def channel(pixels: np.ndarray, name: str) -> np.ndarray:
    return pixels[bands.channel_index(name)]


@pytest.fixture(scope="module")
def scene():
    pixels, labels, dem = synthetic.generate(SIZE, SIZE, SEED)
    return pixels, labels, dem, bands.valid_mask(pixels)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    return synthetic.make_scene(out, height=256, width=320, seed=4, name="scene")


def test_same_seed_gives_identical_arrays_and_another_seed_differs():
    first = synthetic.generate(256, 320, 5)
    again = synthetic.generate(256, 320, 5)
    other = synthetic.generate(256, 320, 6)
    for a, b in zip(first, again, strict=True):
        assert a.tobytes() == b.tobytes()
    assert first[0].tobytes() != other[0].tobytes()
    assert first[1].tobytes() != other[1].tobytes()


def test_arrays_have_the_documented_shapes_and_types(scene):
    pixels, labels, dem, _ = scene
    assert pixels.shape == (len(bands.CHANNELS), SIZE, SIZE) and pixels.dtype == np.float32
    assert labels.shape == (SIZE, SIZE) and labels.dtype == np.uint8
    assert dem.shape == (SIZE, SIZE) and dem.dtype == np.float32
    assert set(np.unique(labels).tolist()) == {BACKGROUND, CLEAN_ICE, DEBRIS}


def test_dn_bands_are_8bit_integers_saturating_on_snow_and_cloud(scene):
    pixels, _, _, valid = scene
    for name in ("B1", "B2", "B3", "B4", "B5", "B6_VCID_1", "B6_VCID_2", "B7", "B8"):
        dn = channel(pixels, name)
        assert np.array_equal(dn, np.round(dn)) and dn.min() >= 0 and dn.max() <= 255
        assert (dn[valid] >= 1).all()
    bqa = channel(pixels, "BQA")
    bright = np.isin(bqa, SNOW + CLOUD)
    assert (channel(pixels, "B1")[bright] == 255).any()
    assert not (channel(pixels, "B1")[np.isin(bqa, CLEAR)] == 255).any()
    # Collection-1 codes seen in the real clip, plus the saturated-band bits (+4, +8, +12)
    bases = (672, 704, 752, 928, 960, 1696, 1728)
    known = {0} | {base + bits for base in bases for bits in (0, 4, 8, 12)}
    assert set(np.unique(bqa).tolist()) <= known


def test_index_channels_are_recomputed_from_the_bands(scene):
    pixels, _, _, valid = scene
    named = {name: channel(pixels, name) for name in bands.REFLECTIVE_BANDS}
    for name in bands.INDEX_CHANNELS:
        expected = bands.compute_index(name, named)
        assert np.array_equal(channel(pixels, name)[valid], expected[valid])
        assert (channel(pixels, name)[~valid] == 0).all()


def test_ndsi_is_stored_sign_flipped_so_clean_ice_is_negative(scene):
    pixels, labels, _, valid = scene
    ndsi = channel(pixels, "ndsi")
    clear_ice = (labels == CLEAN_ICE) & valid & ~np.isin(channel(pixels, "BQA"), CLOUD)
    clear_rock = (labels == BACKGROUND) & valid & (channel(pixels, "BQA") == 672)
    assert ndsi[clear_ice].mean() < -0.5
    assert ndsi[clear_rock].mean() > 0.0


def test_terrain_is_hkh_like_and_slope_uses_30m_pixels(scene):
    pixels, _, dem, valid = scene
    assert 2500 <= dem.min() and np.percentile(dem, 1) > 2700
    assert np.percentile(dem, 99) < 7000 and dem.max() - dem.min() > 2000
    assert np.array_equal(channel(pixels, "elevation")[valid], dem[valid])
    slope = slope_degrees(dem, 30.0, 30.0)  # the method used for real DEMs
    np.testing.assert_allclose(channel(pixels, "slope")[valid], slope[valid], atol=1e-4)
    assert 15 < np.median(slope) < 35  # steep mountains, not rolling hills


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_class_fractions_are_hkh_like_but_richer(seed):
    _, labels, _ = synthetic.generate(SIZE, SIZE, seed)
    glacier = (labels != BACKGROUND).mean()
    debris = (labels == DEBRIS).mean()
    assert 0.05 <= glacier <= 0.15
    assert 0.01 <= debris <= 0.03
    assert not np.isin(labels, [3, 255]).any()


def test_slc_off_gaps_are_zero_in_every_channel_and_invalid(scene):
    pixels, _, _, valid = scene
    invalid = ~valid
    assert 0.05 < invalid.mean() < 0.6
    assert (pixels[:, invalid] == 0).all()
    stripes, count = ndimage.label(invalid)
    assert count >= 8  # many separate stripes, not one block
    heights = ndimage.find_objects(stripes)
    widths = [s[1].stop - s[1].start for s in heights]
    assert np.median(widths) > SIZE / 2  # each stripe crosses the scene


def test_large_scenes_reach_the_tilted_swath_edge():
    gaps = synthetic._slc_off_gaps(np.random.default_rng(0), (2048, 2048))
    regions, _ = ndimage.label(gaps)
    largest = np.bincount(regions.ravel())[1:].max()
    assert largest > 0.04 * gaps.size  # the zero wedge beyond the footprint edge
    small = synthetic._slc_off_gaps(np.random.default_rng(0), (512, 512))
    regions, _ = ndimage.label(small)
    assert np.bincount(regions.ravel())[1:].max() < 0.04 * small.size  # stripes only


def test_clouds_are_bright_in_swir_and_cold_unlike_snow(scene):
    pixels, labels, _, valid = scene
    bqa = channel(pixels, "BQA")
    cloud = np.isin(bqa, CLOUD) & valid
    snow = np.isin(bqa, SNOW) & valid
    clear = np.isin(bqa, CLEAR) & valid
    assert cloud.sum() > 200 and snow.sum() > 200
    b5 = channel(pixels, "B5")
    assert np.median(b5[cloud]) > 2 * np.median(b5[snow])
    thermal = channel(pixels, "B6_VCID_1")
    assert np.median(thermal[cloud]) < np.median(thermal[clear])
    assert np.isin(bqa, MEDIUM_CLOUD).sum() > 100  # thin cloud, partly blended
    assert (cloud & (labels != BACKGROUND)).sum() > 100  # labels are the surface under cloud


def test_debris_looks_like_rock_but_lies_on_gentle_ground(scene):
    pixels, labels, _, valid = scene
    clear = (channel(pixels, "BQA") == 672) & valid
    debris = (labels == DEBRIS) & clear
    nearby = ndimage.binary_dilation(labels == DEBRIS, iterations=15) & (labels == BACKGROUND)
    nearby &= clear
    assert debris.sum() > 200 and nearby.sum() > 200
    for name in ("B1", "B2", "B3", "B4", "B5"):
        ratio = np.median(channel(pixels, name)[debris]) / np.median(channel(pixels, name)[nearby])
        assert 0.8 < ratio < 1.2, (name, ratio)
    slope = channel(pixels, "slope")
    assert slope[debris].mean() < slope[nearby].mean() - 5
    thermal = channel(pixels, "B6_VCID_1")
    assert np.median(thermal[debris]) < np.median(thermal[nearby])


def test_geotiffs_read_back_with_names_crs_and_30m_grid(written):
    pixels, labels, _ = synthetic.generate(256, 320, 4)
    with rasterio.open(written.image) as src:
        assert src.descriptions == bands.CHANNELS
        assert src.crs.to_epsg() == 32645
        assert (src.transform.a, src.transform.e) == (30.0, -30.0)
        assert src.profile["tiled"] and src.profile["blockxsize"] == 256
        assert src.profile["compress"] == "deflate"
        assert np.array_equal(src.read(), pixels)
        transform = src.transform
    with rasterio.open(written.label_raster) as src:
        assert src.transform == transform and src.crs.to_epsg() == 32645
        assert np.array_equal(src.read(1), labels)
    assert written.size == (256, 320) and written.seed == 4
    assert not list(written.image.parent.glob(".*partial*"))


def test_different_seeds_get_disjoint_footprints():
    a = synthetic._scene_transform(0)
    b = synthetic._scene_transform(1)
    extent = 4096 * 30.0
    assert abs(a.c - b.c) >= extent or abs(a.f - b.f) >= extent


def test_vector_labels_rasterise_back_to_the_label_raster(written):
    with rasterio.open(written.label_raster) as src:
        labels, transform = src.read(1), src.transform
    codes = {"clean_ice": CLEAN_ICE, "debris": DEBRIS}
    with fiona.open(written.label_vector) as src:
        assert src.driver == "GPKG" and src.crs.to_epsg() == 32645
        shapes = [(f.geometry, codes[f.properties["class"]]) for f in src]
    assert {code for _, code in shapes} == {CLEAN_ICE, DEBRIS}
    burnt = features.rasterize(shapes, out_shape=labels.shape, transform=transform, dtype="uint8")
    assert (burnt == labels).mean() > 0.99


def test_vector_labels_can_be_written_in_another_crs(tmp_path, written):
    scene = synthetic.make_scene(tmp_path, height=256, width=320, seed=4, vector_crs="EPSG:4326")
    with fiona.open(scene.label_vector) as src:
        assert src.crs.to_epsg() == 4326
        west, south, east, north = src.bounds
        assert 83 < west < east < 90 and 27 < south < north < 37
        shapes = [
            (transform_geom("EPSG:4326", "EPSG:32645", f.geometry), f.properties["class"])
            for f in src
        ]
    with rasterio.open(written.label_raster) as src:
        labels, transform = src.read(1), src.transform
    codes = {"clean_ice": CLEAN_ICE, "debris": DEBRIS}
    burnt = features.rasterize(
        [(g, codes[c]) for g, c in shapes], out_shape=labels.shape, transform=transform,
        dtype="uint8",
    )
    assert (burnt == labels).mean() > 0.99


def test_a_failed_write_leaves_no_file_behind(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic.fiona, "open", broken)
    with pytest.raises(RuntimeError):
        synthetic.make_scene(tmp_path, height=64, seed=1, name="x")
    assert not (tmp_path / "x_labels.gpkg").exists()
    assert not list(tmp_path.glob(".*partial*"))
