"""Ingestion: sources -> scenes and patches (and labels) in the store.

Every ingest is one transaction. Files it derives (15-channel stacks, quicklooks) are written
to a staging folder and moved into ``scenes/<name>-<fingerprint>/`` just before the commit, so
a failure leaves neither rows nor files. Re-ingesting a source whose fingerprint is already in
the store changes nothing.

Where pixels live: an HKH fused tile is read in place through windows (the archive is far too
large to copy) and stored by absolute path; everything al-loop derives lives inside the
workspace and is stored by path relative to it, so a workspace can be moved as a whole.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rich.progress import Progress, track
from sqlalchemy.orm import Session

from al_loop import bands, sensors
from al_loop.config import Workspace
from al_loop.io import landsat, quicklooks
from al_loop.io.rasters import (
    RasterInfo,
    describe_raster,
    hkh_channels,
    quick_fingerprint,
    read_decimated,
    read_window,
)
from al_loop.io.slices import SliceEntry, find_slices, read_slice_image, read_slice_mask
from al_loop.patches import scene_transform
from al_loop.tiling import patch_windows
from db import queries
from db.models import Patch, Scene
from db.session import Store

logger = logging.getLogger(__name__)


@dataclass
class IngestResult:
    scene_id: int
    name: str
    patches: int
    low_valid: int
    already_present: bool = False
    labels: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:60] or "scene"


@dataclass
class Staging:
    """A staging folder for the files an ingest derives, and the final folder it becomes."""

    path: Path
    final: Path
    published: bool = False

    def publish(self) -> None:
        """Move staging to its final place (replacing an orphan a crash may have left).
        Called inside the ingest's transaction, just before it commits."""
        if self.final.exists():
            shutil.rmtree(self.final)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.path.rename(self.final)
        self.published = True

    def stored(self, path: Path) -> Path:
        """Where a file written under staging will be once published."""
        return self.final / Path(path).relative_to(self.path)


@contextmanager
def staged_scene_dir(workspace: Workspace, name: str, fingerprint: str) -> Iterator[Staging]:
    """A :class:`Staging` whose files are removed if the block fails, published or not, so no
    file outlives a rolled-back ingest."""
    staging = Staging(
        path=workspace.staging_dir / uuid.uuid4().hex,
        final=workspace.scenes_dir / f"{_slug(name)}-{fingerprint[:12]}",
    )
    staging.path.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        if staging.published:
            shutil.rmtree(staging.final, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging.path, ignore_errors=True)


def _existing(store: Store, fingerprint: str) -> IngestResult | None:
    with store.session() as session:
        scene = queries.scene_by_fingerprint(session, fingerprint)
        if scene is None:
            return None
        return IngestResult(
            scene_id=scene.id,
            name=scene.name,
            patches=len(scene.patches),
            low_valid=sum(p.low_valid for p in scene.patches),
            already_present=True,
        )


def _patch(workspace: Workspace, staging: Staging, scene: Scene, pixels: np.ndarray, channels: list[str],
           quicklook_stem: str, **window: Any) -> Patch:
    """A patch row from its pixels: valid fraction, low-valid mark, quicklooks (staged)."""
    cfg = workspace.config.ingest
    valid = bands.valid_mask(pixels, channels)
    fraction = float(valid.mean())
    patch = Patch(scene=scene, valid_fraction=fraction, low_valid=fraction < cfg.min_valid_fraction, **window)
    if cfg.quicklooks and scene.stretch:
        folder = staging.path / "quicklooks"
        folder.mkdir(exist_ok=True)
        rgb, false = quicklooks.write_quicklooks(pixels, channels, valid, scene.stretch, folder / quicklook_stem)
        patch.quicklook_rgb = workspace.relative(staging.stored(rgb)) if rgb else None
        patch.quicklook_false = workspace.relative(staging.stored(false)) if false else None
    return patch


def _add_patches(
    session: Session, workspace: Workspace, scene: Scene, raster: Path, staging: Staging, quiet: bool
) -> tuple[int, int]:
    """Cut a raster scene into patches, window by window (memory bounded by one patch)."""
    cfg = workspace.config.ingest
    size = cfg.patch_size
    available_idx = [scene.channels.index(c) for c in scene.available_channels]
    transform = scene_transform(scene)
    windows = patch_windows(scene.height, scene.width, size, cfg.patch_overlap)
    n_low = 0
    with rasterio.open(raster) as src:
        for row_off, col_off in track(
            windows, description=f"patches of {scene.name}", disable=quiet, transient=True
        ):
            pixels = read_window(src, row_off, col_off, size, size, available_idx)
            x0, y0 = transform @ (col_off, row_off)
            x1, y1 = transform @ (col_off + size, row_off + size)
            patch = _patch(
                workspace, staging, scene, pixels, scene.available_channels, f"r{row_off}_c{col_off}",
                row_off=row_off, col_off=col_off, height=size, width=size,
                minx=min(x0, x1), miny=min(y0, y1), maxx=max(x0, x1), maxy=max(y0, y1),
            )
            n_low += patch.low_valid
            session.add(patch)
    session.flush()
    return len(windows), n_low


