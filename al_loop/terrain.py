"""Terrain derivatives of a DEM: slope in degrees and hillshade, with pixel sizes in metres on any grid."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from affine import Affine
from pyproj import CRS


def slope_degrees(
    dem: np.ndarray, xres: float | np.ndarray, yres: float | np.ndarray
) -> np.ndarray:
    """Slope in degrees of a north-up DEM by Horn's (1981) 3x3 method, as ``gdaldem slope``.

    ``xres`` and ``yres`` are the pixel width and height in the DEM's height unit (metres):
    scalars, or arrays broadcastable to ``dem``, e.g. a ``(rows, 1)`` column for a geographic
    grid whose pixels narrow with latitude (see :func:`pixel_size_metres`).

    A NaN anywhere in a pixel's 3x3 window makes its slope NaN. Beyond the array border the
    surface is extrapolated linearly (odd reflection), so a plane keeps its slope up to the
    edge; callers that tile a larger DEM pass a one-pixel halo and crop it instead.
    """
    dz_dx, dz_dy = _horn_gradient(dem, xres, yres)
    slope = np.degrees(np.arctan(np.hypot(dz_dx, dz_dy)))
    slope[np.isnan(dem)] = np.nan  # Horn's kernel ignores the centre pixel itself
    return slope.astype(np.float32)


def _horn_gradient(dem: np.ndarray, xres: float | np.ndarray, yres: float | np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Horn's 3x3 gradient (east, south) of a north-up DEM, edges extrapolated (odd reflection)."""
    z = np.pad(np.asarray(dem, dtype=np.float64), 1, mode="reflect", reflect_type="odd")
    top, middle, bottom = z[:-2], z[1:-1], z[2:]
    dz_dx = (
        (top[:, 2:] + 2 * middle[:, 2:] + bottom[:, 2:])
        - (top[:, :-2] + 2 * middle[:, :-2] + bottom[:, :-2])
    ) / (8 * np.asarray(xres, dtype=np.float64))
    dz_dy = (
        (bottom[:, :-2] + 2 * bottom[:, 1:-1] + bottom[:, 2:])
        - (top[:, :-2] + 2 * top[:, 1:-1] + top[:, 2:])
    ) / (8 * np.asarray(yres, dtype=np.float64))
    return dz_dx, dz_dy


def hillshade(dem: np.ndarray, xres: float | np.ndarray, yres: float | np.ndarray,
              azimuth: float = 315.0, altitude: float = 45.0) -> np.ndarray:
    """Hillshade in [0, 1]: the cosine between the surface normal and the sun (from ``azimuth``
    degrees clockwise from north, ``altitude`` above the horizon), 0 in shadow; NaN where the DEM
    is NaN."""
    dz_east, dz_south = _horn_gradient(dem, xres, yres)
    sun_az, sun_alt = np.radians(azimuth), np.radians(altitude)
    sun = (np.sin(sun_az) * np.cos(sun_alt), np.cos(sun_az) * np.cos(sun_alt), np.sin(sun_alt))
    # The surface normal (-dz/dx_east, -dz/dy_north, 1), normalised, dotted with the sun's direction.
    shade = (-dz_east * sun[0] + dz_south * sun[1] + sun[2]) / np.sqrt(dz_east**2 + dz_south**2 + 1.0)
    shade = np.clip(shade, 0.0, 1.0)
    shade[np.isnan(dem)] = np.nan
    return shade.astype(np.float32)


def pixel_size_metres(
    transform: Affine, crs: object, rows: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel width and height in metres for the given rows of a north-up grid, as ``(n, 1)``.

    Projected grids: the transform's pixel size in the CRS's linear unit, converted to metres.
    Geographic grids (e.g. an SRTM DEM in EPSG:4326): the degree size times the ellipsoid's
    radii of curvature at each row's centre latitude, so a pixel's width shrinks with
    ``cos(latitude)``. ``crs`` is anything pyproj accepts (a rasterio CRS, "EPSG:4326", WKT).
    """
    if transform.b != 0 or transform.d != 0:
        raise ValueError(f"grid is rotated ({transform}); only north-up grids are supported")
    crs = CRS.from_user_input(crs)
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 1)
    if not crs.is_geographic:
        metres = crs.axis_info[0].unit_conversion_factor
        return (
            np.full(rows.shape, abs(transform.a) * metres),
            np.full(rows.shape, abs(transform.e) * metres),
        )
    latitude = np.radians(transform.f + (rows + 0.5) * transform.e)
    ellipsoid = crs.ellipsoid
    if ellipsoid is None:
        raise ValueError(f"the geographic CRS {crs.name} names no ellipsoid: pixel sizes in metres are unknown")
    e2 = 1 - (ellipsoid.semi_minor_metre / ellipsoid.semi_major_metre) ** 2
    w = np.sqrt(1 - e2 * np.sin(latitude) ** 2)
    prime_vertical = ellipsoid.semi_major_metre / w
    meridional = ellipsoid.semi_major_metre * (1 - e2) / w**3
    degree = np.pi / 180
    return (
        abs(transform.a) * degree * prime_vertical * np.cos(latitude),
        abs(transform.e) * degree * meridional,
    )
