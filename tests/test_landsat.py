from datetime import date

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.fill import fillnodata
from rasterio.warp import calculate_default_transform, reproject

from al_loop.bands import CHANNELS, RAW_BANDS, BandNameError, compute_index, valid_mask
from al_loop.io.landsat import (
    BandSource,
    RasterInputError,
    band_files_from_folder,
    band_files_from_stack,
    build_stack,
    find_level1_bands,
    find_level1_scene,
    parse_scene_id,
)
from tests.conftest import SHARED_DATA

DATA = SHARED_DATA
pytestmark = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"real sample data not found at {DATA} (a fresh clone lacks it)"
)
CLIP = DATA / "lila_hkh" / "LE07_134040_20070922_clip.tif"
OLINDA = DATA / "landsat7_olinda" / "L7_ETMs.tif"
OLINDA_DEM = DATA / "landsat7_olinda" / "olinda_dem_utm25s.tif"
OLINDA_MAPPING = ["B1", "B2", "B3", "B4", "B5", "B7"]
SCENE = "LE07_L1TP_134040_20070922_20161231_01_T1"


def channel(name):
    return CHANNELS.index(name)


@pytest.fixture(scope="module")
def clip():
    with rasterio.open(CLIP) as src:
        return src.read(), src.profile


def write_raster(path, array, crs, transform, **extra):
    profile = {
        "driver": "GTiff", "count": 1, "dtype": array.dtype, "crs": crs,
        "transform": transform, "width": array.shape[1], "height": array.shape[0], **extra,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array, 1)
    return path


def write_dem_in_wgs84(path, clip):
    """An SRTM-like DEM from the clip's elevation: gaps filled, int16, EPSG:4326, 3 arcsec.

    The clip's elevation is 3" SRTM resampled to 30 m by nearest neighbour (90 m steps), so
    sampling it back onto a 3" grid recovers DEM posts much like the original SRTM's.
    """
    pixels, profile = clip
    valid = valid_mask(pixels)
    elevation = fillnodata(pixels[channel("elevation")], mask=valid.astype(np.uint8))
    transform, width, height = calculate_default_transform(
        profile["crs"], "EPSG:4326", profile["width"], profile["height"],
        *rasterio.transform.array_bounds(profile["height"], profile["width"], profile["transform"]),
        resolution=3 / 3600,
    )
    dem = np.full((height, width), -32768, dtype=np.int16)
    reproject(
        elevation, dem, src_transform=profile["transform"], src_crs=profile["crs"],
        dst_transform=transform, dst_crs="EPSG:4326", dst_nodata=-32768,
        resampling=Resampling.nearest,
    )
    return write_raster(path, dem, "EPSG:4326", transform, nodata=-32768)


@pytest.fixture(scope="module")
def level1(tmp_path_factory, clip):
    """A USGS Level-1 folder cut from the real clip (B8 at 15 m) and a DEM in EPSG:4326."""
    pixels, profile = clip
    folder = tmp_path_factory.mktemp("level1")
    for name in RAW_BANDS:
        band = pixels[channel(name)]
        dtype = np.uint16 if name == "BQA" else np.uint8
        transform = profile["transform"]
        if name == "B8":  # panchromatic: each 30 m pixel as four 15 m pixels
            band = band.repeat(2, axis=0).repeat(2, axis=1)
            transform = transform * Affine.scale(0.5)
        write_raster(folder / f"{SCENE}_{name}.TIF", band.astype(dtype), profile["crs"], transform)
    (folder / f"{SCENE}_MTL.txt").write_text("metadata, not a band")
    dem = write_dem_in_wgs84(tmp_path_factory.mktemp("dem") / "srtm_wgs84.tif", clip)
    return folder, dem


@pytest.fixture(scope="module")
def built(tmp_path_factory, level1):
    folder, dem = level1
    out = tmp_path_factory.mktemp("built") / "stack.tif"
    info = build_stack(band_files_from_folder(folder), out, dem=dem)
    with rasterio.open(out) as src:
        return info, src.read(), src.profile, src.descriptions


def olinda_sources():
    return band_files_from_stack(OLINDA, OLINDA_MAPPING)


# --- file names ----------------------------------------------------------------------------


