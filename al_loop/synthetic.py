"""Synthetic HKH glacier scenes with exact ground truth, for the demo, tests and benchmarks.

:func:`generate` builds, from a seed alone, a 15-channel Landsat 7 ETM+ "fused tile" in the HKH
dataset's layout (:data:`al_loop.bands.CHANNELS`) and its label mask; :func:`make_scene` writes
them as GeoTIFFs plus a GeoPackage of label polygons. Same seed and size give byte-identical
output. Nothing is downloaded.

The scene is built the way the real one comes about:

1. terrain: parallel mountain ranges (smooth regional relief plus ridged noise) cut by valleys
   walked downhill from their heads, U-shaped where glaciers are or were, V-shaped lower down;
2. glaciers: ice along the upper valleys down to a terminus and on gentle ground above the
   snow line; debris cover on the lowest parts of the tongues; the ice surface smooths the
   valley floor (glaciers are gentle);
3. seasonal snow (background), vegetation low down, rock everywhere else;
4. light: sun-lit and self-shaded slopes, path radiance, clouds (bright in SWIR, cold),
   cloud shadows, sensor noise, 8-bit quantisation and saturation;
5. Landsat 7 SLC-off wedge stripes and the swath edge, where every channel is 0.

Every spectral and thermal number below comes from the real clip
``shared/data/lila_hkh/LE07_134040_20070922_clip.tif`` (medians per group, the groups picked by
the clip's own BQA flags and indices), unless a comment says otherwise. Clean ice and debris are
not labelled in that clip, so bare ice is derived from its snow and debris from its rock.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import fiona
import numpy as np
import rasterio
from fiona.transform import transform_geom
from rasterio import features
from rasterio.transform import Affine, from_origin
from scipy import ndimage

from al_loop import bands, sensors
from al_loop.classes import BACKGROUND, CLASS_NAMES, CLEAN_ICE, DEBRIS
from al_loop.io.landsat import parse_scene_id, sensor_of
from al_loop.terrain import slope_degrees

CRS = "EPSG:32645"  # UTM 45N: Nepal east of ~84 E, Sikkim, southern Tibet
PIXEL_M = 30.0

# --- scene placement -------------------------------------------------------------------------
# Scenes sit on a grid of 4096-pixel slots (122.88 km) over UTM 45N, 5 across (~84-92 E) and 8
# up from the Himalayan front (~27.4 N) to the Tibetan plateau (~36 N); seed 0 starts at
# 86.3 E 28.6 N (Rolwaling Himal). Seeds 0..39 never overlap (scenes up to 4096 px).
_SLOT_M = 4096 * PIXEL_M
_SLOT_COLS, _SLOT_ROWS = 5, 8
_FIRST_SLOT_WEST, _FIRST_SLOT_NORTH = 430_000.0, 3_160_000.0

# --- terrain and glaciers (HKH values from the glacier literature, not the clip) -------------
_MEAN_ELEVATION = 4700.0  # m; the scene's mean, so every scene is high mountains
_RANGE_SPACING = 900  # px (27 km) between parallel range crests
_RANGE_RELIEF = 2300.0  # m from trough to crest; with ridges and valleys ~3000-6500 m in all
_TROUGH_GRADE = 3.5  # m per px (12 %): valley-glacier beds, e.g. Khumbu ~12 %, Gangotri ~10 %
_ELA_RANGE = (4800.0, 6000.0)  # m, snow-line altitude; HKH 4500 (west) to 6000 (Tibet)
_VALLEY_SPACING = 60  # px (1.8 km) at least between valley heads
_VALLEY_STEPS = 700  # px (21 km) walked from each head
_GLACIER_FRACTION = (0.07, 0.12)  # of pixels; "a bit richer" than HKH's 2.4 %
_DEBRIS_FRACTION = (0.013, 0.024)  # of pixels; HKH 0.24 %
_PAD = 64  # px of terrain built around the scene so valleys and ice enter across its edges

# --- light -----------------------------------------------------------------------------------
# Sun at a 10:00-10:30 overpass near 28 N in late September (the clip is 22 Sept 2007):
# elevation ~55 deg, azimuth ~142 deg. Skylight keeps ~20 % of the direct light in shade.
_SUN_ELEVATION, _SUN_AZIMUTH = np.radians(55.0), np.radians(142.0)
_DIFFUSE = 0.2
_LAPSE = -0.0065  # K per m, standard atmosphere; the clip's 1.4 km of relief is too confounded

_OPTICAL = ("B1", "B2", "B3", "B4", "B5", "B7", "B8")
# Atmospheric path radiance: the darkest valid pixels of the clip (0.5th percentile, deep shade).
_PATH_DN = dict(B1=45, B2=30, B3=24, B4=19, B5=10, B7=9, B8=16)
# Flat-ground surface DN, medians on the clip:
# rock: BQA 672 (clear), ndvi < 0.2, flipped ndsi > -0.1 (n=1730)
_ROCK_DN = dict(B1=69.5, B2=58, B3=65, B4=83, B5=79, B7=56, B8=49)
# vegetation: BQA 672, ndvi > 0.3 (n=1263), median elevation 2970 m
_VEG_DN = dict(B1=53, B2=41, B3=38, B4=82, B5=57, B7=33, B8=42)
# snow: BQA 1696/1700/1704, high-confidence snow/ice (n=4566); B5 median 21 DN; the visible
# bands saturate at 255 on ~20 % of these pixels (their 90th percentile is 255). Flat fresh
# snow gets 1.6x this signal above path radiance: once slopes and shade mix in, synthetic
# snow-flagged pixels have these B1-B3, B5 medians within 1 DN (B4 ~10 DN low) and ~14 % of
# them saturate in B1 (clip: 23 %).
_SNOW_DN = dict(B1=174, B2=143, B3=152, B4=108, B5=21, B7=18, B8=89)
# thick cloud: 90th percentile of BQA 752/756/760 (high-confidence cloud, n=888); their median
# B5 is 97 DN against 21 on snow: SWIR1 is what tells cloud from snow
_CLOUD_DN = dict(B1=255, B2=241, B3=255, B4=197, B5=156, B7=149, B8=157)
# Bare (ablation-zone) ice: not in the clip. Snow's signal above path radiance scaled by
# albedo ratios of clean glacier ice to old snow (~0.6 visible, stronger NIR/SWIR absorption).
_BARE_ICE_RATIO = dict(B1=0.6, B2=0.6, B3=0.6, B4=0.45, B5=0.5, B7=0.5, B8=0.55)
# Debris: rock material, a little darker than bedrock (so, close to rock on purpose).
_DEBRIS_ALBEDO = 0.92

# Brightness temperature (deg C) and the elevation it was measured at, medians on the clip
# (B6_VCID_1 through bands.brightness_temperature): rock 7.0 C at 3310 m, vegetation 6.4 C at
# 2970 m, snow -7.5 C at 3810 m, cloud top -6.9 C over 3910 m terrain. Lapse-adjusted from there.
# Synthetic scenes are ~1.5 km higher than the clip, so their thermal DN run lower: rock
# ~92 DN in B6_VCID_1 against the HKH archive mean of 93.7 (shared/docs/hkh_data.md).
_ROCK_BT, _VEG_BT = (7.0, 3310.0), (6.4, 2970.0)
_SNOW_BT, _CLOUD_BT = (-7.5, 3810.0), (-6.9, 3910.0)
_SUNLIT_WARMING = 6.0  # K per unit of relative illumination on rock (clip rock p10-p90: ~9 K)
_DEBRIS_COOLING = 3.0  # K: ice under thin debris keeps the surface cooler than bedrock
_SHADOW_COOLING = 3.0  # K under cloud shadow
_SENSOR_NOISE_DN = 0.8  # ETM+ 8-bit noise is ~0.5-1 DN
# Pixel-scale texture, from albedo and from relief finer than the DEM; together they give the
# clip's rock texture: median |difference| of neighbours 5 DN in B1, 7 in B3, 12 in B5.
_TEXTURE = 0.3
_ROUGHNESS_M = 25.0

# --- BQA, Landsat Collection-1 bit codes as they occur in the clip ---------------------------
_BQA_CLEAR = 672  # low cloud, low shadow, low snow confidence (7021 clip pixels)
_BQA_CLOUD_MEDIUM = 704  # medium cloud confidence
_BQA_CLOUD = 752  # cloud bit + high cloud confidence
_BQA_SHADOW = 928  # high cloud-shadow confidence
_BQA_SNOW = 1696  # high snow/ice confidence
_BQA_SNOW_CLOUD_MEDIUM = 1728
_BQA_SATURATION = (0, 4, 4, 8, 8, 12, 12)  # bits 2-3 by number of saturated bands (0, 1-2, 3-4, 5+)

# --- Landsat 7 SLC-off geometry (USGS and Geoscience Australia SLC-off notes) ---------------
_HALF_SWATH_PX = 3080  # 185 km / 2
_SCAN_LINES = 16.0  # lines per scan; the widest gap, at the swath edge, is about one scan
_INTERPOLATED_PX = 2.0  # gap pixels filled by the standard Level-1 2-pixel interpolation
_GAP_PERIOD_PX = 32.0  # forward and reverse scans diverge on alternate sides: one gap per pair


@dataclass
class SyntheticScene:
    """Files of one synthetic scene written by :func:`make_scene`."""

    image: Path
    label_raster: Path
    label_vector: Path
    seed: int
    size: tuple[int, int]  # (height, width)


@dataclass(frozen=True)
class Cover:
    """Shares of the scene's pixels drawn (uniformly, seeded) for glacier and debris."""

    glacier: tuple[float, float] = _GLACIER_FRACTION
    debris: tuple[float, float] = _DEBRIS_FRACTION


