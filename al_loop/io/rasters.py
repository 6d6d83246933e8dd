"""Reading GeoTIFF scenes: checking them, naming their channels, reading patch windows."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.windows import Window

from al_loop.bands import CHANNELS, BandNameError


class RasterInputError(ValueError):
    """A raster file cannot be used: the message names the file and the problem."""


@dataclass(frozen=True)
class RasterInfo:
    path: Path
    crs: str
    transform: tuple[float, ...]  # affine a, b, c, d, e, f
    width: int
    height: int
    count: int
    descriptions: tuple[str | None, ...]
    dtypes: tuple[str, ...] = ()


def describe_raster(path: Path) -> RasterInfo:
    """Open ``path`` and check it is a georeferenced raster whose pixels can be read."""
    path = Path(path)
    if not path.is_file():
        raise RasterInputError(f"{path}: no such file")
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise RasterInputError(f"{path}: raster has no CRS; al-loop needs georeferenced scenes")
            # Reading the last block catches most truncated files before any work is done.
            src.read(1, window=Window(src.width - 1, src.height - 1, 1, 1))
            return RasterInfo(
                path=path,
                crs=src.crs.to_wkt(),
                transform=tuple(src.transform)[:6],
                width=src.width,
                height=src.height,
                count=src.count,
                descriptions=tuple(src.descriptions),
                dtypes=tuple(src.dtypes),
            )
    except RasterioError as exc:
        raise RasterInputError(f"{path}: not a readable raster ({exc})") from None


def hkh_channels(info: RasterInfo) -> list[str]:
    """The channel names of an HKH fused tile, from its band descriptions.

    Bands are identified by name, never by position: descriptions must name known channels
    (any order, any subset). A file without descriptions is accepted only if it has exactly the
    dataset's 15 bands, which are then taken in the dataset's order.
    """
    names = list(info.descriptions)
    if all(name is None for name in names):
        if info.count == len(CHANNELS):
            return list(CHANNELS)
        raise BandNameError(
            f"{info.path}: bands have no names and there are {info.count}, not the "
            f"{len(CHANNELS)} of an HKH fused tile; name them or ingest it as a band stack "
            "with a band mapping"
        )
    unknown = [n for n in names if n not in CHANNELS]
    if unknown:
        raise BandNameError(
            f"{info.path}: band names {unknown} do not match the HKH channels; "
            f"expected names from {', '.join(CHANNELS)}, found {names}"
        )
    if len(set(names)) != len(names):
        raise BandNameError(f"{info.path}: band names repeat: {names}")
    return cast(list[str], names)  # each a known channel by now


def quick_fingerprint(*paths: Path, extra: str = "") -> str:
    """A content fingerprint of files: size and the first and last 4 MiB of each.

    Hashing every byte of a multi-GB tile costs seconds per GB on every re-ingest; the head
    and tail (GeoTIFF header, tile index) change whenever the data does in practice.
    """
    digest = hashlib.sha256(extra.encode())
    chunk = 4 << 20
    for path in paths:
        size = Path(path).stat().st_size
        digest.update(f"{Path(path).name}:{size}".encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(chunk))
            if size > chunk:
                handle.seek(max(chunk, size - chunk))
                digest.update(handle.read(chunk))
    return digest.hexdigest()


def read_window(
    src: rasterio.DatasetReader,
    row_off: int,
    col_off: int,
    height: int,
    width: int,
    indexes: list[int] | None = None,
) -> np.ndarray:
    """Pixels of a window of an open raster as float32 ``(channels, height, width)``; outside
    the raster is 0 (invalid by the valid-pixel rule). ``indexes`` are 0-based band positions."""
    window = Window(col_off, row_off, width, height)
    inside = (
        row_off >= 0 and col_off >= 0
        and row_off + height <= src.height and col_off + width <= src.width
    )
    bands = None if indexes is None else [i + 1 for i in indexes]
    try:
        data = src.read(bands, window=window, boundless=not inside, fill_value=0)
    except RasterioError as exc:
        raise RasterInputError(f"{src.name}: cannot read window {window} ({exc})") from None
    return data.astype(np.float32, copy=False)


def read_decimated(path: Path, indexes: list[int], max_pixels: int = 1_000_000) -> np.ndarray:
    """A whole-scene overview of some bands with at most ``max_pixels`` pixels (for stretches)."""
    try:
        with rasterio.open(path) as src:
            factor = max(1.0, (src.width * src.height / max_pixels) ** 0.5)
            shape = (len(indexes), max(1, int(src.height / factor)), max(1, int(src.width / factor)))
            return src.read([i + 1 for i in indexes], out_shape=shape).astype(np.float32)
    except RasterioError as exc:
        raise RasterInputError(f"{path}: cannot read ({exc})") from None