def test_find_level1_bands_recognises_collection_1_and_2_names(tmp_path):
    c2 = "LE07_L1TP_134040_20070922_20200913_02_T1"
    names = [
        f"{c2}_B1.TIF", f"{c2}_b2.tif", f"{c2}_B6_VCID_1.TIF", f"{c2}_QA_PIXEL.TIF",
        f"{c2}_MTL.txt", f"{c2}_QA_RADSAT.TIF",
        "LE07_L2SP_134040_20070922_20200913_02_T1_SR_B3.TIF",  # Level-2 reflectance, not DN
    ]
    for name in names:
        (tmp_path / name).touch()
    found = find_level1_bands(tmp_path)
    assert list(found) == ["B1", "B2", "B6_VCID_1", "BQA"]
    assert found["BQA"].name == f"{c2}_QA_PIXEL.TIF"


def test_find_level1_bands_names_the_folder_when_empty(tmp_path):
    (tmp_path / "notes.txt").touch()
    with pytest.raises(RasterInputError, match=str(tmp_path)):
        find_level1_bands(tmp_path)


def test_find_level1_bands_refuses_sensors_without_a_mapping(tmp_path):
    (tmp_path / "LT04_L1TP_134040_19890922_20170930_01_T1_B5.TIF").touch()
    with pytest.raises(RasterInputError, match="LT04.*Landsat 4 TM scenes are not supported"):
        find_level1_bands(tmp_path)


def test_pre_collection_names_are_recognised_with_their_sensor_and_date(tmp_path):
    scene = "LE71400412000304SGS00"
    for band in ("B1", "B2", "B3", "B4", "B61", "B62", "B8", "BQA"):
        (tmp_path / f"{scene}_{band}.TIF").touch()
    (tmp_path / f"{scene}_MTL.txt").touch()
    found = find_level1_scene(tmp_path)
    assert found.naming == "pre-collection"
    assert list(found.bands) == ["B1", "B2", "B3", "B4", "B6_VCID_1", "B6_VCID_2", "B8", "BQA"]
    assert (found.sensor, found.acquired) == ("Landsat 7 ETM+", date(2000, 10, 30))  # day 304 of 2000


def test_renamed_band_files_are_recognised_and_level_2_products_ignored(tmp_path):
    for name in ("kangchenjunga_B1.TIF", "kangchenjunga_B2.tif", "kangchenjunga_B6_VCID_1.TIF",
                 "kangchenjunga_SR_B3.TIF", "LE07_L2SP_134040_20070922_20200913_02_T1_SR_B4.TIF"):
        (tmp_path / name).touch()
    found = find_level1_scene(tmp_path)
    assert found.naming == "renamed" and list(found.bands) == ["B1", "B2", "B6_VCID_1"]
    assert found.sensor is None and found.acquired is None  # the names cannot tell: options must
    named = tmp_path / "LE07_L1TP_134040_20070922_20161231_01_T1"
    named.mkdir()
    (named / "scene_B1.TIF").touch()
    assert find_level1_scene(named).acquired == date(2007, 9, 22)  # the folder's name tells


def test_band_files_of_two_scenes_or_another_sensor_are_refused(tmp_path):
    (tmp_path / "LE71400412000304SGS00_B1.TIF").touch()
    (tmp_path / "LE71400412000320SGS00_B2.TIF").touch()
    with pytest.raises(RasterInputError, match="more than one scene"):
        find_level1_scene(tmp_path)
    other = tmp_path / "tm"
    other.mkdir()
    (other / "LT41400411990304SGS00_B1.TIF").touch()
    with pytest.raises(RasterInputError, match="Landsat 4 TM"):
        find_level1_scene(other)


def test_parse_scene_id():
    assert parse_scene_id(f"{SCENE}_B6_VCID_2.TIF") == ("Landsat 7 ETM+", date(2007, 9, 22))
    assert parse_scene_id("LT05_L1TP_134040_19980901_20161220_01_T1")[0] == "Landsat 5 TM"
    assert parse_scene_id("LE71340402007265SGS00_B1.TIF") == ("Landsat 7 ETM+", date(2007, 9, 22))
    with pytest.raises(ValueError, match="not a USGS"):
        parse_scene_id("L7_ETMs.tif")


# --- Level-1 folder cut from the real HKH clip --------------------------------------------