HKH_COVER = Cover(glacier=(0.02, 0.035), debris=(0.002, 0.0035))
"""The HKH archive's balance (glacier ~2.4 % of pixels, debris ~a tenth of it), for benchmarks
where most patches hold no glacier, as in the real archive."""


def generate(height: int, width: int, seed: int, cover: Cover = Cover(), *, retreat_px: int = 0,
             date: dt.date | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A synthetic scene as arrays: ``pixels`` float32 ``(15, H, W)`` in the order of
    :data:`bands.CHANNELS`, ``labels`` uint8 ``(H, W)`` (0 background, 1 clean ice, 2 debris) and
    the surface ``dem`` float32 ``(H, W)`` in metres, defined everywhere (the elevation channel
    is 0 in the gaps, like the real tiles). ``cover`` sets the glacier and debris shares.

    The same ``seed`` at another time: ``retreat_px`` shrinks every glacier by that many pixels
    all round (the ground it leaves is rock), and ``date`` draws other snow, clouds and SLC-off
    gaps over the same landscape; the labels returned are the exact truth either way."""
    if height < 16 or width < 16:
        raise ValueError(f"scene must be at least 16x16 pixels, got {height}x{width}")
    rng = np.random.default_rng(seed)
    shape = (height, width)
    dem, labels, ice_age, ela = _landscape(rng, shape, cover)
    if retreat_px > 0:
        kept = ndimage.binary_erosion(labels > 0, ndimage.generate_binary_structure(2, 1), iterations=retreat_px)
        labels = np.where(kept, labels, 0).astype(labels.dtype)
    if date is not None:  # the weather of another day over the same ground
        rng = np.random.default_rng([seed, date.toordinal()])
    slope = _slope(dem)
    snow = _seasonal_snow(rng, dem, labels, ela)
    # the real surface is rougher than SRTM: light falls on a few metres of extra relief
    shade = _illumination(dem + _ROUGHNESS_M * _noise(rng, shape, 3))
    cloud, shadow = _clouds(rng, dem)
    optical, surface_snow = _optical(rng, dem, labels, ice_age, snow, shade, cloud, shadow)
    thermal = _thermal(dem, labels, surface_snow, shade, cloud, shadow)
    valid = ~_slc_off_gaps(rng, shape)
    channels = {**optical, **thermal}
    channels["BQA"] = _bqa(optical, surface_snow, cloud, shadow)
    channels["elevation"] = dem
    channels["slope"] = slope
    for name in bands.INDEX_CHANNELS:
        channels[name] = bands.compute_index(name, channels)
    pixels = np.stack([channels[name] for name in bands.CHANNELS]).astype(np.float32)
    pixels[:, ~valid] = 0.0
    return pixels, labels, dem


def make_scene(
    out_dir: Path,
    height: int = 1024,
    width: int | None = None,
    seed: int = 0,
    name: str = "synthetic",
    vector_crs: str | None = None,
    cover: Cover = Cover(),
    retreat_px: int = 0,
    date: dt.date | None = None,
) -> SyntheticScene:
    """Generate a scene and write ``{name}.tif`` (15 channels), ``{name}_labels.tif`` and
    ``{name}_labels.gpkg`` (polygons, attribute ``class``; in ``vector_crs`` if given)."""
    width = height if width is None else width
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pixels, labels, _ = generate(height, width, seed, cover, retreat_px=retreat_px, date=date)
    transform = _scene_transform(seed)
    scene = SyntheticScene(
        image=out_dir / f"{name}.tif",
        label_raster=out_dir / f"{name}_labels.tif",
        label_vector=out_dir / f"{name}_labels.gpkg",
        seed=seed,
        size=(height, width),
    )
    _write_geotiff(scene.image, pixels, transform, bands.CHANNELS, seed)
    _write_geotiff(scene.label_raster, labels[None], transform, ("label",), seed)
    _write_label_vector(scene.label_vector, labels, transform, vector_crs or CRS)
    return scene


# --- noise -----------------------------------------------------------------------------------


def _bspline_taps(n_out: int, spacing: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """First coarse-grid index and the four cubic B-spline weights of each of ``n_out``
    pixels, for a coarse grid ``spacing`` pixels apart."""
    x = np.arange(n_out) / spacing + 0.5
    first = np.floor(x).astype(int)
    t = (x - first).astype(np.float32)
    weights = [
        (1 - t) ** 3 / 6,
        (3 * t**3 - 6 * t**2 + 4) / 6,
        (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6,
        t**3 / 6,
    ]
    return first, weights


def _noise(rng: np.random.Generator, shape: tuple[int, int], wavelength: float) -> np.ndarray:
    """Smooth random field with features ~``wavelength`` px across, zero mean, unit std.

    White noise on a coarse grid, resampled by a separable cubic B-spline written out as
    element-wise sums: a matrix product would go through BLAS, whose result depends on the
    number of threads, and the output must be byte-identical everywhere."""
    first_row, row_weights = _bspline_taps(shape[0], wavelength)
    first_col, col_weights = _bspline_taps(shape[1], wavelength)
    grid = rng.standard_normal((first_row[-1] + 4, first_col[-1] + 4), dtype=np.float32)
    # columns first, on the coarse rows; gathering whole rows last keeps the result C-ordered
    cols = np.asarray(sum(w[None, :] * grid[:, first_col + k] for k, w in enumerate(col_weights)))
    field = np.asarray(sum(w[:, None] * cols[first_row + k] for k, w in enumerate(row_weights)))
    return (field - field.mean()) / (field.std() + 1e-6)


def _fractal(
    rng: np.random.Generator, shape: tuple[int, int], wavelengths: Sequence[float], weights: Sequence[float]
) -> np.ndarray:
    return np.asarray(sum(w * _noise(rng, shape, wl) for wl, w in zip(wavelengths, weights, strict=True)))


def _gaussian(array: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(array, sigma, truncate=3.0)


def _slope(dem: np.ndarray) -> np.ndarray:
    """Slope in degrees on the 30 m grid, the same method as for real DEMs."""
    return slope_degrees(dem, PIXEL_M, PIXEL_M)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


# --- terrain and glaciers --------------------------------------------------------------------


def _landscape(
    rng: np.random.Generator, shape: tuple[int, int], cover: Cover
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Surface DEM, labels, ``ice_age`` (0 bare ablation ice .. 1 firn) on the scene grid,
    and the snow-line altitude."""
    padded = (shape[0] + 2 * _PAD, shape[1] + 2 * _PAD)
    crop = (slice(_PAD, _PAD + shape[0]), slice(_PAD, _PAD + shape[1]))
    regional, ridged = _mountains(rng, padded, crop)
    valleys = _valley_network(rng, regional)
    bed = _carve(regional, ridged, valleys)
    labels, ela = _glaciers(rng, bed, valleys, crop, cover)
    dem = _ice_surface(bed, labels > 0)
    dem = np.round(np.clip(dem, 2500, 7500))[crop].astype(np.float32)  # SRTM: integer metres
    labels = labels[crop]
    ice_age = _smoothstep((dem - ela + 100) / 200) * (labels == CLEAN_ICE)
    return dem, labels, ice_age, ela


def _mountains(
    rng: np.random.Generator, shape: tuple[int, int], crop: tuple[slice, slice]
) -> tuple[np.ndarray, np.ndarray]:
    """Regional relief (smooth, for valley routing) and the ridged relief added on top of it.

    The regional relief is a set of parallel ranges striking roughly WNW-ESE like the
    Himalayan ones: meandering crests ~6 km up, troughs between them that fall gently along
    the strike, so valleys run down the flanks into the troughs and then along them."""
    rows, cols = np.indices(shape, dtype=np.float32)
    strike = np.radians(rng.uniform(-30, 30))
    along = cols * np.cos(strike) - rows * np.sin(strike)
    across = cols * np.sin(strike) + rows * np.cos(strike) + 90 * _noise(rng, shape, 400)
    phase = np.mod(across / _RANGE_SPACING + rng.random(), 1.0)
    # 1 on the crests, 0 in the troughs; concave flanks: steep high up, flat trough floors
    profile = (2 * np.abs(phase - 0.5)) ** 1.7
    relief = _RANGE_RELIEF * (1 + 0.15 * _noise(rng, shape, 250))
    bumps = 150 * profile * _noise(rng, shape, 120)  # peaks and saddles along the crests
    regional = relief * profile + bumps + 0.5 * along * rng.choice([-1, 1])
    regional = _MEAN_ELEVATION + regional - regional[crop].mean()
    # Ridged noise, 1 - |n|: sharp crests, rounded hollows, as in eroded high mountains.
    ridged = sum(
        amp * (1 - np.abs(_noise(rng, shape, wl)))
        for wl, amp in ((160, 450.0), (80, 350.0), (40, 200.0), (16, 60.0))
    )
    return regional, ridged - ridged.mean()


@dataclass
class _Valleys:
    """Valley centre lines spread to every pixel through the nearest line pixel."""

    distance: np.ndarray  # px to the nearest centre-line pixel
    floor: np.ndarray  # m, valley floor (blended between neighbouring valleys)
    u_shape: np.ndarray  # 1 glacial (U) .. 0 fluvial (V)
    half_width: np.ndarray  # px, glacier half-width
    tongue_drop: np.ndarray  # m from the snow line down to that valley's glacier terminus


def _valley_heads(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Valley heads spread over the terrain, no two closer than the valley spacing."""
    n = 4 * round(shape[0] * shape[1] / _VALLEY_SPACING**2) + 8
    candidates = rng.random((n, 2)) * np.array(shape)
    heads = np.empty((0, 2))
    for point in candidates:
        if not (np.hypot(*(heads - point).T) < _VALLEY_SPACING).any():
            heads = np.vstack([heads, point])
    return heads


def _valley_network(rng: np.random.Generator, regional: np.ndarray) -> _Valleys:
    """Valleys walked downhill from their heads, meandering and converging in the troughs.

    Floors fall gently from the head (glacier troughs) until they are cut 700 m below the
    regional surface, then follow it. Valleys are U-shaped above 4000 m, where Pleistocene
    glaciers reached, and V-shaped (fluvial) below."""
    shape = regional.shape
    heads = _valley_heads(rng, shape)
    k = len(heads)
    downhill = np.arctan2(*(-g for g in np.gradient(regional)))
    rows, cols = np.empty((2, _VALLEY_STEPS, k))
    rows[0], cols[0] = heads.T
    angle = rng.uniform(0, 2 * np.pi, k)
    turn: np.ndarray = np.zeros(k)
    for step in range(1, _VALLEY_STEPS):
        r = np.clip(rows[step - 1].astype(int), 0, shape[0] - 1)
        c = np.clip(cols[step - 1].astype(int), 0, shape[1] - 1)
        turn = 0.9 * turn + 0.015 * rng.standard_normal(k)
        angle += turn + 0.2 * np.sin(downhill[r, c] - angle)
        rows[step] = rows[step - 1] + np.sin(angle)
        cols[step] = cols[step - 1] + np.cos(angle)

    r, c = np.round(rows).astype(int), np.round(cols).astype(int)  # (steps, k)
    inside = (r >= 0) & (c >= 0) & (r < shape[0]) & (c < shape[1])
    inside = np.logical_and.accumulate(inside, axis=0)  # a valley that leaves stays gone
    r, c = np.clip(r, 0, shape[0] - 1), np.clip(c, 0, shape[1] - 1)
    s = np.arange(_VALLEY_STEPS, dtype=float)[:, None]
    ground = regional[r, c]
    trough = np.maximum(ground[0] - 150 - _TROUGH_GRADE * s, ground - 700)
    floor = np.minimum.accumulate(np.minimum(ground - 100, trough), axis=0)
    per_step = {
        "floor": floor,
        "half_width": rng.uniform(5, 10, k) * (1 + 0.8 * np.exp(-s / 25)),  # cirque, tongue
        "tongue_drop": np.broadcast_to(rng.uniform(400, 900, k), floor.shape),
    }

    # One centre-line pixel per cell: the lowest floor wins where valleys meet.
    flat = (r * shape[1] + c)[inside]
    order = np.lexsort((floor[inside], flat))
    _, first = np.unique(flat[order], return_index=True)
    pick = order[first]
    line = np.zeros(shape, bool)
    line.flat[flat[pick]] = True
    distance, nearest = ndimage.distance_transform_edt(~line, return_indices=True)
    # Each value spread from the nearest line pixel, blended across the seams between
    # neighbouring valleys (normalised convolution) so that no cliffs form there.
    weight = _gaussian(line.astype(np.float32), 8.0) + 1e-3
    spread = {}
    for key, values in per_step.items():
        grid = np.zeros(shape, np.float32)
        grid.flat[flat[pick]] = values[inside][pick]
        spread[key] = (_gaussian(grid, 8.0) + 1e-3 * grid[tuple(nearest)]) / weight
    u_shape = _smoothstep((spread["floor"] - 3900) / 300)
    return _Valleys(distance=distance.astype(np.float32), u_shape=u_shape, **spread)


def _carve(regional: np.ndarray, ridged: np.ndarray, valleys: _Valleys) -> np.ndarray:
    """Cut the valleys into the mountains: a flat floor (glacier wide when U-shaped), walls
    rising at ~38 deg (U) or ~30 deg (V) on a rounded base and taking on the ridged relief
    away from the floor; the ground is never raised."""
    u = valleys.u_shape
    floor_half = u * (valleys.half_width + 2) + (1 - u) * 1.5
    wall = PIXEL_M * (u * np.tan(np.radians(38)) + (1 - u) * np.tan(np.radians(30)))
    radius = 2 + 4 * u
    e = np.maximum(valleys.distance - floor_half, 0)
    walls = valleys.floor + wall * (np.hypot(e, radius) - radius) + ridged * _smoothstep(e / 25)
    return np.minimum(regional + ridged, walls)


def _glaciers(
    rng: np.random.Generator, bed: np.ndarray, valleys: _Valleys, crop: tuple[slice, slice], cover: Cover
) -> tuple[np.ndarray, float]:
    """Label mask and snow-line altitude (ELA).

    Clean ice lies on gentle ground above the snow line and along the valleys down to each
    glacier's terminus (the snout tapers over its last 60 m of height); debris covers the
    lowest parts of the tongues. The ELA is set so that glaciers cover a seeded share of the
    scene, within the HKH range of snow lines: any scene size keeps the class balance."""
    margin = 1 + 0.25 * _noise(rng, bed.shape, 12)  # ragged glacier margins
    bed_slope = _slope(_gaussian(bed, 2.0))
    # The highest snow line at which each pixel still holds ice, on a tongue or on high ground.
    terminus_above_ela = valleys.floor + valleys.tongue_drop
    across = (valleys.distance / (valleys.half_width * margin)) ** 2  # 0 centre .. 1 margin
    tongue_line = np.where(across < 1, terminus_above_ela - 60 * across, -np.inf)
    ice_line = np.maximum(tongue_line, np.where(bed_slope < 20 * margin, bed - 300, -np.inf))
    target = rng.uniform(*cover.glacier)
    ela = float(np.clip(np.quantile(ice_line[crop], 1 - target), *_ELA_RANGE))
    glacier = ice_line > ela
    tongue = tongue_line > ela

    # Debris: the lowest tongue ice below the snow line where the tongue is gentle (debris
    # cover is rare above ~15 deg), up to a seeded share of the scene.
    above_terminus = terminus_above_ela - ela
    debris_zone = tongue & (valleys.floor < ela - 100) & (bed_slope < 15)
    eligible = debris_zone[crop]
    debris = np.zeros_like(glacier)
    if eligible.any():
        share = min(1.0, rng.uniform(*cover.debris) * eligible.size / eligible.sum())
        debris = debris_zone & (above_terminus <= np.quantile(above_terminus[crop][eligible], share))
    labels = np.full(bed.shape, BACKGROUND, np.uint8)
    labels[glacier] = CLEAN_ICE
    labels[debris] = DEBRIS
    return labels, ela


def _ice_surface(bed: np.ndarray, glacier: np.ndarray) -> np.ndarray:
    """Ice fills and smooths the valley floor: glacier surfaces are gentle."""
    weight = _gaussian(glacier.astype(np.float32), 1.5)
    return bed * (1 - weight) + _gaussian(bed, 4.0) * weight


def _seasonal_snow(rng: np.random.Generator, dem: np.ndarray, labels: np.ndarray, ela: float) -> np.ndarray:
    """Fraction of seasonal snow cover (background): patches high up and on shaded slopes."""
    shape = dem.shape
    drift = _fractal(rng, shape, (48, 16, 5), (1.0, 0.5, 0.3))
    dz_drow, dz_dcol = np.gradient(dem, PIXEL_M)
    northness = dz_drow / (np.hypot(dz_drow, dz_dcol) + 1e-3)  # rows run south: +1 faces north
    score = drift + 1.3 * (dem - ela + 400) / 500 + 0.6 * northness
    snow = _smoothstep((score - 1.4) / 0.6)
    snow[labels != BACKGROUND] = 0
    return snow.astype(np.float32)


# --- light and atmosphere --------------------------------------------------------------------


def _illumination(dem: np.ndarray) -> np.ndarray:
    """Direct sun on the slope relative to flat ground (0 in self-shadow)."""
    dz_drow, dz_dcol = np.gradient(dem.astype(np.float64), PIXEL_M)
    # surface normal in (east, north, up); rows run south, so north slope = -dz/drow
    normal = np.stack([-dz_dcol, dz_drow, np.ones_like(dem, dtype=np.float64)])
    normal /= np.linalg.norm(normal, axis=0)
    sun = np.array(
        [
            np.sin(_SUN_AZIMUTH) * np.cos(_SUN_ELEVATION),
            np.cos(_SUN_AZIMUTH) * np.cos(_SUN_ELEVATION),
            np.sin(_SUN_ELEVATION),
        ]
    )
    cos_incidence = sun[0] * normal[0] + sun[1] * normal[1] + sun[2] * normal[2]  # no BLAS
    return (np.maximum(cos_incidence, 0) / np.sin(_SUN_ELEVATION)).astype(np.float32)


def _clouds(rng: np.random.Generator, dem: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cloud opacity (0 clear .. 1 opaque) and the opacity of the cloud casting a shadow here.

    Clouds build over high ground (orographic), so some sit over glaciers. The shadow is the
    same field shifted away from the sun by cloud height / tan(sun elevation)."""
    shape = dem.shape
    height_m = rng.uniform(1000, 2500)
    offset = height_m / np.tan(_SUN_ELEVATION) / PIXEL_M
    d_row = int(round(offset * np.cos(_SUN_AZIMUTH)))  # shadow lies away from the sun: row
    d_col = int(round(-offset * np.sin(_SUN_AZIMUTH)))  # grows southwards, col eastwards
    pad = max(abs(d_row), abs(d_col))
    big = (shape[0] + 2 * pad, shape[1] + 2 * pad)
    field = _fractal(rng, big, (160, 64, 24, 8), (1.0, 0.6, 0.35, 0.2))
    relief = np.pad(dem, pad, mode="edge")
    field += 0.8 * (relief - relief.mean()) / (relief.std() + 1e-6)
    cover = rng.uniform(0.06, 0.18)
    threshold = float(np.quantile(field, 1 - cover))
    opacity = _smoothstep((field - threshold) / 1.5)
    here = opacity[pad : pad + shape[0], pad : pad + shape[1]]
    shadow = opacity[pad - d_row : pad - d_row + shape[0], pad - d_col : pad - d_col + shape[1]]
    return here, shadow


def _optical(rng: np.random.Generator, dem: np.ndarray, labels: np.ndarray, ice_age: np.ndarray, snow: np.ndarray,
             shade: np.ndarray, cloud: np.ndarray, shadow: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Reflective bands B1-B5, B7, B8 as 8-bit DN, and the snow/ice share of each pixel.

    Each pixel is a linear mixture of endmember signals (DN above path radiance): rock,
    vegetation, snow, bare ice and debris, lit by the sun and sky and seen through cloud."""
    shape = dem.shape
    background, clean, debris = (labels == c for c in (BACKGROUND, CLEAN_ICE, DEBRIS))
    litho = 1 + 0.3 * _noise(rng, shape, 40) + 0.1 * _noise(rng, shape, 8)  # rock types
    veg = _smoothstep((4200 - dem) / 900) * _smoothstep(0.5 + _noise(rng, shape, 20))
    # thin debris near the clean ice lets some ice show through
    near_clean = np.clip(2 * _gaussian(clean.astype(np.float32), 4.0), 0, 1)
    ice_in_debris = np.where(debris, 0.4 * near_clean, 0).astype(np.float32)
    snow_grain = 1.6 + 0.2 * _noise(rng, shape, 30)  # fresh vs old snow, see _SNOW_DN
    texture = 1 + _TEXTURE * _gaussian(rng.standard_normal(shape, dtype=np.float32), 0.7) / 0.4
    light = _DIFFUSE + (1 - _DIFFUSE) * shade * (1 - 0.8 * shadow)
    seen = texture * light * (1 - cloud)
    bare = background * (1 - snow)
    mixture = {
        "rock": litho * (1 - veg) * bare,
        "veg": veg * bare,
        "snow": snow_grain * np.where(clean, ice_age, snow * background),
        "bare_ice": snow_grain * np.where(clean, 1 - ice_age, ice_in_debris),
        "debris": litho * (1 - ice_in_debris) * debris,
    }
    mixture = {name: (weight * seen).astype(np.float32) for name, weight in mixture.items()}
    cloud_signal = cloud * (0.8 + 0.3 * np.tanh(_noise(rng, shape, 12)))  # bright cores saturate
    optical = {}
    for b in _OPTICAL:
        path = _PATH_DN[b]
        signal = {
            "rock": _ROCK_DN[b] - path,
            "veg": _VEG_DN[b] - path,
            "snow": _SNOW_DN[b] - path,
            "bare_ice": (_SNOW_DN[b] - path) * _BARE_ICE_RATIO[b],
            "debris": (_ROCK_DN[b] - path) * _DEBRIS_ALBEDO,
        }
        dn = path + (_CLOUD_DN[b] - path) * cloud_signal
        for name, weight in mixture.items():
            dn += signal[name] * weight
        optical[b] = _quantise(rng, dn)
    surface_snow = np.where(clean, 1.0, snow) + ice_in_debris
    return optical, np.clip(surface_snow, 0, 1).astype(np.float32)


def _quantise(rng: np.random.Generator, dn: np.ndarray) -> np.ndarray:
    noisy = dn + _SENSOR_NOISE_DN * rng.standard_normal(dn.shape, dtype=np.float32)
    return np.clip(np.round(noisy), 1, 255).astype(np.float32)


def _thermal_dn(celsius: np.ndarray, band: str) -> np.ndarray:
    """Inverse of :func:`bands.brightness_temperature`: temperature to (unrounded) DN."""
    lmin, lmax = bands.THERMAL_GAIN[band]
    radiance = bands.THERMAL_K1 / (np.exp(bands.THERMAL_K2 / (celsius + 273.15)) - 1)
    return (radiance - lmin) / (lmax - lmin) * 254.0 + 1.0


def _thermal(dem: np.ndarray, labels: np.ndarray, surface_snow: np.ndarray, shade: np.ndarray, cloud: np.ndarray,
             shadow: np.ndarray) -> dict[str, np.ndarray]:
    """Both thermal gains. Rock warms with sun and cools with height; snow and ice are cold;
    cloud tops are colder than the ground below them. Mixing is done in DN (linear in radiance)."""

    def lapse(reference: tuple[float, float]) -> np.ndarray:
        value, elevation = reference
        return value + _LAPSE * (dem - elevation)

    smooth_dem = ndimage.uniform_filter(dem, 31)
    rock = lapse(_ROCK_BT) + _SUNLIT_WARMING * (shade - 1) - _SHADOW_COOLING * shadow
    rock = rock - _DEBRIS_COOLING * (labels == DEBRIS)
    veg_share = _smoothstep((4200 - dem) / 900) * 0.5
    land = rock * (1 - veg_share) + (lapse(_VEG_BT) - _SHADOW_COOLING * shadow) * veg_share
    snow = lapse(_SNOW_BT)
    cloud_top = _CLOUD_BT[0] + _LAPSE * (smooth_dem - _CLOUD_BT[1])
    out = {}
    for band in ("B6_VCID_1", "B6_VCID_2"):
        ground = _thermal_dn(snow, band) * surface_snow
        ground += _thermal_dn(land, band) * (1 - surface_snow)
        dn = (1 - cloud) * ground + cloud * _thermal_dn(cloud_top, band)
        out[band] = np.clip(np.round(dn), 1, 255).astype(np.float32)
    return out


def _bqa(
    optical: Mapping[str, np.ndarray], surface_snow: np.ndarray, cloud: np.ndarray, shadow: np.ndarray
) -> np.ndarray:
    """BQA codes as the Level-1 cloud/snow masks would set them, with saturation bits."""
    code = np.full(cloud.shape, _BQA_CLEAR, np.float32)
    snowy = surface_snow > 0.5
    code[snowy] = _BQA_SNOW
    code[(shadow > 0.5) & (cloud < 0.25)] = _BQA_SHADOW
    medium = (cloud >= 0.25) & (cloud < 0.5)
    code[medium] = np.where(snowy[medium], _BQA_SNOW_CLOUD_MEDIUM, _BQA_CLOUD_MEDIUM)
    code[cloud >= 0.5] = _BQA_CLOUD
    saturated = sum((optical[b] >= 255).astype(np.int64) for b in bands.REFLECTIVE_BANDS)
    return code + np.take(_BQA_SATURATION, saturated)


# --- SLC-off gaps and placement --------------------------------------------------------------


def _slc_off_gaps(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """True in the Landsat 7 SLC-off gaps and beyond the swath edge.

    Gaps run along the scan direction (tilted ~9-13 deg from the UTM grid), one every second
    16-line scan, widening linearly from nadir to a full scan (16 px) at the swath edge, less
    the 2 px the Level-1 processing interpolates: no gaps near nadir, ~14 px at the edge, ~20 %
    of a scene lost (USGS). Scenes sit 30-90 % of the half swath off nadir so the gaps are
    there; scenes of 2048 px and more also reach the swath edge."""
    tilt = np.radians(rng.uniform(9, 13))
    rows, cols = np.indices(shape, dtype=np.float32)
    rows -= shape[0] / 2
    cols -= shape[1] / 2
    across = cols * np.cos(tilt) + rows * np.sin(tilt)
    along = rows * np.cos(tilt) - cols * np.sin(tilt) + rng.uniform(0, _GAP_PERIOD_PX)
    if min(shape) >= 2048:  # the swath edge passes 30-42 % of a width from the centre
        centre = _HALF_SWATH_PX - rng.uniform(0.30, 0.42) * shape[1]
    else:
        centre = rng.uniform(0.3, 0.9) * _HALF_SWATH_PX
    across = rng.choice([-1.0, 1.0]) * across + centre
    gap = _SCAN_LINES * np.abs(across) / _HALF_SWATH_PX - _INTERPOLATED_PX
    return (np.mod(along, _GAP_PERIOD_PX) < gap) | (np.abs(across) > _HALF_SWATH_PX)


def _scene_transform(seed: int) -> Affine:
    """North-up 30 m grid of the seed's slot: columns east of the first one, then west of it."""
    slot = seed % (_SLOT_COLS * _SLOT_ROWS)
    column = (slot % _SLOT_COLS + 2) % _SLOT_COLS - 2  # 0, 1, 2, -2, -1
    west = _FIRST_SLOT_WEST + column * _SLOT_M
    north = _FIRST_SLOT_NORTH + (slot // _SLOT_COLS) * _SLOT_M
    return from_origin(west, north, PIXEL_M, PIXEL_M)


# --- writing ---------------------------------------------------------------------------------


def _partial(path: Path) -> Path:
    """A hidden sibling to write first and then move into place, so no half file is left."""
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def _write_geotiff(path: Path, array: np.ndarray, transform: Affine, names: Sequence[str], seed: int) -> None:
    tmp = _partial(path)
    tmp.unlink(missing_ok=True)
    profile = dict(
        driver="GTiff",
        width=array.shape[2],
        height=array.shape[1],
        count=array.shape[0],
        dtype=array.dtype,
        crs=CRS,
        transform=transform,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
        zlevel=1,  # 5x faster than the default level 6 for a ~15 % larger file
        interleave="pixel" if array.shape[0] > 1 else "band",
    )
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(array)
            dst.descriptions = tuple(names)
            dst.update_tags(generator="al_loop.synthetic", seed=str(seed))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_label_vector(path: Path, labels: np.ndarray, transform: Affine, crs: str) -> None:
    """Clean-ice and debris polygons (pixel-exact, from the label raster), in ``crs``."""
    tmp = _partial(path)
    tmp.unlink(missing_ok=True)
    schema = {"geometry": "Polygon", "properties": {"class": "str"}}
    shapes = features.shapes(labels, mask=labels != BACKGROUND, transform=transform)
    try:
        with fiona.open(tmp, "w", driver="GPKG", crs=crs, schema=schema, layer="labels") as dst:
            for geometry, value in shapes:
                geometry = fiona.Geometry.from_dict(geometry)
                if crs != CRS:
                    geometry = transform_geom(CRS, crs, geometry)
                properties = fiona.Properties(**{"class": CLASS_NAMES[int(value)]})
                dst.write(fiona.Feature(geometry=geometry, properties=properties))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_bands(folder: Path, scene_id: str, etm: dict[str, np.ndarray], transform: Affine, seed: int) -> None:
    """ETM+ channels as the scene id's sensor would have recorded them: its band files (8 or
    16-bit, its own band numbers) and, for TM and OLI, an MTL file with the DN scaling."""
    sensor_name, acquired = parse_scene_id(scene_id)
    sensor = sensor_of(sensor_name)
    own = etm
    if not sensor.native:
        cal = sensors.calibration(sensor, acquired)
        own = sensors.from_etm(etm, sensor, cal)
        _write_mtl(folder / f"{scene_id}_MTL.txt", sensor, cal)
    for name, band in own.items():
        dtype = np.uint16 if sensor.bits == 16 or name == "BQA" else np.uint8  # BQA bit flags are 16-bit
        _write_geotiff(folder / f"{scene_id}_{name}.TIF", band[None].astype(dtype), transform, (name,), seed)


def _write_mtl(path: Path, sensor: sensors.Sensor, cal: sensors.Calibration) -> None:
    """The radiometric part of a USGS MTL file."""
    lines = ["GROUP = LEVEL1_RADIOMETRIC_RESCALING"]
    for kind, table in (("RADIANCE", cal.radiance), ("REFLECTANCE", cal.reflectance)):
        for band, (mult, add) in table.items():
            lines += [f"    {kind}_MULT_BAND_{band[1:]} = {mult:.5E}", f"    {kind}_ADD_BAND_{band[1:]} = {add:.5f}"]
    lines.append("END_GROUP = LEVEL1_RADIOMETRIC_RESCALING")
    if cal.thermal and sensor.thermal:
        number = sensor.thermal[1:]
        lines += ["GROUP = LEVEL1_THERMAL_CONSTANTS", f"    K1_CONSTANT_BAND_{number} = {cal.thermal[0]:.4f}",
                  f"    K2_CONSTANT_BAND_{number} = {cal.thermal[1]:.4f}", "END_GROUP = LEVEL1_THERMAL_CONSTANTS"]
    lines.append(f"    EARTH_SUN_DISTANCE = {cal.earth_sun_au:.7f}")
    path.write_text("\n".join(lines) + "\nEND\n")


# --- data as people have it --------------------------------------------------------------------


@dataclass
class Level1Folder:
    """A synthetic scene delivered the way real ones are: band files, partial inventories."""

    folder: Path  # one uint8 GeoTIFF per band, named <scene id>_B<n>.TIF
    outlines: Path  # glacier outlines (no type), complete over the western part of the scene
    glacier_map: Path  # clean ice 1 / debris 2 / 0 elsewhere around one glacier (0 is no label)
    truth: np.ndarray  # the full label mask, for checking
    transform: object
    dem: Path | None = None  # the surface's DEM (float32, scene grid), when asked for


def make_level1_folder(out_dir: Path, height: int = 655, width: int = 800, seed: int = 3,
                       band_names: tuple[str, ...] = ("B1", "B2", "B3", "B4"),
                       scene_id: str = "LE71400412000304SGS00", outline_fraction: float = 0.6,
                       with_dem: bool = False, cover: Cover = Cover()) -> Level1Folder:
    """A small scene as a glaciologist may have it: a Landsat Level-1 folder with some bands
    only (Landsat 7, pre-collection names by default; a Landsat 5 or 8/9 ``scene_id`` gives that
    sensor's bands, ``band_names`` being the ETM+ channels they stand for), no DEM (``with_dem``
    adds ``dem.tif``), glacier outlines of a public inventory over part of it (a shapefile,
    "glacier" without type) and a clean-ice/debris map of one glacier (a GeoTIFF whose 0 means
    "not mapped", not background). ``cover`` sets the glacier and debris shares."""
    out_dir = Path(out_dir)
    folder = out_dir / scene_id
    folder.mkdir(parents=True, exist_ok=True)
    pixels, labels, surface = generate(height, width, seed, cover)
    transform = _scene_transform(seed)
    dem = out_dir / "dem.tif" if with_dem else None
    if dem is not None:
        _write_geotiff(dem, surface[None], transform, ("elevation",), seed)
    _write_bands(folder, scene_id, {name: pixels[bands.CHANNELS.index(name)] for name in band_names}, transform, seed)
    glacier = (labels != BACKGROUND).astype(np.uint8)
    glacier[:, int(outline_fraction * width) :] = 0
    outlines = out_dir / "outlines.shp"
    schema = {"geometry": "Polygon", "properties": {"GLIMS_ID": "str"}}
    with fiona.open(outlines, "w", driver="ESRI Shapefile", crs=CRS, schema=schema) as dst:
        for i, (geometry, _) in enumerate(features.shapes(glacier, mask=glacier > 0, transform=transform)):
            dst.write(fiona.Feature(geometry=fiona.Geometry.from_dict(geometry),
                                    properties=fiona.Properties(GLIMS_ID=f"G{i:05d}")))
    # The glacier map: the glacier with the most debris, in its bounding box and a margin.
    parts, n = ndimage.label(labels != BACKGROUND)
    debris = ndimage.sum(labels == DEBRIS, parts, index=np.arange(1, n + 1))
    chosen = parts == int(np.argmax(debris)) + 1
    rows, cols = np.nonzero(chosen)
    r0, r1 = max(rows.min() - 10, 0), min(rows.max() + 11, height)
    c0, c1 = max(cols.min() - 10, 0), min(cols.max() + 11, width)
    mapped = np.where(chosen, labels, 0)[r0:r1, c0:c1].astype(np.uint8)
    glacier_map = out_dir / "glacier_map.tif"
    _write_geotiff(glacier_map, mapped[None], transform * Affine.translation(c0, r0), ("class",), seed)
    return Level1Folder(folder, outlines, glacier_map, labels, transform, dem)
