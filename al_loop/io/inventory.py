"""Glacier outline inventories (RGI, GLIMS, ICIMOD) as ids and polygons in a scene's CRS, for
naming the glacier an exported outline lies in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import fiona
from fiona.errors import FionaError
from rasterio.crs import CRS
from rasterio.warp import transform_geom
from shapely.geometry import mapping, shape

ID_FIELDS = ("rgiid", "rgi_id", "glimsid", "glims_id", "glac_id", "id")  # tried in this order, any case


class InventoryError(ValueError):
    """An inventory file that cannot be used; the message names the file and the problem."""


@dataclass
class Inventory:
    path: Path
    id_field: str
    ids: list[str]
    geometries: list  # shapely (Multi)Polygons in the target CRS


def read_inventory(path: Path, crs_wkt: str, id_field: str | None = None) -> Inventory:
    """The polygons of an outline inventory, reprojected to ``crs_wkt``, with their ids
    (``id_field``, or the first of :data:`ID_FIELDS` the file has)."""
    path = Path(path)
    try:
        with fiona.open(path) as src:
            fields = list(src.schema["properties"])
            if src.crs is None or not src.crs:
                raise InventoryError(f"{path}: the inventory has no CRS")
            field = _id_field(path, fields, id_field)
            ids, geometries = [], []
            for feature in src:
                geometry = feature.geometry
                if geometry is None or geometry.type not in ("Polygon", "MultiPolygon"):
                    continue
                moved = transform_geom(CRS.from_user_input(src.crs), CRS.from_wkt(crs_wkt), mapping(shape(geometry)))
                ids.append(str(feature.properties[field]))
                geometries.append(shape(moved).buffer(0))
    except FionaError as exc:
        raise InventoryError(f"{path}: not a readable vector file ({exc})") from None
    if not ids:
        raise InventoryError(f"{path}: no polygon in the inventory")
    return Inventory(path, field, ids, geometries)


def _id_field(path: Path, fields: list[str], wanted: str | None) -> str:
    if wanted is not None:
        if wanted not in fields:
            raise InventoryError(f"{path}: no field {wanted!r} for --inventory-id; fields: {', '.join(fields)}")
        return wanted
    by_lower = {f.lower(): f for f in fields}
    for name in ID_FIELDS:
        if name in by_lower:
            return by_lower[name]
    raise InventoryError(f"{path}: no glacier id field ({', '.join(ID_FIELDS)}, any case); name one with "
                         f"--inventory-id (fields: {', '.join(fields)})")