def test_level1_folder_rebuilds_the_clip_bands_and_indices(built, clip):
    info, stack, profile, descriptions = built
    pixels, clip_profile = clip
    assert descriptions == CHANNELS
    assert info.available_channels == list(CHANNELS) and info.missing_channels == []
    assert (info.width, info.height) == (clip_profile["width"], clip_profile["height"])
    assert info.transform == clip_profile["transform"] and info.crs == clip_profile["crs"]
    assert profile["dtype"] == "float32" and profile["blockxsize"] == 256
    assert profile["compress"] == "deflate"
    # Bands (B8 averaged back from 15 m) are exact, indices equal the dataset's own.
    bands_and_indices = [channel(c) for c in CHANNELS if c not in ("elevation", "slope")]
    np.testing.assert_allclose(stack[bands_and_indices], pixels[bands_and_indices], atol=1e-5)


def test_invalid_pixels_are_zero_in_every_channel_like_the_tiles(built, clip):
    _, stack, _, _ = built
    invalid = ~valid_mask(clip[0])
    assert invalid.sum() > 1000  # scene edge and SLC-off stripes
    assert np.all(stack[:, invalid] == 0)


def test_elevation_and_slope_from_a_dem_on_another_grid_match_the_clip(built, clip):
    _, stack, _, _ = built
    pixels, _ = clip
    valid = valid_mask(pixels)
    elevation = stack[channel("elevation")][valid]
    error = np.abs(elevation - pixels[channel("elevation")][valid])
    assert np.isfinite(elevation).all()
    assert np.median(error) < 15
    slope = stack[channel("slope")][valid]
    finite = np.isfinite(slope)
    assert finite.mean() > 0.99
    # The clip's slope was computed on the 90 m SRTM grid, ours on the 30 m scene grid:
    # measured r = 0.92, medians 30.7 (ours) and 30.8 degrees.
    r = np.corrcoef(slope[finite], pixels[channel("slope")][valid][finite])[0, 1]
    assert r > 0.8


def test_block_wise_build_equals_a_single_block(level1, built, tmp_path):
    folder, dem = level1
    calls = []
    build_stack(
        band_files_from_folder(folder), tmp_path / "small_blocks.tif", dem=dem, block_size=48,
        progress=lambda done, total: calls.append((done, total)),
    )
    with rasterio.open(tmp_path / "small_blocks.tif") as src:
        small_blocks = src.read()
    whole = built[1]
    assert calls == [(i, 12) for i in range(1, 13)]  # 139 x 169 px in 48 px blocks: 3 x 4
    np.testing.assert_array_equal(small_blocks, whole)


def test_missing_band_gives_nan_channels_and_skips_its_indices(level1, clip, tmp_path):
    folder, _ = level1
    sources = [s for s in band_files_from_folder(folder) if s.name != "B5"]
    info = build_stack(sources, tmp_path / "no_b5.tif")
    with rasterio.open(tmp_path / "no_b5.tif") as src:
        stack = src.read()
    assert info.missing_channels == ["B5", "ndsi", "ndwi", "elevation", "slope"]
    assert np.isnan(stack[[channel(c) for c in info.missing_channels]]).all()
    np.testing.assert_allclose(stack[channel("ndvi")], clip[0][channel("ndvi")], atol=1e-5)


# --- a 6-band stack with a band mapping --------------------------------------------------


def test_olinda_stack_with_mapping(tmp_path):
    info = build_stack(olinda_sources(), tmp_path / "olinda.tif", dem=OLINDA_DEM)
    assert [p.name for p in tmp_path.iterdir()] == ["olinda.tif"]  # no temporary file left
    with rasterio.open(tmp_path / "olinda.tif") as src:
        stack = src.read()
    with rasterio.open(OLINDA) as src:
        raw = dict(zip(OLINDA_MAPPING, src.read().astype(np.float32), strict=True))
    absent = ["B6_VCID_1", "B6_VCID_2", "B8", "BQA"]
    assert info.missing_channels == absent
    assert not set(absent) & set(info.available_channels)
    assert np.isnan(stack[[channel(c) for c in absent]]).all()
    np.testing.assert_allclose(stack[channel("ndsi")], compute_index("ndsi", raw), atol=1e-6)
    np.testing.assert_array_equal(stack[channel("B7")], raw["B7"])
    # The 90 m DEM stops 43 m short of the scene's bottom edge: the last row is uncovered.
    elevation = stack[channel("elevation")]
    assert np.isnan(elevation[-1]).all() and np.isfinite(elevation[:-1]).all()
    assert -5 < np.median(elevation[:-1]) < 100


