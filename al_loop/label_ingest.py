"""Label files into the store: one label per patch they cover, in one transaction.

A vector inventory is taken as complete inside its own extent: inside the bounding box of all
its polygons, a pixel no polygon covers is background; outside it, pixels are unlabeled (255),
so an inventory of one valley says nothing about the next. A label raster labels what it covers
(its nodata and the area outside it are unlabeled).

Re-ingesting the same file is idempotent; ingesting it again with another mapping, or after it
changed, makes new revisions of the same labels (origin: the file's absolute path).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.warp import transform_bounds
from rich.progress import track
from sqlalchemy.orm import Session

from al_loop.classes import UNLABELED
from al_loop.config import Workspace
from al_loop.io import labels as label_files
from al_loop.io.labels import LabelInputError
from al_loop.patches import scene_transform
from db import queries
from db.models import Patch, Scene
from db.session import Store

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".img")


@dataclass
class LabelIngestResult:
    path: Path
    patches: int = 0
    created: int = 0
    revised: int = 0
    unchanged: int = 0
    file_counts: dict[str, Any] = field(default_factory=dict)  # repaired, empty, unmapped, ...

    def add(self, outcome: str) -> None:
        self.patches += 1
        setattr(self, outcome, getattr(self, outcome) + 1)


def _georeference(scene: Scene) -> tuple[str, Affine]:
    """The scene's CRS (WKT) and transform, which labels from a file need to find their pixels."""
    if scene.crs is None or scene.transform is None:
        raise LookupError(f"scene {scene.id} ({scene.name}) has no CRS or transform: labels from a file cannot be "
                          "placed on it; choose georeferenced scenes with --scene")
    return scene.crs, scene_transform(scene)


def _window_transform(scene: Scene, patch: Patch) -> Affine:
    return _georeference(scene)[1] * Affine.translation(patch.col_off, patch.row_off)


def _overlaps(patch: Patch, bounds: tuple[float, float, float, float]) -> bool:
    if patch.bounds is None:
        return False
    minx, miny, maxx, maxy = bounds
    pminx, pminy, pmaxx, pmaxy = patch.bounds
    return pminx < maxx and pmaxx > minx and pminy < maxy and pmaxy > miny


def _outside_extent(transform: Affine, shape: tuple[int, int], bounds: tuple[float, float, float, float]
                    ) -> np.ndarray:
    """Pixels of a window whose centres lie outside ``bounds``."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    xs = transform.a * (cols + 0.5) + transform.b * (rows + 0.5) + transform.c
    ys = transform.d * (cols + 0.5) + transform.e * (rows + 0.5) + transform.f
    minx, miny, maxx, maxy = bounds
    return (xs < minx) | (xs > maxx) | (ys < miny) | (ys > maxy)


def _beyond_scene(scene: Scene, patch: Patch) -> np.ndarray:
    """Pixels of a patch that lie past the scene's edge (edge patches reach past it)."""
    rows = np.arange(patch.height)[:, None] + patch.row_off
    cols = np.arange(patch.width)[None, :] + patch.col_off
    return (rows >= scene.height) | (cols >= scene.width)


def label_scene_from_vector(
    session: Session, scene: Scene, labels: label_files.VectorLabels, origin: str,
    result: LabelIngestResult, source: str = "inventory", quiet: bool = True,
) -> None:
    patches = [p for p in scene.patches if _overlaps(p, labels.bounds)]
    for patch in track(patches, description=f"labels on {scene.name}", disable=quiet, transient=True):
        transform = _window_transform(scene, patch)
        shape = (patch.height, patch.width)
        mask = label_files.rasterize_window(labels, transform, shape)
        mask[_outside_extent(transform, shape, labels.bounds) | _beyond_scene(scene, patch)] = UNLABELED
        _save(session, patch, mask, source, origin, result)


def label_scene_from_raster(
    session: Session, scene: Scene, path: Path, origin: str, result: LabelIngestResult,
    value_mapping: dict[int, str] | None = None, source: str = "inventory", quiet: bool = True,
) -> None:
    scene_crs, _ = _georeference(scene)
    bounds = _raster_bounds(path, scene_crs)
    patches = [p for p in scene.patches if _overlaps(p, bounds)]
    crs = CRS.from_wkt(scene_crs)
    for patch in track(patches, description=f"labels on {scene.name}", disable=quiet, transient=True):
        mask = label_files.read_raster_labels_window(
            path, crs, _window_transform(scene, patch), (patch.height, patch.width), value_mapping
        )
        mask[_beyond_scene(scene, patch)] = UNLABELED
        _save(session, patch, mask, source, origin, result)


def _raster_bounds(path: Path, scene_crs: str) -> tuple[float, float, float, float]:
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise LabelInputError(path, "label raster has no CRS")
            return transform_bounds(src.crs, CRS.from_wkt(scene_crs), *src.bounds)
    except RasterioError as exc:
        raise LabelInputError(path, f"not a readable raster ({exc})") from None


def _save(session: Session, patch: Patch, mask: np.ndarray, source: str, origin: str, result: LabelIngestResult
          ) -> None:
    if (mask == UNLABELED).all():
        return
    _, outcome = queries.save_label(session, patch, mask, source=source, origin=origin)
    result.add(outcome)


def ingest_labels(
    workspace: Workspace,
    store: Store,
    path: Path,
    *,
    scene_ids: list[int] | None = None,
    attribute: str | None = None,
    mapping: dict[str, str] | None = None,
    default_class: str = "glacier",
    raster_values: dict[int, str] | None = None,
    quiet: bool = False,
) -> LabelIngestResult:
    """Rasterise a label file onto every patch of the chosen scenes (default: all raster
    scenes) that it overlaps. Labels that overlap no patch are an error and store nothing."""
    path = Path(path).resolve()
    if not path.exists():
        raise LabelInputError(path, "no such file")
    origin = str(path)
    result = LabelIngestResult(path=path)
    is_raster = path.suffix.lower() in RASTER_SUFFIXES
    if is_raster and attribute is not None:
        raise LabelInputError(path, "--attribute names a column of vector labels; a label raster's pixel "
                                    "values are mapped with --map VALUE=CLASS")
    if is_raster and mapping is not None:
        raise LabelInputError(path, "a label raster's values are mapped by integer pixel value (raster_values)")
    with store.session() as session:
        scenes = _target_scenes(session, scene_ids)
        if is_raster:
            for scene in scenes:
                label_scene_from_raster(session, scene, path, origin, result, raster_values, quiet=quiet)
        else:
            by_crs: dict[str, label_files.VectorLabels] = {}
            for scene in scenes:
                scene_crs, _ = _georeference(scene)
                if scene_crs not in by_crs:
                    by_crs[scene_crs] = label_files.load_vector_labels(
                        path, CRS.from_wkt(scene_crs), attribute, mapping, default_class
                    )
                label_scene_from_vector(session, scene, by_crs[scene_crs], origin, result, quiet=quiet)
            result.file_counts = next(iter(by_crs.values())).counts if by_crs else {}
        if result.patches == 0:
            names = ", ".join(f"{s.id} ({s.name})" for s in scenes)
            raise LabelInputError(path, f"labels do not overlap any patch of scene(s) {names}")
    return result


def _target_scenes(session: Session, scene_ids: list[int] | None) -> list[Scene]:
    scenes = queries.raster_scenes(session, scene_ids)
    if scene_ids:
        missing = sorted(set(scene_ids) - {s.id for s in scenes})
        if missing:
            raise LookupError(f"no raster scene with id {missing} in the store")
    if not scenes:
        raise LookupError("the store has no raster scene to label: ingest a scene first")
    return scenes
