"""`al-loop export`: a scene's glacier outlines from the best source for each pixel.

Per scene, a class mosaic on the scene's grid in which each pixel comes from an accepted expert
label (Label Studio annotations, simulation oracles), else an inventory label, else the champion's
prediction, else nodata; then polygons of clean ice, debris-covered ice and glacier (their union,
with glacier of unknown type) in a GeoPackage, the mosaic as a Cloud-Optimized GeoTIFF (class,
source, model confidence) and, with an outline inventory, a per-glacier table of areas.

The model predicts the scene in strips of rows (:data:`STRIP` plus a halo of :data:`HALO` on
each side for context): only one strip's probabilities are held at a time; the uint8 class,
source and confidence planes of the whole scene are (a 7,000 x 7,000 Landsat scene: 49 MB each).
Areas are computed in the scene's projected CRS (metres), or on the ellipsoid for a geographic
grid; never in degrees.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Geod, Transformer
from rasterio.crs import CRS
from rasterio.features import rasterize
from shapely import transform as transform_coordinates
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry
from sqlalchemy.orm import Session

from al_loop import bands
from al_loop.classes import GLACIER, UNLABELED, class_code, combine_masks
from al_loop.config import Workspace
from al_loop.io.gpkg import write_gpkg
from al_loop.io.inventory import Inventory, read_inventory
from al_loop.io.rasters import read_decimated, read_window
from al_loop.io.views import composite, painted_bands
from al_loop.model.calibration import log_softmax
from al_loop.model.checkpoints import load_version
from al_loop.model.data import labelled_patches
from al_loop.model.inference import pick_device, predict_scene
from al_loop.model.normalization import normalize
from al_loop.outlines import LAYERS, apply_mapping_unit, trace
from al_loop.prelabels import min_pixels_for_area
from al_loop.terrain import pixel_size_metres
from db import registry
from db.models import ModelVersion, Scene
from db.queries import unpack_mask
from db.session import Store

NODATA, EXPERT, INVENTORY, MODEL = 0, 1, 2, 3  # source codes of the mosaic's second band
SOURCE_NAMES = {EXPERT: "expert", INVENTORY: "inventory", MODEL: "model"}
EXPERT_SOURCES = ("annotation", "oracle")  # label sources an expert (or a simulated one) stands for
CLASS_NODATA = 255
STRIP = 256
HALO = 64
CLASS_NAMES = {"clean_ice": "clean ice", "debris": "debris-covered glacier", "glacier": "glacier"}


@dataclass
class Mosaic:
    classes: np.ndarray  # (H, W) uint8 al_loop.classes codes, CLASS_NODATA where nothing is known
    source: np.ndarray  # (H, W) uint8 source codes
    confidence: np.ndarray  # (H, W) uint8 calibrated model confidence x 255 (0 off the model)


@dataclass
class SceneExport:
    scene_id: int
    scene: str
    folder: Path
    gpkg: Path
    mosaic: Path
    table: Path | None
    picture: Path | None = None  # the outlines over the scene, as a GIS map canvas shows them
    glims: Path | None = None  # the GLIMS-style shapefile, when asked for
    polygons: dict[str, int] = field(default_factory=dict)
    area_km2: dict[str, float] = field(default_factory=dict)
    model_version: str | None = None
    seconds: float = 0.0


def model_mosaic(workspace: Workspace, scene: Scene, version: ModelVersion, mosaic: Mosaic) -> None:
    """Fill ``mosaic`` with the model's classes and calibrated confidences, strip by strip."""
    bands.require_channels(version.channels, scene.available_channels, where=f"scene {scene.id} ({scene.name})")
    model, _ = load_version(workspace, version)
    device = pick_device()
    codes = np.array([class_code(c) for c in version.classes], dtype=np.uint8)
    temperature = float((version.metrics.get("calibration") or {}).get("temperature", 1.0))
    index = [scene.channels.index(c) for c in version.channels]
    reflective_names = [c for c in scene.available_channels if c in bands.REFLECTIVE_BANDS]
    reflective = [scene.channels.index(c) for c in reflective_names]
    height, width = scene.height, scene.width
    with rasterio.open(workspace.resolve(scene.data_path)) as src:
        for top in range(0, height, STRIP):
            rows = min(STRIP, height - top)
            start = max(0, top - HALO)
            span = min(height, top + rows + HALO) - start
            valid = bands.valid_mask(read_window(src, start, 0, span, width, reflective), reflective_names)
            x = normalize(read_window(src, start, 0, span, width, index), valid, version.normalization)
            result = predict_scene(model, lambda r, c, h, w: x[:, r : r + h, c : c + w],  # noqa: B023 (used here)
                                   span, width, device=device,
                                   precision=workspace.config.model.precision)
            keep = slice(top - start, top - start + rows)
            probs = result.probs[:, keep]
            logp = log_softmax(np.log(np.clip(probs, 1e-12, None)), temperature, axis=0)
            ok = valid[keep]
            mosaic.classes[top : top + rows] = np.where(ok, codes[probs.argmax(0)], CLASS_NODATA)
            mosaic.source[top : top + rows] = np.where(ok, MODEL, NODATA)
            mosaic.confidence[top : top + rows] = np.where(ok, np.exp(logp.max(0)) * 255, 0).astype(np.uint8)


