"""Vector and raster label input: reprojection, repair, mapping, paint order, window reads."""

from __future__ import annotations

import json
from pathlib import Path

import fiona
import numpy as np
import pytest
import rasterio
import shapely
from pyproj import Transformer
from rasterio.features import rasterize
from rasterio.transform import from_origin
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from shapely.geometry import shape

from al_loop.classes import BACKGROUND, CLEAN_ICE, DEBRIS, GLACIER, UNLABELED
from al_loop.io.labels import (
    LabelInputError,
    labels_overlap,
    load_vector_labels,
    rasterize_window,
    read_raster_labels_window,
)
from tests.conftest import SHARED_DATA

DATA = SHARED_DATA
OGGM = DATA / "oggm_hkh"
needs_data = pytest.mark.skipif(
    not OGGM.is_dir(), reason=f"real sample data not found at {OGGM} (see shared/data/README.md)"
)
UTM43N = "EPSG:32643"


def covering_grid(bounds, resolution):
    """A north-up grid snapped to ``resolution`` that covers ``bounds``."""
    minx, miny, maxx, maxy = bounds
    x0, y1 = np.floor(minx / resolution) * resolution, np.ceil(maxy / resolution) * resolution
    cols = int(np.ceil((maxx - x0) / resolution))
    rows = int(np.ceil((y1 - miny) / resolution))
    return from_origin(x0, y1, resolution, resolution), (rows, cols)


def polygon_area_in(path: Path, crs) -> float:
    """Area of the (single) polygon of a file, transformed independently with pyproj."""
    with fiona.open(path) as src:
        geometry = shape(next(iter(src)).geometry)
        transformer = Transformer.from_crs(src.crs.to_wkt(), crs, always_xy=True)
    return shapely.transform(
        geometry, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))
    ).area


def write_geojson(path: Path, features: list[dict], crs: str = UTM43N) -> Path:
    collection = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": crs}},
        "features": [
            {"type": "Feature", "properties": props, "geometry": geometry}
            for props, geometry in features
        ],
    }
    path.write_text(json.dumps(collection))
    return path


def square(x0, y0, size):
    return shapely.geometry.mapping(shapely.box(x0, y0, x0 + size, y0 + size))


# ---------------------------------------------------------------------------- real outlines


@needs_data
def test_baltoro_wgs84_on_utm_grid_keeps_its_area():
    labels = load_vector_labels(OGGM / "baltoro_wgs84.shp", UTM43N)
    transform, shape_ = covering_grid(labels.bounds, 30.0)
    mask = rasterize_window(labels, transform, shape_)

    assert mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) == {BACKGROUND, GLACIER}
    pixel_area = (mask == GLACIER).sum() * 900.0
    polygon_area = polygon_area_in(OGGM / "baltoro_wgs84.shp", UTM43N)
    assert polygon_area == pytest.approx(551.9e6, rel=0.01)  # the file's AREA attribute, km2
    assert pixel_area == pytest.approx(polygon_area, rel=0.02)
    assert labels.counts["features"] == labels.counts["kept"] == 1


@needs_data
def test_patch_windows_match_one_full_rasterisation():
    labels = load_vector_labels(OGGM / "baltoro_wgs84.shp", UTM43N)
    transform, (rows, cols) = covering_grid(labels.bounds, 30.0)
    full = rasterize([(labels.geometries[0], GLACIER)], out_shape=(rows, cols), transform=transform)
    for row in range(0, rows, 512):
        for col in range(0, cols, 512):
            window = Window(col, row, 512, 512)
            patch = rasterize_window(labels, window_transform(window, transform), (512, 512))
            expected = full[row : row + 512, col : col + 512]
            np.testing.assert_array_equal(patch[: expected.shape[0], : expected.shape[1]], expected)


@needs_data
def test_rgi_outline_on_local_transverse_mercator_dem_grid():
    with rasterio.open(OGGM / "dem_chhota_shigri.tif") as dem:
        crs, transform, shape_ = dem.crs, dem.transform, dem.shape
    labels = load_vector_labels(OGGM / "RGI50-14.15990.shp", crs)
    mask = rasterize_window(labels, transform, shape_)

    pixel_area = (mask == GLACIER).sum() * transform.a * -transform.e
    polygon_area = polygon_area_in(OGGM / "RGI50-14.15990.shp", crs.to_wkt())
    assert polygon_area == pytest.approx(16.764e6, rel=0.01)  # the RGI Area attribute, km2
    assert pixel_area == pytest.approx(polygon_area, rel=0.02)  # 94 m pixels: ~1,900 of them


@needs_data
def test_attribute_mapping_on_real_rgi_column_and_real_repair():
    # RGI 6 "Form": 0 = glacier. This outline also has a real ring self-intersection.
    path = OGGM / "RGI60-14.03439.shp"
    labels = load_vector_labels(path, UTM43N, attribute="Form", mapping={"0": "clean_ice"})
    assert labels.codes.tolist() == [CLEAN_ICE]
    assert labels.counts["repaired"] == 1
    assert labels.geometries[0].is_valid

    with pytest.raises(LabelInputError, match=r"no label polygons left.*'0': 1"):
        load_vector_labels(path, UTM43N, attribute="Form", mapping={"1": "glacier"})


