"""`al-loop export`: the GeoPackage read back without fiona (plain sqlite3 through the GeoPackage
tables, shapely on the WKB), the class mosaic with rasterio; sources in their order of trust;
areas against pixel counts; inventory ids and the per-glacier table; the real clip in its CRS and
the OGGM outlines as an inventory."""

from __future__ import annotations

import csv
import sqlite3

import fiona
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from rasterio.features import shapes
from rasterio.warp import transform_geom
from scipy import ndimage
from shapely.geometry import mapping, shape
from typer.testing import CliRunner

import cli
from al_loop.classes import BACKGROUND, DEBRIS
from al_loop.export import EXPERT, INVENTORY, MODEL, export_scene
from al_loop.ingest import ingest_hkh_tile
from al_loop.io.inventory import InventoryError, read_inventory
from al_loop.outlines import LAYERS, apply_mapping_unit
from al_loop.synthetic import make_scene
from al_loop.training_run import run_training
from db.models import Label, Patch
from db.queries import save_label
from tests.test_rounds import labelled_and_pool

LAYER_NAMES = tuple(LAYERS)


def read_gpkg(path) -> dict:
    """Layers of a GeoPackage through its own tables: name -> (srs definition, [(geometry, row)])."""
    con = sqlite3.connect(path)
    try:
        out = {}
        for table, kind, srs_id in con.execute("SELECT table_name, data_type, srs_id FROM gpkg_contents"):
            columns = [c[1] for c in con.execute(f'PRAGMA table_info("{table}")')]
            rows = [dict(zip(columns, r, strict=True)) for r in con.execute(f'SELECT * FROM "{table}"')]
            if kind != "features":
                out[table] = (None, [(None, r) for r in rows])
                continue
            geom_col = con.execute("SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?",
                                   (table,)).fetchone()[0]
            srs = con.execute("SELECT organization, organization_coordsys_id, definition FROM gpkg_spatial_ref_sys "
                              "WHERE srs_id = ?", (srs_id,)).fetchone()
            out[table] = (srs, [(_wkb(r.pop(geom_col)), r) for r in rows])
        return out
    finally:
        con.close()


def _wkb(blob: bytes):
    """A GeoPackage geometry blob: 'GP', version, flags (envelope size in bits 1-3), srs id, envelope, WKB."""
    flags = blob[3]
    envelope = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}[(flags >> 1) & 0b111]
    return shapely.from_wkb(blob[8 + envelope:])


def _inventory(path, scene, crs="EPSG:4326"):
    """An RGI-like inventory of the synthetic scene's glaciers (one polygon per glacier part)."""
    with rasterio.open(scene.label_raster) as src:
        labels, transform, scene_crs = src.read(1), src.transform, src.crs
    parts, _ = ndimage.label(labels > 0)
    schema = {"geometry": "Polygon", "properties": {"RGIId": "str", "Name": "str"}}
    with fiona.open(path, "w", driver="GPKG", crs=crs, schema=schema) as dst:
        for k, (geometry, _value) in enumerate(shapes(parts.astype(np.int32), mask=parts > 0, transform=transform)):
            moved = transform_geom(scene_crs, crs, mapping(shape(geometry).buffer(30)))  # a margin, as outlines have
            dst.write({"geometry": moved, "properties": {"RGIId": f"RGI60-15.{k + 1:05d}", "Name": f"glacier {k}"}})
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    ws, store = labelled_and_pool(root / "ws", root / "pool", pool_height=384, mc_samples=2)
    run_training(ws, store, quiet=True)
    yield ws, store, root
    store.dispose()