def paint_labels(session: Session, scene: Scene, mosaic: Mosaic) -> None:
    """Paint the scene's accepted labels over the mosaic: inventory labels, then expert ones."""
    patch_ids = [p.id for p in scene.patches]
    for item in labelled_patches(session, patch_ids).values():
        p = item.patch
        rows = slice(max(p.row_off, 0), min(p.row_off + p.height, scene.height))
        cols = slice(max(p.col_off, 0), min(p.col_off + p.width, scene.width))
        crop = (
            slice(rows.start - p.row_off, rows.stop - p.row_off),
            slice(cols.start - p.col_off, cols.stop - p.col_off),
        )
        for code, sources in ((INVENTORY, lambda s: s not in EXPERT_SOURCES), (EXPERT, lambda s: s in EXPERT_SOURCES)):
            masks = [unpack_mask(label.mask, p.height, p.width) for label in item.labels if sources(label.source)]
            if not masks:
                continue
            label = combine_masks(masks)[crop]
            says = label != UNLABELED
            mosaic.classes[rows, cols][says] = label[says]
            mosaic.source[rows, cols][says] = code
            mosaic.confidence[rows, cols][says] = 0


def reproject_geometry(to: Transformer, geometry: BaseGeometry) -> BaseGeometry:
    """``geometry`` through a pyproj transformer (always_xy)."""
    return transform_coordinates(geometry, lambda x, y: to.transform(x, y), interleaved=False)


def _area_m2(geometry: BaseGeometry, crs_wkt: str) -> float:
    """A polygon's area in m²: planar in a projected CRS, on the WGS84 ellipsoid for a geographic one."""
    crs = ProjCRS.from_wkt(crs_wkt)
    if not crs.is_geographic:
        return float(geometry.area * crs.axis_info[0].unit_conversion_factor ** 2)
    lonlat = reproject_geometry(Transformer.from_crs(ProjCRS.from_wkt(crs_wkt), 4326, always_xy=True), geometry)
    return abs(Geod(ellps="WGS84").geometry_area_perimeter(lonlat)[0])


@dataclass
class SceneMosaic:
    """A scene's class mosaic and what an export needs to know of the scene."""

    mosaic: Mosaic
    meta: dict  # scene_id, scene, sensor, acquired (ISO date or ""), model_version ("" without one)
    crs_wkt: str
    transform: Affine
    raster: str  # the scene's stored data path
    channels: list[str]
    stretch: dict


