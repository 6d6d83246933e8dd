"""Label files into the store, on the real HKH clip (a 139x169 scene in UTM 47N)."""

import json

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform_geom
from sqlalchemy import func, select

from al_loop.classes import BACKGROUND, CLEAN_ICE, DEBRIS, UNLABELED
from al_loop.ingest import ingest_hkh_tile
from al_loop.io.labels import LabelInputError
from al_loop.label_ingest import ingest_labels
from db.models import Label
from db.queries import unpack_mask

# Two boxes in the clip's UTM 47N grid (origin 188385, 3229845; 30 m pixels), written to the
# label file in EPSG:4326 so ingestion must reproject them.
CLEAN_BOX = (188385 + 30 * 10, 3229845 - 30 * 60, 188385 + 30 * 50, 3229845 - 30 * 20)
DEBRIS_BOX = (188385 + 30 * 60, 3229845 - 30 * 60, 188385 + 30 * 80, 3229845 - 30 * 40)


def _box(minx, miny, maxx, maxy):
    ring = [(minx, miny), (maxx, miny), (maxx, maxy), (minx, maxy), (minx, miny)]
    return transform_geom("EPSG:32647", "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})


def _geojson(path, features):
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": props, "geometry": geom} for props, geom in features
    ]}))
    return path


@pytest.fixture
def clip_scene(shared_data, workspace, store):
    workspace.config.ingest.patch_size = 128  # 2 x 2 overlapping patches over the clip
    workspace.config.ingest.quicklooks = False
    return ingest_hkh_tile(workspace, store, shared_data / "lila_hkh" / "LE07_134040_20070922_clip.tif", quiet=True)


def _masks(store):
    with store.session() as session:
        rows = session.scalars(select(Label).where(Label.status == "accepted").order_by(Label.patch_id)).all()
        return [(r.patch.row_off, r.patch.col_off, unpack_mask(r.mask, 128, 128), r) for r in rows]


def test_vector_inventory_is_rasterised_per_patch_with_its_mapping(tmp_path, clip_scene, workspace, store):
    path = _geojson(
        tmp_path / "inventory.geojson", [({"kind": "C"}, _box(*CLEAN_BOX)), ({"kind": "D"}, _box(*DEBRIS_BOX))]
    )
    result = ingest_labels(
        workspace, store, path, attribute="kind", mapping={"C": "clean_ice", "D": "debris"}, quiet=True
    )
    assert result.created == result.patches > 0
    full = np.full((256, 256), 254, dtype=np.uint8)
    for row, col, mask, _ in _masks(store):
        full[row : row + 128, col : col + 128] = mask
    # Reprojection to 4326 and back bends the box edges by a fraction of a pixel: compare interiors.
    assert (full[22:58, 12:48] == CLEAN_ICE).all()
    assert (full[42:58, 62:78] == DEBRIS).all()
    assert (full[30:50, 52:58] == BACKGROUND).all()  # between the boxes, inside the inventory extent
    assert np.isin(full[:, 90:], [UNLABELED, 254]).all()  # outside its extent: unlabeled or no label row
    assert abs(int((full == CLEAN_ICE).sum()) - 40 * 40) <= 80


def test_reingesting_is_idempotent_and_a_new_mapping_revises(tmp_path, clip_scene, workspace, store):
    path = _geojson(
        tmp_path / "inventory.geojson", [({"kind": "C"}, _box(*CLEAN_BOX)), ({"kind": "D"}, _box(*DEBRIS_BOX))]
    )
    first = ingest_labels(
        workspace, store, path, attribute="kind", mapping={"C": "clean_ice", "D": "debris"}, quiet=True
    )
    again = ingest_labels(
        workspace, store, path, attribute="kind", mapping={"C": "clean_ice", "D": "debris"}, quiet=True
    )
    assert again.unchanged == first.created and again.created == again.revised == 0
    remapped = ingest_labels(
        workspace, store, path, attribute="kind", mapping={"C": "glacier", "D": "debris"}, quiet=True
    )
    assert remapped.revised > 0
    masks = _masks(store)
    assert all(r.revision == 2 for *_, r in masks if r.n_glacier)
    with store.session() as session:
        assert session.scalar(select(func.count(Label.id)).where(Label.status == "superseded")) == remapped.revised


def test_invalid_polygons_are_repaired_and_empty_ones_counted(tmp_path, clip_scene, workspace, store):
    minx, miny, maxx, maxy = CLEAN_BOX
    corners = [[(minx, miny), (maxx, maxy), (maxx, miny), (minx, maxy), (minx, miny)]]
    bowtie = transform_geom("EPSG:32647", "EPSG:4326", {"type": "Polygon", "coordinates": corners})
    path = _geojson(tmp_path / "bad.geojson", [({}, bowtie), ({}, {"type": "Polygon", "coordinates": []})])
    result = ingest_labels(workspace, store, path, quiet=True)
    assert result.file_counts["repaired"] == 1 and result.file_counts["empty"] == 1
    assert sum(r.n_glacier for *_, r in _masks(store)) > 0


@pytest.mark.parametrize(
    "features, options, message",
    [
        ([({"kind": "C"}, None)], {"attribute": "type", "mapping": {"C": "clean_ice"}}, "type"),
        ([({"kind": "C"}, "far")], {"attribute": "kind", "mapping": {"C": "clean_ice"}}, "do not overlap"),
        ([({"kind": "C"}, None)], {"attribute": "kind", "mapping": {"C": "snow"}}, "snow"),
    ],
)
def test_bad_label_files_are_refused_and_nothing_is_stored(
    tmp_path, clip_scene, workspace, store, features, options, message
):
    far = {"type": "Polygon", "coordinates": [[(10, 10), (10.1, 10), (10.1, 10.1), (10, 10)]]}
    features = [(props, far if geom == "far" else _box(*CLEAN_BOX)) for props, geom in features]
    path = _geojson(tmp_path / "labels.geojson", features)
    with pytest.raises((LabelInputError, ValueError), match=message) as info:
        ingest_labels(workspace, store, path, quiet=True, **options)
    assert "labels.geojson" in str(info.value)
    with store.session() as session:
        assert session.scalar(select(func.count(Label.id))) == 0


def test_raster_labels_are_read_with_nearest_and_a_value_mapping(tmp_path, clip_scene, workspace, store, shared_data):
    clip = shared_data / "lila_hkh" / "LE07_134040_20070922_clip.tif"
    with rasterio.open(clip) as src:
        profile = dict(driver="GTiff", width=src.width, height=src.height, count=1, dtype="uint8", crs=src.crs,
                       transform=src.transform, nodata=0)
    values = np.full((169, 139), 9, dtype=np.uint8)  # 9: rock in this label scheme
    values[20:60, 10:50] = 5  # 5: ice
    values[:, 100:] = 0  # nodata
    path = tmp_path / "classes.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values, 1)
    ingest_labels(workspace, store, path, raster_values={5: "clean_ice", 9: "background"}, quiet=True)
    full = np.full((256, 256), UNLABELED, dtype=np.uint8)
    for row, col, mask, _ in _masks(store):
        full[row : row + 128, col : col + 128] = mask
    assert (full[20:60, 10:50] == CLEAN_ICE).all() and (full[:169, 100:139] == UNLABELED).all()
    assert (full[:169, :100][values[:, :100] == 9] == BACKGROUND).all()
