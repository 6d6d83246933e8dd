"""Raw Landsat data (5 TM, 7 ETM+, 8/9 OLI) to the HKH dataset's 15-channel layout.

Two inputs feed one builder: a USGS Level-1 folder (one GeoTIFF per band,
:func:`band_files_from_folder`) and a multi-band stack with a band mapping
(:func:`band_files_from_stack`). Both give a list of :class:`BandSource`, named with the sensor's
own band names, which :func:`build_stack` turns into a float32 GeoTIFF with the channels of
``bands.CHANNELS``, on the grid of the first reflective band. Bands of TM and OLI scenes become
ETM+ digital numbers on the way (:mod:`al_loop.sensors`).

Conventions are those of the HKH fused tiles (checked on the real clip, where all 15 channels
are 0 wherever ``bands.valid_mask`` is false):

* bands keep their digital numbers; the Level-1 fill value 0 stays 0;
* at invalid pixels (scene edges, SLC-off stripes) every channel the scene has is 0, indices
  and terrain included;
* a channel the inputs cannot give (a band missing, an index lacking an input, no DEM) is NaN
  everywhere and listed in :attr:`StackInfo.missing_channels`;
* a valid pixel that the DEM does not cover has NaN elevation, and NaN slope when the DEM
  misses any pixel of its 3x3 neighbourhood (a one-pixel NaN ring around DEM voids and edges).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.transform import array_bounds
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from al_loop.bands import (
    CHANNELS,
    INDEX_INPUTS,
    TERRAIN_CHANNELS,
    BandNameError,
    channel_index,
    compute_index,
    valid_mask,
)
from al_loop.io.rasters import RasterInfo, RasterInputError, describe_raster
from al_loop.sensors import ETM_PLUS, SENSORS, Calibration, Sensor, channels_from, to_etm
from al_loop.terrain import pixel_size_metres, slope_degrees
from al_loop.tiling import clipped_blocks

SENSOR_NAMES = {  # every Landsat sensor code a scene id may carry; al_loop.sensors.SENSORS has those supported
    "LT04": "Landsat 4 TM",
    "LT05": "Landsat 5 TM",
    "LE07": "Landsat 7 ETM+",
    "LC08": "Landsat 8 OLI/TIRS",
    "LC09": "Landsat 9 OLI-2/TIRS-2",
}

# LE07_L1TP_134040_20070922_20161231_01_T1: sensor, level, path/row, acquired, processed,
# collection, tier.
_SCENE_ID = r"(?P<sensor>L[A-Z]\d{2})_L1[A-Z]{2}_\d{6}_(?P<date>\d{8})_\d{8}_\d{2}_(?:T1|T2|RT)"
# The sensor and date part alone, also found in HKH fused tile names (LE07_134040_20070922).
_SENSOR_DATE = r"(?P<sensor>L[A-Z]\d{2})_(?:L1[A-Z]{2}_)?\d{6}_(?P<date>\d{8})"
# Pre-collection ids (before 2017): LE71400412000304SGS00 = sensor E, Landsat 7, path 140, row
# 041, year 2000, day of year 304, ground station SGS, archive version 00.
_PRE_COLLECTION = r"(?P<pre>L[A-Z]\d)\d{6}(?P<year>\d{4})(?P<doy>\d{3})[A-Z]{3}\d{2}"
_BAND = r"(?P<band>B6_VCID_[12]|B6[12]|B1[01]|B[1-9]|BQA|QA_PIXEL)"
_BAND_FILES = {
    "collection": re.compile(_SCENE_ID + "_" + _BAND + r"\.tif", re.IGNORECASE),
    "pre-collection": re.compile(_PRE_COLLECTION + "_" + _BAND + r"\.tif", re.IGNORECASE),
    # Renamed files: anything, then the band. Level-2 products (SR_/ST_ bands) are not DN.
    "renamed": re.compile(r"(?P<prefix>.+)_" + _BAND + r"\.tif", re.IGNORECASE),
}
_BAND_ALIASES = {"QA_PIXEL": "BQA", "B61": "B6_VCID_1", "B62": "B6_VCID_2"}
_BAND_ORDER = ("B1", "B2", "B3", "B4", "B5", "B6", "B6_VCID_1", "B6_VCID_2", "B7", "B8", "B9", "B10", "B11", "BQA")

# Resampling onto the 30 m grid when a band's grid differs: the 15 m panchromatic band is
# averaged, the quality band's bit flags cannot be interpolated, the rest is bilinear.
_RESAMPLING = {"B8": Resampling.average, "BQA": Resampling.nearest}

# GDAL's warper works per window read and by default (1) approximates the coordinate
# transformation to 1/8 source pixel and (2) widens the resampling kernel by a scale factor
# estimated from each window's shape. Both vary between windows: block-wise reads of a
# reprojected DEM differed from a whole-scene read by up to 10 m. An effectively exact
# transformation (rasterio refuses exactly 0; about 1 s per million pixels, one core) and a fixed
# scale (plain 2x2 bilinear, right for SRTM's 30-90 m; a much finer DEM would be sampled
# rather than averaged) make blocks seamless.
_WARP_TOLERANCE = 1e-9
_FIXED_SCALE = {"XSCALE": 1, "YSCALE": 1}


@dataclass(frozen=True)
class BandSource:
    """One Landsat band: its channel name, the file holding it, and its 1-based band index."""

    name: str
    path: Path
    band_index: int = 1


@dataclass(frozen=True)
class StackInfo:
    path: Path
    available_channels: list[str]  # in CHANNELS order
    missing_channels: list[str]  # NaN in every pixel
    crs: CRS
    transform: Affine
    width: int
    height: int


def parse_scene_id(name: str) -> tuple[str, date]:
    """Sensor and acquisition date from a USGS scene id, band file name or HKH tile name.

    ``LE07_L1TP_134040_20070922_20161231_01_T1_B1.TIF`` -> ``("Landsat 7 ETM+", 2007-09-22)``;
    so does ``LE07_134040_20070922.tif`` and the pre-collection ``LE71340402007265SGS00_B1.TIF``.
    """
    base = Path(name).name
    match = re.search(_SENSOR_DATE, base, re.IGNORECASE)
    if match is not None:
        code, acquired = match["sensor"].upper(), datetime.strptime(match["date"], "%Y%m%d").date()
    else:
        match = re.search(_PRE_COLLECTION, base, re.IGNORECASE)
        if match is None:
            raise ValueError(
                f"{name!r} is not a USGS Landsat Level-1 scene id "
                "(like LE07_L1TP_134040_20070922_20161231_01_T1 or LE71340402007265SGS00)"
            )
        pre = match["pre"].upper()
        code = f"{pre[:2]}0{pre[2]}"
        acquired = datetime.strptime(f"{match['year']}{match['doy']}", "%Y%j").date()
    if code not in SENSOR_NAMES:
        raise ValueError(f"{name!r}: unknown sensor code {code}; known: {', '.join(SENSOR_NAMES)}")
    return SENSOR_NAMES[code], acquired


def path_row(name: str) -> tuple[int, int] | None:
    """The WRS-2 path and row in a scene id or tile name (``LE07_134040_20070922`` -> (134, 40));
    None when the name holds none."""
    base = Path(name).name
    match = re.search(r"L[A-Z]\d{2}_(?:L1[A-Z]{2}_)?(\d{3})(\d{3})_\d{8}", base, re.IGNORECASE) or re.search(
        r"L[A-Z]\d(\d{3})(\d{3})\d{7}[A-Z]{3}\d{2}", base, re.IGNORECASE)
    return (int(match[1]), int(match[2])) if match else None


_SENSOR_ALIASES = {
    "LE07": {"LE07", "LE7", "L7", "ETM+", "ETM", "LANDSAT7", "LANDSAT7ETM+"},
    "LT05": {"LT05", "LT5", "L5", "TM", "LANDSAT5", "LANDSAT5TM"},
    "LC08": {"LC08", "LC8", "L8", "OLI", "LANDSAT8", "LANDSAT8OLI", "LANDSAT8OLI/TIRS"},
    "LC09": {"LC09", "LC9", "L9", "OLI-2", "LANDSAT9", "LANDSAT9OLI-2/TIRS-2"},
}
_SUPPORTED_NAMES = "Landsat 5 TM (LT05), 7 ETM+ (LE07), 8 OLI (LC08) or 9 OLI-2 (LC09)"


def sensor_of(given: str) -> Sensor:
    """A sensor named by the user (``LT05``, ``L5``, ``TM``, ``Landsat 8 OLI/TIRS`` ...) or by a
    scene id's sensor code; a clear error for Landsat 4 and other sensors without a mapping."""
    key = given.strip().upper().replace(" ", "")
    for code, aliases in _SENSOR_ALIASES.items():
        if key in aliases or key == SENSOR_NAMES[code].upper().replace(" ", ""):
            return SENSORS[code]
    for code, name in SENSOR_NAMES.items():
        if key in {code, name.upper().replace(" ", "")}:
            raise RasterInputError(f"{given}: {name} scenes are not supported; give {_SUPPORTED_NAMES} scenes")
    raise RasterInputError(f"{given!r}: not a sensor al-loop knows; give {_SUPPORTED_NAMES}")