def scene_mosaic(workspace: Workspace, store: Store, scene_id: int, version_name: str | None = None) -> SceneMosaic:
    """The class mosaic of a stored raster scene: expert labels, then inventories, then the model."""
    with store.session() as session:
        scene = session.get(Scene, scene_id)
        if scene is None or not scene.data_path:
            raise LookupError(f"no raster scene with id {scene_id} in the store (al-loop status lists them)")
        if not scene.crs or not scene.transform:
            raise ValueError(f"scene {scene_id} ({scene.name}) has no georeferenced grid: nothing to place outlines on")
        version = registry.version(session, version_name) if version_name else registry.champion(session)
        if version_name and version is None:
            raise LookupError(f"no model version {version_name!r} (al-loop models lists them)")
        height, width = scene.height, scene.width
        mosaic = Mosaic(np.full((height, width), CLASS_NODATA, np.uint8), np.zeros((height, width), np.uint8),
                        np.zeros((height, width), np.uint8))
        if version is not None:
            model_mosaic(workspace, scene, version, mosaic)
        paint_labels(session, scene, mosaic)
        meta = {"scene_id": scene.id, "scene": scene.name, "sensor": scene.sensor or "",
                "acquired": scene.acquired.isoformat() if scene.acquired else "",
                "model_version": version.name if version else ""}
        return SceneMosaic(mosaic, meta, scene.crs, Affine(*scene.transform[:6]), scene.data_path,
                           list(scene.channels), dict(scene.stretch or {}))