def _scene_stretch(raster: Path, channels: list[str], available: list[str], percentiles: Sequence[float]
                   ) -> dict[str, list[float]]:
    """Quicklook stretch from an overview of the whole scene, valid pixels only."""
    needed = [c for c in available if c in quicklooks.QUICKLOOK_CHANNELS or c in bands.REFLECTIVE_BANDS]
    overview = read_decimated(raster, [channels.index(c) for c in needed])
    valid = bands.valid_mask(overview, needed)
    return quicklooks.scene_stretch(overview, needed, valid, percentiles)


GDAL_CACHE_MB = 64
"""GDAL's block cache during ingestion. Its default (5% of RAM) keeps every block read, so
memory would grow with the tile; patches are read once, so a small cache loses nothing."""


AfterPatches = Callable[[Session, Scene], dict[str, int]]


def ingest_raster_scene(
    workspace: Workspace,
    store: Store,
    staging: Staging,
    *,
    info: RasterInfo,
    channels: list[str],
    available: list[str],
    source_kind: str,
    source_uri: str,
    fingerprint: str,
    name: str,
    sensor: str | None = None,
    acquired: dt.date | None = None,
    details: dict[str, Any] | None = None,
    after_patches: AfterPatches | None = None,
    quiet: bool = False,
) -> IngestResult:
    """Store a GeoTIFF scene and its patches in one transaction.

    ``info.path`` is either a source read in place or a file derived under ``staging``, stored
    at its published place. ``after_patches(session, scene)`` may add rows (labels) to the same
    transaction and returns counts for the result.
    """
    data_file = info.path
    derived = staging.path in data_file.parents
    stored_path = staging.stored(data_file) if derived else data_file.resolve()
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 2**20), store.session() as session:
        stretch = _scene_stretch(data_file, channels, available, workspace.config.ingest.stretch_percentiles)
        scene = Scene(
            name=name,
            source_kind=source_kind,
            source_uri=source_uri,
            fingerprint=fingerprint,
            sensor=sensor,
            acquired=acquired,
            crs=info.crs,
            transform=list(info.transform),
            width=info.width,
            height=info.height,
            channels=channels,
            available_channels=available,
            data_path=workspace.relative(stored_path),
            stretch=stretch,
            details=details or {},
        )
        session.add(scene)
        n_patches, n_low = _add_patches(session, workspace, scene, data_file, staging, quiet)
        labels = after_patches(session, scene) if after_patches else {}
        staging.publish()
        return IngestResult(scene.id, name, n_patches, n_low, labels=labels, details=scene.details)


def ingest_hkh_tile(workspace: Workspace, store: Store, path: Path, *, quiet: bool = False) -> IngestResult:
    """An HKH fused tile (15 named channels), read in place."""
    path = Path(path).resolve()
    info = describe_raster(path)
    channels = hkh_channels(info)
    fingerprint = quick_fingerprint(path, extra="hkh_tile")
    existing = _existing(store, fingerprint)
    if existing:
        return existing
    sensor, acquired = _scene_id_metadata(path.name)
    with staged_scene_dir(workspace, path.stem, fingerprint) as staging:
        return ingest_raster_scene(
            workspace,
            store,
            staging,
            info=info,
            channels=channels,
            available=channels,
            source_kind="hkh_tile",
            source_uri=str(path),
            fingerprint=fingerprint,
            name=path.stem,
            sensor=sensor,
            acquired=acquired,
            details={"missing_channels": [c for c in bands.CHANNELS if c not in channels]},
            quiet=quiet,
        )