def test_the_pool_scene_exports_model_outlines_that_read_back_and_match_the_pixels(trained, tmp_path):
    ws, store, _ = trained
    result = export_scene(ws, store, 2, tmp_path)
    layers = read_gpkg(result.gpkg)
    assert set(LAYER_NAMES) <= set(layers)
    with rasterio.open(result.mosaic) as src:
        classes, source, confidence = src.read(1), src.read(2), src.read(3)
        crs, pixel_area = src.crs, abs(src.transform.a * src.transform.e)
        assert src.profile["blockxsize"] and src.overviews(1) is not None  # tiled (a COG)
    assert set(np.unique(source)) <= {0, MODEL}  # the pool has no labels: every known pixel is the model's
    assert (confidence[source == MODEL] > 0).all()
    unit = 12  # 0.01 km² on 30 m pixels
    for name in LAYER_NAMES:
        (org, code, _), features = layers[name]
        assert (org.upper(), code) == ("EPSG", crs.to_epsg())
        geometries = [g for g, _ in features]
        assert all(g.is_valid and g.geom_type == "Polygon" for g in geometries)
        mask = apply_mapping_unit(np.isin(classes, LAYERS[name]), unit)
        area = sum(g.area for g in geometries)
        assert area == pytest.approx(mask.sum() * pixel_area, rel=0.01)  # polygons and pixels agree
        rows = [r for _, r in features]
        assert all(r["area_km2"] * 1e6 >= unit * pixel_area * 0.999 for r in rows)  # nothing below the unit
        assert {r["source"] for r in rows} == {"model"} and {r["model_version"] for r in rows} == {"v1"}
        assert all(0 < r["confidence"] <= 1 and r["acquired"] == "2008-10-12" for r in rows)
        assert {"class", "area_km2", "expert_share", "inventory_share", "model_share", "scene_id", "sensor"} <= set(
            rows[0]
        )
    holes = [g for g, _ in layers["glacier"][1] if g.interiors]
    assert holes, "nunataks (holes) are kept"
    assert result.picture.read_bytes()[:4] == b"\x89PNG"


def test_expert_labels_win_over_inventories_which_win_over_the_model(trained, tmp_path):
    ws, store, _ = trained
    with store.session() as session:
        patch = session.query(Patch).filter(Patch.scene_id == 1).order_by(Patch.id).first()
        expert = np.full((patch.height, patch.width), BACKGROUND, np.uint8)
        expert[10:60, 10:60] = DEBRIS
        save_label(session, patch, expert, source="annotation", origin="label-studio:1:9999")
        window = (patch.row_off, patch.col_off, patch.height, patch.width)
    try:
        result = export_scene(ws, store, 1, tmp_path)
        with rasterio.open(result.mosaic) as src:
            classes, source = src.read(1), src.read(2)
        r, c, h, w = window
        np.testing.assert_array_equal(classes[r : r + h, c : c + w], expert)
        assert (source[r : r + h, c : c + w] == EXPERT).all()
        assert (source[source != EXPERT] == INVENTORY).mean() > 0.9  # the synthetic inventory covers the scene
        rows = [row for _, row in read_gpkg(result.gpkg)["debris"][1]]
        mixed = [row for row in rows if row["expert_share"] > 0]
        assert mixed and all(abs(row["expert_share"] + row["inventory_share"] + row["model_share"] - 1) < 1e-3
                             for row in rows)
    finally:
        with store.session() as session:
            session.query(Label).filter_by(origin="label-studio:1:9999").delete()


def test_an_inventory_names_each_outline_and_gives_a_per_glacier_table_in_wgs84_on_request(trained, tmp_path):
    ws, store, root = trained
    pool = make_scene(root / "again", height=384, seed=5, name="LE07_145039_20081012")  # the pool scene's twin
    inventory = _inventory(tmp_path / "rgi.gpkg", pool)
    result = export_scene(ws, store, 2, tmp_path / "out", inventory_path=inventory, wgs84=True, glims=True)
    layers = read_gpkg(result.gpkg)
    (org, code, _), features = layers["glacier"]
    assert (org.upper(), code) == ("EPSG", 4326)
    lon, lat = features[0][0].representative_point().coords[0]
    assert 80 < lon < 100 and 20 < lat < 40
    ids = {row["inventory_id"] for _, row in features}
    assert any(i and i.startswith("RGI60-15.") for i in ids)
    table = list(csv.DictReader(open(result.table)))
    assert table and {"inventory_id", "clean_ice_km2", "debris_km2", "debris_fraction", "nodata_km2"} <= set(table[0])
    for row in table:
        assert float(row["clean_ice_km2"]) + float(row["debris_km2"]) <= float(row["inventory_area_km2"]) + 1e-9
    assert [r for _, r in layers["glaciers"][1]][0]["inventory_id"] == table[0]["inventory_id"]
    # The GLIMS-style shapefile, read with pyogrio (GDAL's own bindings, not fiona)
    meta, _, geometries, values = pyogrio.raw.read(result.glims)
    assert meta["crs"] == "EPSG:4326" and meta["geometry_type"] == "Polygon"
    fields = dict(zip(meta["fields"], values, strict=True))
    assert set(fields["line_type"]) == {"glac_bound", "debris_cov"}
    glacier_area = sum(r["area_km2"] for _, r in features)
    assert fields["area"][fields["line_type"] == "glac_bound"].sum() == pytest.approx(glacier_area, rel=1e-6)
    assert all(shapely.from_wkb(g).is_valid for g in geometries)