def export_scene(workspace: Workspace, store: Store, scene_id: int, out: Path, *, wgs84: bool = False,
                 inventory_path: Path | None = None, inventory_id: str | None = None,
                 min_area_m2: float | None = None, version_name: str | None = None, glims: bool = False
                 ) -> SceneExport:
    """Export one scene (see the module docstring) into ``out``/<scene name>/."""
    began = time.perf_counter()
    built = scene_mosaic(workspace, store, scene_id, version_name)
    mosaic, meta, crs_wkt, transform = built.mosaic, built.meta, built.crs_wkt, built.transform
    height, width = mosaic.classes.shape
    folder = Path(out) / meta["scene"]
    folder.mkdir(parents=True, exist_ok=True)
    inventory = read_inventory(inventory_path, crs_wkt, inventory_id) if inventory_path else None
    owners = rasterize_inventory(inventory, transform, (height, width)) if inventory else None
    unit_area = workspace.config.backend.min_mapping_unit_m2 if min_area_m2 is None else min_area_m2
    unit_px = min_pixels_for_area(unit_area, *_pixel_size(crs_wkt, transform, height)) if unit_area > 0 else 0

    layers: dict[str, list[dict]] = {}
    result = SceneExport(meta["scene_id"], meta["scene"], folder, folder / "outlines.gpkg", folder / "classes.tif",
                         None, model_version=meta["model_version"] or None)
    to_wgs84 = Transformer.from_crs(ProjCRS.from_wkt(crs_wkt), 4326, always_xy=True) if wgs84 else None
    traced: dict[str, list] = {}  # in the scene's CRS, for the picture
    for layer, codes in LAYERS.items():
        mask = apply_mapping_unit(np.isin(mosaic.classes, codes), unit_px)
        features: list[dict[str, Any]] = []
        traced[layer] = []
        for part in trace(mask, transform, mosaic.source, mosaic.confidence, owners):
            traced[layer].append(part.geometry)
            area = _area_m2(part.geometry, crs_wkt)
            shares = {SOURCE_NAMES[c]: float(part.sources[c] / part.pixels) for c in SOURCE_NAMES}
            main = [name for name, share in shares.items() if share > 0]
            features.append({
                "geometry": reproject_geometry(to_wgs84, part.geometry) if to_wgs84 else part.geometry,
                "properties": {
                    "class": CLASS_NAMES[layer], "area_km2": area / 1e6, "pixels": part.pixels,
                    "source": main[0] if len(main) == 1 else "mixed",
                    **{f"{name}_share": round(share, 4) for name, share in shares.items()},
                    "model_version": meta["model_version"],
                    "confidence": None if part.confidence is None else round(part.confidence, 4),
                    "scene_id": meta["scene_id"], "scene": meta["scene"], "sensor": meta["sensor"],
                    "acquired": meta["acquired"],
                    **({"inventory_id": inventory.ids[part.inventory - 1] if part.inventory else None}
                       if inventory else {}),
                }})
        layers[layer] = features
        result.polygons[layer] = len(features)
        result.area_km2[layer] = sum(f["properties"]["area_km2"] for f in features)
    table = None
    if inventory is not None and owners is not None:
        table = _glacier_table(inventory, owners, mosaic.classes,
                               pixel_area_grid(crs_wkt, transform, mosaic.classes.shape))
    write_gpkg(result.gpkg, layers, "EPSG:4326" if wgs84 else crs_wkt, table)
    _write_mosaic(result.mosaic, mosaic, crs_wkt, transform)
    if glims:
        result.glims = write_glims(folder / f"{meta['scene']}_glims.shp", layers, meta,
                                   None if wgs84 else crs_wkt)
    result.picture = plot_export(folder / "outlines.png", workspace.resolve(built.raster), built.channels,
                                 built.stretch, traced, transform, (height, width), meta)
    if table is not None:
        result.table = folder / "glaciers.csv"
        with open(result.table, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    result.seconds = time.perf_counter() - began
    return result


def _pixel_size(crs_wkt: str, transform: Affine, height: int) -> tuple[float, float]:
    xres, yres = pixel_size_metres(transform, crs_wkt, [height // 2])
    return float(xres[0, 0]), float(yres[0, 0])


def pixel_area_m2(crs_wkt: str, transform: Affine) -> float | None:
    """The pixel area in m² of a projected grid; None for a geographic one (areas on the ellipsoid)."""
    crs = ProjCRS.from_wkt(crs_wkt)
    if crs.is_geographic:
        return None
    metres = crs.axis_info[0].unit_conversion_factor
    return abs(transform.a * transform.e) * metres**2


def rasterize_inventory(inventory: Inventory, transform: Affine, shape: tuple[int, int]) -> np.ndarray:
    """Per pixel, 1 + the index of the inventory glacier it lies in (0: none)."""
    shapes_ = [(g, i + 1) for i, g in enumerate(inventory.geometries) if not g.is_empty]
    return rasterize(shapes_, out_shape=shape, transform=transform, fill=0, dtype=np.int32)


def pixel_area_grid(crs_wkt: str, transform: Affine, shape: tuple[int, int]) -> np.ndarray:
    """Each pixel's area in m² (per row on a geographic grid), broadcast to ``shape``."""
    area = pixel_area_m2(crs_wkt, transform)
    if area is None:
        xres, yres = pixel_size_metres(transform, crs_wkt, np.arange(shape[0]))
        return np.broadcast_to(xres * yres, shape)
    return np.broadcast_to(np.float64(area), shape)


def _glacier_table(inventory: Inventory, owners: np.ndarray, classes: np.ndarray, area: np.ndarray) -> list[dict]:
    """Per inventory glacier: its area and the clean, debris, unknown-type and nodata areas in it."""
    n = len(inventory.ids) + 1

    def km2(where: np.ndarray) -> np.ndarray:
        return np.bincount(owners[where], weights=area[where], minlength=n) / 1e6

    total = km2(owners > 0)
    clean, debris = km2(classes == 1), km2(classes == 2)
    unknown, nodata = km2(classes == GLACIER), km2(classes == CLASS_NODATA)
    rows = []
    for i, glacier_id in enumerate(inventory.ids, start=1):
        glacier = clean[i] + debris[i] + unknown[i]
        rows.append({"inventory_id": glacier_id, "inventory_area_km2": round(total[i], 6),
                     "clean_ice_km2": round(clean[i], 6), "debris_km2": round(debris[i], 6),
                     "glacier_unknown_type_km2": round(unknown[i], 6), "glacier_km2": round(glacier, 6),
                     "debris_fraction": round(debris[i] / (clean[i] + debris[i]), 4) if clean[i] + debris[i] else None,
                     "nodata_km2": round(nodata[i], 6)})
    return rows


def write_glims(path: Path, layers: dict[str, list[dict]], meta: dict, crs_wkt: str | None) -> Path:
    """A GLIMS-style shapefile in WGS84: glacier outlines as ``glac_bound`` (nunataks as their
    holes), debris-covered parts as ``debris_cov``; ``crs_wkt`` is the layers' CRS (None: WGS84)."""
    import fiona

    to_wgs84 = Transformer.from_crs(ProjCRS.from_wkt(crs_wkt), 4326, always_xy=True) if crs_wkt else None
    schema = {"geometry": "Polygon", "properties": {"line_type": "str:12", "glac_id": "str:32", "area": "float",
                                                     "src_date": "str:10", "anlys_id": "str:64", "rc_id": "str:32"}}
    with fiona.open(path, "w", driver="ESRI Shapefile", crs="EPSG:4326", schema=schema) as dst:
        for layer, line_type in (("glacier", "glac_bound"), ("debris", "debris_cov")):
            for feature in layers[layer]:
                p = feature["properties"]
                geometry = reproject_geometry(to_wgs84, feature["geometry"]) if to_wgs84 else feature["geometry"]
                dst.write({"geometry": mapping(geometry), "properties": {
                    "line_type": line_type, "glac_id": p.get("inventory_id") or "", "area": p["area_km2"],
                    "src_date": p["acquired"], "anlys_id": f"al-loop {p['model_version'] or 'labels'}",
                    "rc_id": str(p["scene"])[:32]}})
    return path


def plot_export(path: Path, raster: Path, channels: list[str], stretch: dict, traced: dict[str, list],
                transform: Affine, shape: tuple[int, int], meta: dict) -> Path:
    """The outlines over the scene's painted composite (decimated), in the scene's coordinates:
    what a QGIS user sees when opening the GeoPackage over the scene."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, _ = painted_bands(channels)
    overview = read_decimated(raster, [channels.index(n) for n in names if n in channels])
    valid = bands.valid_mask(overview, [n for n in names if n in channels])
    if len(overview) == 3:
        rgb = np.asarray(composite(dict(zip(names, overview, strict=True)), valid, stretch, names))
    else:
        rgb = np.zeros(valid.shape + (4,), np.uint8)
    height, width = shape
    left, top = transform * (0, 0)
    right, bottom = transform * (width, height)
    fig, ax = plt.subplots(figsize=(9, 9 * height / max(width, 1) + 0.6), dpi=110)
    ax.imshow(rgb, extent=(left, right, bottom, top), interpolation="nearest")
    colours = {"glacier": "#FFD400", "clean_ice": "#66C2FF", "debris": "#D95F02"}  # glacier: a halo under both
    for layer in ("glacier", "clean_ice", "debris"):
        for polygon in traced.get(layer, []):
            for ring in (polygon.exterior, *polygon.interiors):
                x, y = ring.xy
                ax.plot(x, y, color=colours[layer], linewidth=2.4 if layer == "glacier" else 0.8)
        ax.plot([], [], color=colours[layer], label=f"{CLASS_NAMES[layer]} ({len(traced.get(layer, []))})")
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.legend(loc="lower right", fontsize=8, framealpha=0.8)
    ax.set_title(f"{meta['scene']} {meta['acquired']} · outlines from expert labels, inventories and "
                 f"{meta['model_version'] or 'no model'}", fontsize=9)
    ax.ticklabel_format(style="plain", useOffset=False)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _write_mosaic(path: Path, mosaic: Mosaic, crs_wkt: str, transform: Affine) -> None:
    """The class, source and confidence planes as a Cloud-Optimized GeoTIFF."""
    profile = dict(driver="COG", width=mosaic.classes.shape[1], height=mosaic.classes.shape[0], count=3,
                   dtype="uint8", crs=CRS.from_wkt(crs_wkt), transform=transform, nodata=CLASS_NODATA,
                   compress="deflate")
    tmp = path.with_name(f".{path.name}.part")
    with rasterio.open(tmp, "w", **profile) as dst:
        for band, (plane, name) in enumerate(((mosaic.classes, "class"), (mosaic.source, "source"),
                                              (mosaic.confidence, "confidence_x255")), start=1):
            dst.write(plane, band)
            dst.set_band_description(band, name)
        dst.update_tags(classes="0 background, 1 clean ice, 2 debris, 3 glacier of unknown type, 255 nodata",
                        sources="0 none, 1 expert, 2 inventory, 3 model")
    tmp.replace(path)