def ingest_landsat(
    workspace: Workspace,
    store: Store,
    path: Path,
    *,
    dem: Path | None = None,
    band_mapping: list[str] | None = None,
    sensor: str | None = None,
    acquired: dt.date | None = None,
    quiet: bool = False,
) -> IngestResult:
    """A raw USGS Level-1 folder (one GeoTIFF per band, as USGS names them or renamed
    ``<name>_B<n>.TIF``) or a multi-band file with a band mapping, plus an optional DEM on any
    grid: built into the 15-channel HKH layout inside the workspace (indices with the dataset's
    conventions, DEM warped onto the scene grid, slope with the real pixel size), then cut into
    patches. Missing bands are recorded. ``sensor`` and ``acquired`` tell what the file names
    cannot (renamed files must say the sensor)."""
    path = Path(path).resolve()
    given = landsat.sensor_option(sensor) if sensor else None
    if path.is_dir():
        scene = landsat.find_level1_scene(path)
        named_sensor, named_date, mtl, kind = scene.sensor, scene.acquired, scene.mtl, "usgs_l1"
        if named_sensor is None and given is None:
            raise ValueError(f"{path}: the band file names ({scene.naming}) do not tell the sensor: give it with "
                             "--sensor (LT05, LE07, LC08 or LC09), and the date with --date YYYY-MM-DD")
    elif band_mapping:
        (named_sensor, named_date), mtl, kind = _scene_id_metadata(path.name), {}, "band_stack"
    else:
        raise ValueError(f"{path}: a single file needs a band mapping (e.g. --bands B1,B2,B3,B4,B5,B7)")
    if given is not None and named_sensor is not None and given.name != named_sensor:
        raise ValueError(f"{path}: the file names say the scene is {named_sensor}, --sensor says {given.name}")
    if acquired is not None and named_date is not None and acquired != named_date:
        raise ValueError(f"{path}: the file names say the scene was acquired on {named_date}, --date says {acquired}")
    instrument = landsat.sensor_of(named_sensor) if named_sensor else given or sensors.ETM_PLUS
    acquired = named_date or acquired
    if path.is_dir():
        sources = scene.sources(instrument)
    else:  # a single file comes with its band mapping (checked above)
        sources = landsat.band_files_from_stack(path, band_mapping or [], instrument)
    calibration = None if instrument.native else sensors.calibration(instrument, acquired, mtl)
    if calibration and calibration.reflectance and acquired is None and "EARTH_SUN_DISTANCE" not in mtl:
        logger.warning("%s: no acquisition date (--date) nor MTL file: the Earth-Sun distance is taken as 1 AU, "
                       "so reflective bands may be off by up to 3.4%%", path)
    inputs = sorted({s.path.resolve() for s in sources}) + ([Path(dem).resolve()] if dem else [])
    fingerprint = quick_fingerprint(*inputs, extra=f"{kind}:{[(s.name, s.band_index) for s in sources]}")
    existing = _existing(store, fingerprint)
    if existing:
        return existing
    with staged_scene_dir(workspace, path.stem, fingerprint) as staging:
        with Progress(disable=quiet, transient=True) as bar:
            task = bar.add_task(f"building the 15-channel stack of {path.name}")
            stack = landsat.build_stack(
                sources, staging.path / "stack.tif", dem,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                sensor=instrument, calibration=calibration,
            )
        return ingest_raster_scene(
            workspace,
            store,
            staging,
            info=describe_raster(stack.path),
            channels=list(bands.CHANNELS),
            available=stack.available_channels,
            source_kind=kind,
            source_uri=str(path),
            fingerprint=fingerprint,
            name=path.stem,
            sensor=instrument.name if (named_sensor or given) else None,
            acquired=acquired,
            details={
                "bands": {s.name: f"{s.path}#{s.band_index}" for s in sources},
                "dem": str(dem) if dem else None,
                "missing_channels": stack.missing_channels,
                **(_harmonised(instrument, calibration, stack.available_channels) if calibration else {}),
            },
            quiet=quiet,
        )


def _harmonised(sensor: sensors.Sensor, calibration: sensors.Calibration, channels: list[str]) -> dict[str, Any]:
    """What the store keeps about a scene brought into the ETM+ layout from another sensor."""
    return {"harmonised_from": sensor.name, "calibration": calibration.source,
            "approximations": {c: note for c, note in sensor.notes.items() if c in channels}}


def _scene_id_metadata(name: str) -> tuple[str | None, dt.date | None]:
    """Sensor and acquisition date from a Landsat product or HKH tile name, when it has them."""
    try:
        return landsat.parse_scene_id(name)
    except ValueError:
        return None, None



