
import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Geod
from rasterio.enums import Resampling
from rasterio.warp import calculate_default_transform, reproject

from al_loop.terrain import pixel_size_metres, slope_degrees
from tests.conftest import SHARED_DATA

DATA = SHARED_DATA
needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"real sample data not found at {DATA} (a fresh clone lacks it)"
)
BALTORO = DATA / "oggm_hkh" / "baltoro_srtm_clip.tif"
CHHOTA_SHIGRI = DATA / "oggm_hkh" / "dem_chhota_shigri.tif"


def tilted_plane(degrees, aspect, shape=(40, 50), xres=30.0, yres=30.0):
    """Heights of a plane rising at ``degrees`` towards ``aspect`` (radians from +x)."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    rise = np.tan(np.radians(degrees))
    return rise * (np.cos(aspect) * cols * xres - np.sin(aspect) * rows * yres)


def test_plane_tilted_30_degrees_has_30_degree_slope_up_to_the_edges():
    slope = slope_degrees(tilted_plane(30, 0.0), 30.0, 30.0)
    assert slope.dtype == np.float32
    np.testing.assert_allclose(slope, 30.0, atol=1e-4)


def test_oblique_plane_with_rectangular_pixels():
    dem = tilted_plane(30, np.radians(35), xres=20.0, yres=35.0)
    np.testing.assert_allclose(slope_degrees(dem, 20.0, 35.0), 30.0, atol=1e-4)


def test_pixel_size_matters():
    dem = tilted_plane(30, 0.0, xres=30.0)
    assert slope_degrees(dem, 60.0, 30.0).mean() == pytest.approx(16.1, abs=0.1)


def test_flat_dem_has_zero_slope():
    assert np.all(slope_degrees(np.full((10, 12), 4500.0), 30.0, 30.0) == 0)


def test_nan_pixels_give_nan_slope_there_and_only_around_them():
    dem = tilted_plane(30, 0.0)
    dem[10, 20] = np.nan
    slope = slope_degrees(dem, 30.0, 30.0)
    nan = np.isnan(slope)
    assert nan[9:12, 19:22].all()
    assert nan.sum() == 9
    np.testing.assert_allclose(slope[~nan], 30.0, atol=1e-4)


def test_pixel_size_of_a_geographic_grid_matches_geodesic_distances():
    transform = Affine(3 / 3600, 0, 76.0, 0, -3 / 3600, 36.0)  # SRTM 3" at Baltoro
    rows = np.array([0, 200, 429])
    xres, yres = pixel_size_metres(transform, "EPSG:4326", rows)
    geod = Geod(ellps="WGS84")
    for row, x, y in zip(rows, xres[:, 0], yres[:, 0], strict=True):
        lat = 36.0 - (row + 0.5) * 3 / 3600
        _, _, width = geod.inv(76.0, lat, 76.0 + 3 / 3600, lat)
        _, _, height = geod.inv(76.0, lat + 1.5 / 3600, 76.0, lat - 1.5 / 3600)
        assert x == pytest.approx(width, rel=1e-4)
        assert y == pytest.approx(height, rel=1e-4)
    assert xres.shape == (3, 1)
    assert xres[0, 0] == pytest.approx(75.2, abs=0.5)  # narrower than the ~92.4 m height


def test_pixel_size_of_a_projected_grid_is_the_transform_size():
    xres, yres = pixel_size_metres(Affine(94.0, 0, 0, 0, -94.0, 0), "EPSG:32643", [0, 1])
    assert np.all(xres == 94.0) and np.all(yres == 94.0)


def geographic_slope(path):
    with rasterio.open(path) as src:
        dem = src.read(1, masked=True).astype(np.float64).filled(np.nan)
        xres, yres = pixel_size_metres(src.transform, src.crs, np.arange(src.height))
    return dem, slope_degrees(dem, xres, yres)


@needs_data
def test_baltoro_srtm_slope_distribution_is_plausible():
    _, slope = geographic_slope(BALTORO)
    assert np.isfinite(slope).all()
    assert 10 < np.median(slope) < 45
    assert slope.max() < 90


@needs_data
def test_baltoro_geographic_slope_agrees_with_slope_after_projecting_to_utm():
    _, slope = geographic_slope(BALTORO)
    with rasterio.open(BALTORO) as src:
        transform, width, height = calculate_default_transform(
            src.crs, "EPSG:32643", src.width, src.height, *src.bounds, resolution=90
        )
        utm = np.full((height, width), np.nan, dtype=np.float32)
        reproject(
            rasterio.band(src, 1), utm, dst_transform=transform, dst_crs="EPSG:32643",
            dst_nodata=np.nan, resampling=Resampling.bilinear,
        )
    utm_slope = slope_degrees(utm, 90.0, 90.0)
    # Measured: 30.2 vs 29.7 degrees; a degree of longitude taken as 111 km (no cos(latitude))
    # gives 27.7.
    assert np.median(slope) == pytest.approx(np.nanmedian(utm_slope), abs=1.0)


@needs_data
def test_baltoro_nodata_gives_nan_slope(tmp_path):
    with rasterio.open(BALTORO) as src:
        profile, dem = src.profile, src.read(1)
    dem[100:120, 300:340] = profile["nodata"]
    holed = tmp_path / "holed.tif"
    with rasterio.open(holed, "w", **profile) as dst:
        dst.write(dem, 1)
    elevation, slope = geographic_slope(holed)
    assert np.isnan(elevation[100:120, 300:340]).all()
    assert np.isnan(slope[99:121, 299:341]).all()
    assert np.isnan(slope).sum() == 22 * 42
    assert np.nanmax(slope) < 90


@needs_data
def test_chhota_shigri_projected_dem_slope_distribution_is_plausible():
    with rasterio.open(CHHOTA_SHIGRI) as src:
        dem = src.read(1, masked=True).astype(np.float64).filled(np.nan)
        xres, yres = pixel_size_metres(src.transform, src.crs, np.arange(src.height))
    assert xres[0, 0] == 94.0
    slope = slope_degrees(dem, xres, yres)
    assert np.isfinite(slope).all()
    assert 10 < np.median(slope) < 45
    assert slope.max() < 90