@needs_data
def test_missing_column_error_lists_available_columns():
    with pytest.raises(LabelInputError) as error:
        load_vector_labels(OGGM / "RGI60-14.03439.shp", UTM43N, attribute="class")
    message = str(error.value)
    assert "RGI60-14.03439.shp" in message and "'class'" in message
    assert "RGIId" in message and "Form" in message and "TermType" in message


@needs_data
def test_windows_that_miss_everything_are_background():
    labels = load_vector_labels(OGGM / "baltoro_wgs84.shp", UTM43N)
    minx, miny, maxx, maxy = labels.bounds
    far_away = from_origin(maxx + 10_000, maxy, 30, 30)
    assert not rasterize_window(labels, far_away, (64, 64)).any()
    assert not labels_overlap(labels, (maxx + 10_000, miny, maxx + 20_000, maxy))
    assert labels_overlap(labels, (minx, miny, maxx, maxy))


# ---------------------------------------------------------------------------- hand-made files


def test_bow_tie_repaired_and_empty_geometries_skipped(tmp_path):
    bow_tie = {"type": "Polygon", "coordinates": [[[0, 0], [300, 300], [300, 0], [0, 300], [0, 0]]]}
    path = write_geojson(
        tmp_path / "labels.geojson",
        [
            ({"id": 1}, bow_tie),
            ({"id": 2}, {"type": "Polygon", "coordinates": []}),
            ({"id": 3}, None),
            ({"id": 4}, {"type": "LineString", "coordinates": [[0, 0], [300, 300]]}),
        ],
    )
    labels = load_vector_labels(path, UTM43N)

    assert labels.counts == {
        "features": 4,
        "repaired": 1,
        "empty": 2,
        "not_polygonal": 1,
        "unmapped": {},
        "kept": 1,
    }
    assert labels.geometries[0].is_valid
    assert labels.geometries[0].area == pytest.approx(2 * 300 * 150 / 2)  # two triangles
    mask = rasterize_window(labels, from_origin(0, 300, 10, 10), (30, 30))
    assert (mask == GLACIER).sum() * 100 == pytest.approx(45_000, rel=0.1)


def test_debris_wins_over_clean_ice_and_glacier_whatever_the_file_order(tmp_path):
    path = write_geojson(
        tmp_path / "labels.geojson",
        [  # debris first in the file: the order must come from the classes
            ({"type": "DC"}, square(40, 40, 20)),
            ({"type": "CI"}, square(20, 20, 40)),
            ({"type": "G"}, square(0, 0, 100)),
            ({"type": "rock"}, square(80, 80, 10)),
        ],
    )
    mapping = {"DC": "debris", "CI": "clean_ice", "G": "glacier", "rock": "background"}
    labels = load_vector_labels(path, UTM43N, attribute="type", mapping=mapping)
    mask = rasterize_window(labels, from_origin(0, 100, 1, 1), (100, 100))

    def at(x, y):
        return mask[100 - y - 1, x]

    assert at(50, 50) == DEBRIS  # debris inside clean ice inside glacier
    assert at(25, 25) == CLEAN_ICE
    assert at(5, 5) == GLACIER
    assert at(85, 85) == BACKGROUND  # an explicit background polygon carves the glacier
    assert (mask == DEBRIS).sum() == 400


def test_unmapped_values_are_counted(tmp_path):
    path = write_geojson(
        tmp_path / "labels.geojson",
        [({"type": "CI"}, square(0, 0, 10)), ({"type": "snow"}, square(20, 0, 10))] * 2,
    )
    labels = load_vector_labels(path, UTM43N, attribute="type", mapping={"CI": "clean_ice"})
    assert labels.counts["unmapped"] == {"snow": 2}
    assert labels.counts["kept"] == 2


def test_attribute_without_mapping_takes_class_names(tmp_path):
    path = write_geojson(
        tmp_path / "labels.geojson", [({"class": "debris"}, square(0, 0, 10))]
    )
    labels = load_vector_labels(path, UTM43N, attribute="class")
    assert labels.codes.tolist() == [DEBRIS]


def test_input_errors_name_the_file(tmp_path):
    path = write_geojson(tmp_path / "labels.geojson", [({"type": "CI"}, square(0, 0, 10))])
    with pytest.raises(LabelInputError, match=r"labels\.geojson.*unknown class 'ice'"):
        load_vector_labels(path, UTM43N, attribute="type", mapping={"CI": "ice"})

    not_vector = tmp_path / "notes.txt"
    not_vector.write_text("not a vector file")
    with pytest.raises(LabelInputError, match=r"notes\.txt.*not a readable vector file"):
        load_vector_labels(not_vector, UTM43N)

    no_crs = tmp_path / "no_crs.shp"
    schema = {"geometry": "Polygon", "properties": {"id": "int"}}
    with fiona.open(no_crs, "w", driver="ESRI Shapefile", schema=schema) as dst:
        dst.write({"geometry": square(0, 0, 10), "properties": {"id": 1}})
    with pytest.raises(LabelInputError, match=r"no_crs\.shp.*no coordinate reference system"):
        load_vector_labels(no_crs, UTM43N)