def sensor_option(given: str) -> Sensor:
    """The sensor of the ``--sensor`` option (see :func:`sensor_of`)."""
    try:
        return sensor_of(given)
    except RasterInputError as exc:
        raise RasterInputError(f"--sensor {exc}") from None


@dataclass(frozen=True)
class Level1Scene:
    """The band files of a Level-1 folder and what their names tell."""

    bands: dict[str, Path]  # the sensor's own band name -> file
    naming: str  # collection, pre-collection or renamed
    sensor: str | None
    acquired: date | None
    mtl: dict[str, str]  # the scene's MTL metadata, empty without an MTL file

    def sources(self, sensor: Sensor) -> list[BandSource]:
        """The band files ``sensor`` turns into the layout, in its order; its other bands (OLI's
        coastal, pan, cirrus and second thermal band) are left out."""
        foreign = [name for name in self.bands if name not in sensor.bands and name not in sensor.unused]
        if foreign:
            raise RasterInputError(f"{self.bands[foreign[0]]}: {sensor.name} has no band {foreign[0]} "
                                   f"(its bands here: {', '.join((*sensor.bands, *sensor.unused))})")
        return [BandSource(name, self.bands[name]) for name in sensor.bands if name in self.bands]


def find_level1_scene(folder: Path) -> Level1Scene:
    """Band files of one Landsat Level-1 scene in ``folder``.

    Collection 1 and 2 names (``*_B1.TIF`` ... ``*_B11.TIF``, ``*_B6_VCID_2.TIF``, ``*_BQA.TIF``;
    Collection 2's ``*_QA_PIXEL.TIF`` counts as BQA), pre-collection names
    (``LE71400412000304SGS00_B1.TIF``, thermal ``_B61``/``_B62`` too) and renamed files
    (``<anything>_B1.TIF``) are recognised, any case of ``.tif``, and the ``*_MTL.txt`` metadata.
    Other files (Level-2 ``_SR_``/``_ST_`` products) are ignored.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise RasterInputError(f"{folder}: not a folder")
    found: dict[str, Path] = {}
    namings, ids = set(), set()
    for path in sorted(folder.iterdir()):
        for naming, pattern in _BAND_FILES.items():  # noqa: B007 (the naming that matched is used below)
            match = pattern.fullmatch(path.name)
            if match is not None:
                break
        else:
            continue
        if naming == "renamed" and (re.search(r"_(?:SR|ST)$", match["prefix"], re.IGNORECASE)
                                    or re.search(r"L[A-Z]\d{2}_L2", path.name, re.IGNORECASE)):
            continue  # a Level-2 product (surface reflectance or temperature), not Level-1 DN
        if naming != "renamed":
            code = (
                match["sensor"].upper() if naming == "collection" else f"{match['pre'][:2].upper()}0{match['pre'][2]}"
            )
            try:
                sensor_of(code)
            except RasterInputError as exc:
                raise RasterInputError(f"{path}: {exc}") from None
        name = match["band"].upper()
        name = _BAND_ALIASES.get(name, name)
        if name in found:
            raise RasterInputError(
                f"{folder}: two files for band {name}: {found[name].name} and {path.name}"
            )
        found[name] = path
        namings.add(naming)
        ids.add(path.name[: match.start("band") - 1])
    if not found:
        raise RasterInputError(
            f"{folder}: no Landsat Level-1 band files (like LE07_L1TP_134040_20070922_20161231_01_T1_B1.TIF, "
            "LE71340402007265SGS00_B1.TIF or <name>_B1.TIF)"
        )
    if len(ids) > 1:
        raise RasterInputError(f"{folder}: band files of more than one scene ({', '.join(sorted(ids))}); "
                               "put each scene in its own folder")
    scene_id = ids.pop()
    try:
        sensor, acquired = parse_scene_id(scene_id)
    except ValueError:
        try:
            sensor, acquired = parse_scene_id(folder.name)
        except ValueError:
            sensor, acquired = None, None
    naming = "renamed" if "renamed" in namings else namings.pop()
    mtl = [p for p in folder.iterdir() if p.name.upper().endswith("_MTL.TXT")]
    bands = {name: found[name] for name in _BAND_ORDER if name in found}
    return Level1Scene(bands, naming, sensor, acquired, read_mtl(mtl[0]) if len(mtl) == 1 else {})


def read_mtl(path: Path) -> dict[str, str]:
    """``KEY = value`` pairs of a Landsat MTL metadata file (groups flattened, quotes dropped)."""
    values = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip('"')
    return values


def find_level1_bands(folder: Path) -> dict[str, Path]:
    """Band files of one Landsat Level-1 scene in ``folder``, keyed by the sensor's band name (see
    :func:`find_level1_scene`)."""
    return find_level1_scene(folder).bands


def band_files_from_folder(folder: Path, sensor: Sensor | None = None) -> list[BandSource]:
    """The bands of a USGS Level-1 folder as sources for :func:`build_stack`, for the sensor its
    file names tell (``sensor`` for renamed files; Landsat 7 ETM+ when neither tells)."""
    scene = find_level1_scene(folder)
    return scene.sources(sensor or (sensor_of(scene.sensor) if scene.sensor else ETM_PLUS))


def band_files_from_stack(
    path: Path, mapping: list[str] | dict[int, str], sensor: Sensor = ETM_PLUS
) -> list[BandSource]:
    """The bands of one multi-band file as sources for :func:`build_stack`.

    ``mapping`` names every band in file order (``["B1", "B2", "B3", "B4", "B5", "B7"]``), or
    picks bands by 1-based index (``{1: "B1", 4: "B4"}``), with ``sensor``'s own band names
    (OLI's blue is B2). Band descriptions in the file that name a band must agree with the mapping.
    """
    path = Path(path)
    info = describe_raster(path)
    if isinstance(mapping, dict):
        outside = sorted(i for i in mapping if not 1 <= i <= info.count)
        if outside:
            raise RasterInputError(
                f"{path}: has {info.count} bands; the mapping names band(s) {outside}"
            )
        sources = [BandSource(name, path, i) for i, name in sorted(mapping.items())]
    else:
        if len(mapping) != info.count:
            raise RasterInputError(
                f"{path}: the mapping names {len(mapping)} bands ({', '.join(mapping)}) "
                f"but the file has {info.count}"
            )
        sources = [BandSource(name, path, i) for i, name in enumerate(mapping, start=1)]
    _check_names(sources, sensor)
    for source in sources:
        _check_band(source, info, sensor)
    return sources


def build_stack(
    sources: list[BandSource],
    out_path: Path,
    dem: Path | None = None,
    block_size: int = 512,
    progress: Callable[[int, int], None] | None = None,
    sensor: Sensor = ETM_PLUS,
    calibration: Calibration | None = None,
) -> StackInfo:
    """Write the 15-channel HKH layout of a Landsat scene to ``out_path``.

    ``sources`` carry ``sensor``'s own band names; bands of sensors other than ETM+ become ETM+
    DN with ``calibration`` (:func:`al_loop.sensors.to_etm`).

    Every input is checked before anything is written; the output is written to a temporary
    file beside ``out_path`` and renamed into place, so a failure leaves no file behind.
    Work goes block by block (``block_size`` pixels square), so memory stays bounded for a
    full scene. ``dem`` may be on any grid and CRS: it is warped onto the scene grid and its
    slope computed there with the scene's pixel size in metres. ``progress(done, total)`` is
    called after each block.
    """
    out_path = Path(out_path)
    infos = _check_sources(sources, sensor)
    reference = next(s for name in sensor.reflective for s in sources if s.name == name)
    grid = infos[reference.path]
    for info in infos.values():
        _check_overlap(info, grid)
    if dem is not None:
        dem = Path(dem)
        _check_overlap(describe_raster(dem), grid)
    available = _available_channels(channels_from(sensor, {s.name for s in sources}), dem is not None)
    missing = [c for c in CHANNELS if c not in available]

    tmp = out_path.with_name(f".{out_path.name}.{uuid.uuid4().hex}.part")
    try:
        with ExitStack() as stack:
            readers = {s.name: _band_reader(s, infos[s.path], grid, stack) for s in sources}
            terrain = _TerrainReader(dem, grid, stack) if dem is not None else None
            dst = stack.enter_context(rasterio.open(tmp, "w", **_output_profile(grid)))
            for i, name in enumerate(CHANNELS, start=1):
                dst.set_band_description(i, name)
            dst.update_tags(missing_channels=",".join(missing))
            windows = [Window(col, row, w, h) for row, col, h, w in clipped_blocks(grid.height, grid.width, block_size)]
            for done, window in enumerate(windows, start=1):
                block = _build_block(window, readers, terrain, available, lambda raw: to_etm(raw, sensor, calibration))
                dst.write(block, window=window)
                if progress is not None:
                    progress(done, len(windows))
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return StackInfo(
        path=out_path,
        available_channels=available,
        missing_channels=missing,
        crs=CRS.from_wkt(grid.crs),
        transform=Affine(*grid.transform),
        width=grid.width,
        height=grid.height,
    )


def _check_names(sources: list[BandSource], sensor: Sensor) -> None:
    names = [s.name for s in sources]
    unknown = [n for n in names if n not in sensor.bands]
    if unknown:
        raise BandNameError(
            f"unknown band name(s) {unknown}; {sensor.name} bands are {', '.join(sensor.bands)}"
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise BandNameError(f"band(s) {repeated} given more than once")


def _check_band(source: BandSource, info: RasterInfo, sensor: Sensor) -> None:
    """The band must exist, and a description naming a channel must match the mapped name."""
    if not 1 <= source.band_index <= info.count:
        raise RasterInputError(
            f"{source.path}: has {info.count} band(s); band {source.band_index} "
            f"({source.name}) was asked for"
        )
    dtype = info.dtypes[source.band_index - 1]
    if sensor.bits == 16 and dtype in {"uint8", "int8"}:
        raise RasterInputError(
            f"{source.path}: band {source.band_index} ({source.name}) is 8-bit ({dtype}), but {sensor.name} "
            "Level-1 bands are 16-bit; is the sensor right?"
        )
    described = info.descriptions[source.band_index - 1]
    known = {c.upper() for c in (*CHANNELS, *sensor.bands, *sensor.unused)}
    if described and described.upper() in known and described.upper() != source.name.upper():
        raise BandNameError(
            f"{source.path}: band {source.band_index} is described as {described!r} "
            f"but mapped to {source.name!r}"
        )


def _check_sources(sources: list[BandSource], sensor: Sensor) -> dict[Path, RasterInfo]:
    """Check every source file (readable, georeferenced, band names) before any writing."""
    if not sources:
        raise ValueError("no band sources given")
    _check_names(sources, sensor)
    if not any(s.name in sensor.reflective for s in sources):
        raise BandNameError(
            f"no reflective {sensor.name} band ({', '.join(sensor.reflective)}) among "
            f"{[s.name for s in sources]}; one is needed for the 30 m grid and the valid-pixel rule"
        )
    infos = {s.path: describe_raster(s.path) for s in sources}
    for source in sources:
        _check_band(source, infos[source.path], sensor)
    return infos


def _bounds(info: RasterInfo) -> tuple[float, float, float, float]:
    return array_bounds(info.height, info.width, Affine(*info.transform))


def _check_overlap(info: RasterInfo, grid: RasterInfo) -> None:
    """Fail when a file does not overlap the scene grid (compared in the scene's CRS)."""
    left, bottom, right, top = transform_bounds(
        CRS.from_wkt(info.crs), CRS.from_wkt(grid.crs), *_bounds(info), densify_pts=21
    )
    g_left, g_bottom, g_right, g_top = _bounds(grid)
    if left >= g_right or right <= g_left or bottom >= g_top or top <= g_bottom:
        raise RasterInputError(f"{info.path}: does not overlap the scene {grid.path}")


def _available_channels(channels: list[str], has_dem: bool) -> list[str]:
    have = set(channels)
    have |= {index for index, (a, b) in INDEX_INPUTS.items() if a in have and b in have}
    if has_dem:
        have |= set(TERRAIN_CHANNELS)
    return [c for c in CHANNELS if c in have]


def _same_grid(info: RasterInfo, grid: RasterInfo) -> bool:
    return (
        CRS.from_wkt(info.crs) == CRS.from_wkt(grid.crs)
        and Affine(*info.transform).almost_equals(Affine(*grid.transform))
        and (info.width, info.height) == (grid.width, grid.height)
    )


@dataclass
class _Reader:
    """Reads one band of an open dataset by window as float32, masked pixels set to ``fill``."""

    dataset: rasterio.io.DatasetReader | WarpedVRT
    band_index: int
    path: Path
    fill: float

    def read(self, window: Window) -> np.ndarray:
        try:
            data = self.dataset.read(self.band_index, window=window, masked=True)
        except RasterioError as exc:
            raise RasterInputError(f"{self.path}: cannot read window {window} ({exc})") from None
        return data.astype(np.float32).filled(self.fill)


def _band_reader(
    source: BandSource, info: RasterInfo, grid: RasterInfo, stack: ExitStack
) -> _Reader:
    """A reader of ``source`` on the scene grid, warping it there if its own grid differs."""
    src = stack.enter_context(rasterio.open(source.path))
    if not _same_grid(info, grid):
        src = stack.enter_context(
            WarpedVRT(
                src,
                crs=CRS.from_wkt(grid.crs),
                transform=Affine(*grid.transform),
                width=grid.width,
                height=grid.height,
                resampling=_RESAMPLING.get(source.name, Resampling.bilinear),
                src_nodata=0 if src.nodata is None else src.nodata,  # Level-1 fill is 0
                nodata=0,
                tolerance=_WARP_TOLERANCE,
            )
        )
    return _Reader(src, source.band_index, source.path, fill=0.0)


class _TerrainReader:
    """Elevation and slope on the scene grid from a DEM on any grid.

    The DEM is warped (bilinear, its nodata respected) onto the scene grid grown by one pixel
    on every side, so each block is read with a one-pixel halo and slopes are seamless across
    block edges and use real terrain at the scene border.
    """

    def __init__(self, dem: Path, grid: RasterInfo, stack: ExitStack):
        src = stack.enter_context(rasterio.open(dem))
        self.transform = Affine(*grid.transform)
        self.crs = CRS.from_wkt(grid.crs)
        vrt = stack.enter_context(
            WarpedVRT(
                src,
                crs=self.crs,
                transform=self.transform * Affine.translation(-1, -1),
                width=grid.width + 2,
                height=grid.height + 2,
                resampling=Resampling.bilinear,
                dtype="float32",
                nodata=np.nan,
                tolerance=_WARP_TOLERANCE,
                **_FIXED_SCALE,
            )
        )
        self.reader = _Reader(vrt, 1, dem, fill=np.nan)

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Elevation and slope (degrees) of a scene window."""
        # Window (row, col) of the scene is (row + 1, col + 1) of the grown grid.
        halo = Window(window.col_off, window.row_off, window.width + 2, window.height + 2)
        dem = self.reader.read(halo)
        rows = np.arange(window.row_off - 1, window.row_off + window.height + 1)
        xres, yres = pixel_size_metres(self.transform, self.crs, rows)
        return dem[1:-1, 1:-1], slope_degrees(dem, xres, yres)[1:-1, 1:-1]


def _build_block(
    window: Window,
    readers: dict[str, _Reader],
    terrain: _TerrainReader | None,
    available: list[str],
    harmonise: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
) -> np.ndarray:
    """The 15 channels of one window, NaN for missing channels, 0 at invalid pixels.
    ``harmonise`` turns the sensor's own bands into ETM+ channels."""
    out = np.full((len(CHANNELS), window.height, window.width), np.nan, dtype=np.float32)
    raw = harmonise({name: reader.read(window) for name, reader in readers.items()})
    for name, data in raw.items():
        out[channel_index(name)] = data
    for name in INDEX_INPUTS:
        if name in available:
            out[channel_index(name)] = compute_index(name, raw)
    if terrain is not None:
        elevation, slope = terrain.read(window)
        out[channel_index("elevation")] = elevation
        out[channel_index("slope")] = slope
    valid = valid_mask(np.stack(list(raw.values())), list(raw))
    present = [channel_index(c) for c in available]
    out[present] = np.where(valid, out[present], 0)
    return out


def _output_profile(grid: RasterInfo) -> dict:
    return {
        "driver": "GTiff",
        "dtype": "float32",
        "count": len(CHANNELS),
        "crs": CRS.from_wkt(grid.crs),
        "transform": Affine(*grid.transform),
        "width": grid.width,
        "height": grid.height,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "predictor": 3,
        "BIGTIFF": "IF_SAFER",
    }