def ingest_synthetic_scene(
    workspace: Workspace, store: Store, *, size: int, seed: int, labelled: bool = True, quiet: bool = False
) -> IngestResult:
    """Generate the built-in synthetic scene inside the workspace and ingest it, with its
    exact labels (source ``inventory``) or, not ``labelled``, without: a pool to choose from."""
    from al_loop.label_ingest import LabelIngestResult, label_scene_from_raster
    from al_loop.synthetic import make_scene

    marker = "" if labelled else ":unlabelled"
    fingerprint = hashlib.sha256(f"synthetic:{SYNTHETIC_VERSION}:{size}:{seed}{marker}".encode()).hexdigest()
    existing = _existing(store, fingerprint)
    if existing:
        return existing
    name = f"synthetic-{size}-seed{seed}" + ("" if labelled else "-unlabelled")
    with staged_scene_dir(workspace, name, fingerprint) as staging:
        scene_files = make_scene(staging.path, height=size, seed=seed, name=name)
        origin = workspace.relative(staging.stored(scene_files.label_raster))

        def add_labels(session: Session, scene: Scene) -> dict[str, int]:
            result = LabelIngestResult(path=scene_files.label_raster)
            label_scene_from_raster(session, scene, scene_files.label_raster, origin, result)
            return {"created": result.created}

        return ingest_raster_scene(
            workspace,
            store,
            staging,
            info=describe_raster(scene_files.image),
            channels=list(bands.CHANNELS),
            available=list(bands.CHANNELS),
            source_kind="synthetic",
            source_uri=f"al_loop.synthetic size={size} seed={seed}",
            fingerprint=fingerprint,
            name=name,
            sensor="synthetic Landsat 7 ETM+",
            details={"size": size, "seed": seed, "labelled": labelled,
                     "label_vector": workspace.relative(staging.stored(scene_files.label_vector))},
            after_patches=add_labels if labelled else None,
            quiet=quiet,
        )


SYNTHETIC_VERSION = 1
"""Bump when the generator's output changes, so old synthetic scenes are not taken for new."""


def ingest_slices(
    workspace: Workspace,
    store: Store,
    folder: Path,
    *,
    footprints: Path | None = None,
    convention: str | None = None,
    quiet: bool = False,
) -> IngestResult:
    """The HKH ``slices/`` layout: each image ``.npy`` is one patch, read in place; its mask
    (either convention, detected or given) becomes an ``inventory`` label.

    A slices scene has no single grid: a patch's ``row_off`` is its ordinal in the folder and
    its footprint comes from the GeoJSON. Masks without an image are counted and skipped.
    """
    folder = Path(folder).resolve()
    entries = find_slices(folder, footprints)
    usable = [e for e in entries if e.image_path is not None]
    if not usable:
        raise ValueError(f"{folder}: no slice images (slice_*_img_*.npy) found")
    files = [p for e in usable for p in (e.image_path, e.mask_path) if p is not None]
    fingerprint = hashlib.sha256(
        "|".join(f"{p.name}:{p.stat().st_size}" for p in files).encode() + b"slices"
    ).hexdigest()
    existing = _existing(store, fingerprint)
    if existing:
        return existing
    first = read_slice_image(usable[0].image)
    height, width = first.shape[1:]
    stretch = _slices_stretch(usable, workspace.config.ingest.stretch_percentiles)
    labels = {"created": 0, "masks_without_image": len(entries) - len(usable)}
    with staged_scene_dir(workspace, folder.name, fingerprint) as staging, store.session() as session:
        crs = next((e.crs for e in usable if e.crs is not None), None)
        scene = Scene(
            name=folder.name,
            source_kind="slices",
            source_uri=str(folder),
            fingerprint=fingerprint,
            crs=crs.to_wkt() if crs else None,
            width=width,
            height=height,
            channels=list(bands.CHANNELS),
            available_channels=list(bands.CHANNELS),
            stretch=stretch,
            details={"slices": len(usable), **labels},
        )
        session.add(scene)
        n_low = 0
        for ordinal, entry in enumerate(track(usable, description="slices", disable=quiet, transient=True)):
            pixels = np.asarray(read_slice_image(entry.image), dtype=np.float32)
            if pixels.shape[1:] != (height, width):
                raise ValueError(f"{entry.image_path}: slice of {pixels.shape[1:]} pixels, expected {(height, width)} "
                                 "like the others")
            minx, miny, maxx, maxy = entry.bounds or (None, None, None, None)
            patch = _patch(
                workspace, staging, scene, pixels, list(bands.CHANNELS), entry.name,
                row_off=ordinal, col_off=0, height=height, width=width,
                minx=minx, miny=miny, maxx=maxx, maxy=maxy, data_path=str(entry.image_path),
            )
            n_low += patch.low_valid
            session.add(patch)
            session.flush()
            if entry.mask_path is not None:
                mask = read_slice_mask(entry.mask_path, convention)
                queries.save_label(session, patch, mask, source="inventory", origin=str(entry.mask_path))
                labels["created"] += 1
        staging.publish()
        return IngestResult(scene.id, scene.name, len(usable), n_low, labels=labels)


def _slices_stretch(entries: list[SliceEntry], percentiles: Sequence[float], sample: int = 32
                    ) -> dict[str, list[float]]:
    """Quicklook stretch from up to ``sample`` slices spread over the folder, subsampled 4x."""
    step = max(1, len(entries) // sample)
    images = [np.asarray(read_slice_image(e.image)[:, ::4, ::4]) for e in entries[::step][:sample]]
    pixels = np.concatenate(images, axis=2)
    return quicklooks.scene_stretch(pixels, bands.CHANNELS, bands.valid_mask(pixels), percentiles)