def test_the_real_clip_exports_in_its_crs_and_the_oggm_outlines_read_as_an_inventory(trained, shared_data, tmp_path):
    ws, store, _ = trained
    scene = ingest_hkh_tile(ws, store, shared_data / "lila_hkh" / "LE07_134040_20070922_clip.tif", quiet=True)
    result = export_scene(ws, store, scene.scene_id, tmp_path)
    layers = read_gpkg(result.gpkg)
    assert layers["glacier"][0][:2] in (("EPSG", 32647), ("epsg", 32647))
    with rasterio.open(result.mosaic) as src:
        assert src.crs.to_epsg() == 32647 and (src.read(1) == 255).any()  # nodata kept (off the footprint)
    rgi = read_inventory(shared_data / "oggm_hkh" / "RGI60-14.03439.shp", rasterio.crs.CRS.from_epsg(32643).to_wkt())
    assert rgi.id_field == "RGIId" and rgi.ids == ["RGI60-14.03439"]
    with fiona.open(shared_data / "oggm_hkh" / "RGI60-14.03439.shp") as src:
        stated = float(next(iter(src)).properties["Area"])  # km², as RGI states it
    assert rgi.geometries[0].area / 1e6 == pytest.approx(stated, rel=0.03)
    with pytest.raises(InventoryError, match="no field 'nope'"):
        read_inventory(shared_data / "oggm_hkh" / "RGI60-14.03439.shp", rasterio.crs.CRS.from_epsg(32643).to_wkt(),
                       "nope")


def test_the_export_command_and_its_errors(trained, tmp_path):
    ws, _, _ = trained
    runner = CliRunner()
    ok = runner.invoke(cli.app, ["export", "2", "--out", str(tmp_path), "-w", str(ws.root)])
    assert ok.exit_code == 0, ok.output
    assert "clean_ice" in ok.output and "outlines.gpkg" in ok.output
    bad = runner.invoke(cli.app, ["export", "2", "--inventory", str(tmp_path / "missing.shp"), "-w", str(ws.root)])
    assert bad.exit_code == 2 and "missing.shp" in bad.output
    none = runner.invoke(cli.app, ["export", "99", "-w", str(ws.root)])
    assert none.exit_code == 2 and "no raster scene with id 99" in none.output


def test_areas_are_metres_on_projected_grids_and_the_ellipsoid_on_geographic_ones():
    from pyproj import CRS as ProjCRS
    from pyproj import Transformer
    from shapely.geometry import box

    from al_loop.export import _area_m2, reproject_geometry

    utm = ProjCRS.from_epsg(32645).to_wkt()
    square = box(500_000, 3_100_000, 501_000, 3_101_000)  # 1 km² near the central meridian
    assert _area_m2(square, utm) == pytest.approx(1e6)
    lonlat = reproject_geometry(Transformer.from_crs(ProjCRS.from_wkt(utm), 4326, always_xy=True), square)
    assert _area_m2(lonlat, ProjCRS.from_epsg(4326).to_wkt()) == pytest.approx(1e6, rel=0.002)  # UTM's scale 0.9996