def test_mapping_by_band_index_picks_bands():
    sources = band_files_from_stack(OLINDA, {3: "B3", 4: "B4"})
    assert sources == [BandSource("B3", OLINDA, 3), BandSource("B4", OLINDA, 4)]


# --- bad inputs: a clear error and no output ----------------------------------------------


def assert_fails_cleanly(error, match, sources, out_dir, **kwargs):
    with pytest.raises(error, match=match):
        build_stack(sources(), out_dir / "out.tif", **kwargs)
    assert list(out_dir.iterdir()) == []


@pytest.fixture
def out_dir(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    return out


def test_mapping_length_must_match_the_band_count():
    with pytest.raises(RasterInputError, match=r"L7_ETMs\.tif.*names 5 bands.*has 6"):
        band_files_from_stack(OLINDA, OLINDA_MAPPING[:5])
    with pytest.raises(RasterInputError, match=r"has 6 bands.*\[7\]"):
        band_files_from_stack(OLINDA, {7: "B8"})


def test_unknown_band_names_are_refused():
    with pytest.raises(BandNameError, match="SWIR"):
        band_files_from_stack(OLINDA, ["B1", "B2", "B3", "B4", "SWIR", "B7"])


def test_band_descriptions_contradicting_the_mapping(tmp_path, out_dir):
    named = tmp_path / "named.tif"
    with rasterio.open(OLINDA) as src:
        profile, pixels = src.profile, src.read()
    with rasterio.open(named, "w", **profile) as dst:
        dst.write(pixels)
        dst.descriptions = tuple(OLINDA_MAPPING)
    assert len(band_files_from_stack(named, OLINDA_MAPPING)) == 6
    with pytest.raises(BandNameError, match=r"named\.tif: band 6 is described as 'B7'"):
        band_files_from_stack(named, OLINDA_MAPPING[:5] + ["B8"])
    wrong = lambda: [BandSource("B4", named, 5)]  # noqa: E731
    assert_fails_cleanly(BandNameError, "described as 'B5'", wrong, out_dir)


def test_a_file_that_is_not_a_raster(level1, tmp_path, out_dir):
    fake = tmp_path / f"{SCENE}_B3.TIF"
    fake.write_text("not a GeoTIFF")
    sources = lambda: [*band_files_from_folder(level1[0])[:2], BandSource("B3", fake)]  # noqa: E731
    assert_fails_cleanly(RasterInputError, f"{fake.name}: not a readable raster", sources, out_dir)


def test_a_truncated_raster(tmp_path, out_dir):
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(OLINDA.read_bytes()[: OLINDA.stat().st_size // 2])
    sources = lambda: band_files_from_stack(truncated, OLINDA_MAPPING)  # noqa: E731
    assert_fails_cleanly(RasterInputError, "truncated.tif: not a readable raster", sources, out_dir)


def test_a_raster_without_crs(clip, tmp_path, out_dir):
    band = clip[0][channel("B1")].astype(np.uint8)
    bare = write_raster(tmp_path / "bare.tif", band, None, clip[1]["transform"])
    sources = lambda: [BandSource("B1", bare)]  # noqa: E731
    assert_fails_cleanly(RasterInputError, "bare.tif: raster has no CRS", sources, out_dir)


def test_a_dem_that_does_not_overlap_names_both_files(out_dir):
    baltoro = DATA / "oggm_hkh" / "baltoro_srtm_clip.tif"
    assert_fails_cleanly(
        RasterInputError, r"baltoro_srtm_clip\.tif: does not overlap the scene .*L7_ETMs\.tif",
        olinda_sources, out_dir, dem=baltoro,
    )


def test_a_failure_while_writing_leaves_nothing(out_dir):
    def interrupt(done, total):
        raise RuntimeError("interrupted")

    assert_fails_cleanly(RuntimeError, "interrupted", olinda_sources, out_dir, progress=interrupt)
