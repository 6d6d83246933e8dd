"""Writing outlines to a GeoPackage (fiona/GDAL): one polygon layer per class and, optionally, an
attribute table without geometry. Written to a temporary file and moved into place, so a reader
never sees half an export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fiona
from fiona.crs import CRS as FionaCRS
from shapely.geometry import mapping


def _field_type(values: list[Any]) -> str:
    kinds = {type(v) for v in values if v is not None}
    if kinds <= {int, bool}:
        return "int" if kinds else "str"
    if kinds <= {int, float}:
        return "float"
    return "str"


def _schema(rows: list[dict[str, Any]], geometry: str | None) -> dict:
    names = list(rows[0]) if rows else []
    return {"geometry": geometry or "None",
            "properties": {name: _field_type([r[name] for r in rows]) for name in names}}


def write_gpkg(path: Path, layers: dict[str, list[dict]], crs: str, table: list[dict] | None = None,
               table_name: str = "glaciers") -> Path:
    """Write ``layers`` (name -> features ``{"geometry": shapely polygon, "properties": {...}}``)
    in ``crs`` (WKT or "EPSG:n"), and ``table`` (rows of plain values) as an attribute table."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.part{path.suffix}")  # GDAL wants the .gpkg extension
    tmp.unlink(missing_ok=True)
    target = FionaCRS.from_user_input(crs) if crs.upper().startswith("EPSG:") else FionaCRS.from_wkt(crs)
    template = {"class": "", "area_km2": 0.0}
    for name, features in layers.items():
        rows = [f["properties"] for f in features] or [template]
        schema = _schema(rows, "Polygon")
        with fiona.open(tmp, "w", driver="GPKG", layer=name, crs=target, schema=schema) as dst:
            dst.writerecords({"geometry": mapping(f["geometry"]), "properties": f["properties"]} for f in features)
    if table:
        with fiona.open(tmp, "w", driver="GPKG", layer=table_name, schema=_schema(table, None)) as dst:
            dst.writerecords({"geometry": None, "properties": row} for row in table)
    tmp.replace(path)
    return path