# ---------------------------------------------------------------------------- raster labels

LON0, LAT0, DEG = 75.0, 36.1, 0.0005  # label raster: 200x200 px of 0.0005 deg in EPSG:4326


@pytest.fixture
def label_raster(tmp_path):
    """Blocky class codes (0-3) in EPSG:4326 with a nodata (255) block."""
    rng = np.random.default_rng(0)
    values = np.kron(rng.integers(0, 4, (20, 20)), np.ones((10, 10))).astype(np.uint8)
    values[30:60, 140:170] = 255
    path = tmp_path / "labels_4326.tif"
    profile = dict(driver="GTiff", width=200, height=200, count=1, dtype="uint8", nodata=255)
    transform = from_origin(LON0, LAT0, DEG, DEG)
    with rasterio.open(path, "w", crs="EPSG:4326", transform=transform, **profile) as dst:
        dst.write(values, 1)
    return path, values


def utm_window_over_label_raster():
    """A 30 m UTM window starting inside the raster and running past its east edge."""
    to_utm = Transformer.from_crs("EPSG:4326", UTM43N, always_xy=True)
    x, y = to_utm.transform(LON0 + 0.06, LAT0 - 0.01)
    return from_origin(x, y, 30, 30), (200, 200)


def expected_nearest(values, transform, shape_):
    """Source value under each destination pixel centre; None where outside the raster."""
    rows, cols = np.indices(shape_)
    xs, ys = rasterio.transform.xy(transform, rows.ravel(), cols.ravel())
    lon, lat = Transformer.from_crs(UTM43N, "EPSG:4326", always_xy=True).transform(xs, ys)
    col = np.floor((np.asarray(lon) - LON0) / DEG).astype(int).reshape(shape_)
    row = np.floor((LAT0 - np.asarray(lat)) / DEG).astype(int).reshape(shape_)
    inside = (col >= 0) & (col < 200) & (row >= 0) & (row < 200)
    expected = np.full(shape_, UNLABELED, dtype=np.uint8)
    expected[inside] = values[row[inside], col[inside]]
    return expected, inside


def test_raster_labels_reprojected_with_nearest(label_raster):
    path, values = label_raster
    transform, shape_ = utm_window_over_label_raster()
    mask = read_raster_labels_window(path, UTM43N, transform, shape_)

    assert mask.dtype == np.uint8 and mask.shape == shape_
    assert set(np.unique(mask).tolist()) <= {0, 1, 2, 3, 255}
    expected, inside = expected_nearest(values, transform, shape_)
    assert (~inside).sum() > 1000 and (mask[~inside] == UNLABELED).all()
    assert inside.sum() > 1000 and (mask == UNLABELED)[inside].mean() < 0.2  # the nodata block
    # Nearest neighbour: the value under the pixel centre (GDAL's approximate transform may
    # pick the neighbour for centres within a hair of a source pixel edge).
    assert (mask == expected).mean() > 0.99


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_raster_labels_value_mapping_and_errors(label_raster, tmp_path):
    path, _ = label_raster
    transform, shape_ = utm_window_over_label_raster()
    mapping = {0: "background", 1: "debris", 2: "debris", 3: "clean_ice"}
    mask = read_raster_labels_window(path, UTM43N, transform, shape_, value_mapping=mapping)
    assert set(np.unique(mask).tolist()) == {BACKGROUND, CLEAN_ICE, DEBRIS, UNLABELED}

    with pytest.raises(LabelInputError, match=r"raster values \[3\] are not mapped"):
        del mapping[3]
        read_raster_labels_window(path, UTM43N, transform, shape_, value_mapping=mapping)

    far_east = from_origin(transform.c + 100_000, transform.f, 30, 30)
    with pytest.raises(LabelInputError, match="does not overlap"):
        read_raster_labels_window(path, UTM43N, far_east, shape_)

    not_raster = tmp_path / "notes.txt"
    not_raster.write_text("not a raster")
    with pytest.raises(LabelInputError, match=r"notes\.txt.*not a readable raster"):
        read_raster_labels_window(not_raster, UTM43N, transform, shape_)

    no_crs = tmp_path / "no_crs.tif"
    profile = dict(driver="GTiff", width=4, height=4, count=1, dtype="uint8")
    with rasterio.open(no_crs, "w", **profile) as dst:
        dst.write(np.zeros((4, 4), np.uint8), 1)
    with pytest.raises(LabelInputError, match=r"no_crs\.tif.*no coordinate reference system"):
        read_raster_labels_window(no_crs, UTM43N, transform, shape_)
