"""The views an expert judges a patch by, as PNGs on the patch's own pixel grid (so a brush
stroke on one lines up with every other): false colour B5/B4/B2 (the one painted on), natural
colour, a SWIR/thermal composite that tells cloud from snow, terrain (hillshade and elevation
contours) and a wider context with the patch outlined.

Debris-covered ice looks like moraine in any single view: it takes the false colour (ice cyan,
rock brown), the thermal band (debris over ice is colder than moraine), the slope (glaciers are
flat) and the surroundings (where the glacier tongue comes from) together. A view a scene lacks
the bands for is a grey card saying which bands are missing, so every task has the same views.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from PIL import Image, ImageDraw
from rasterio.enums import Resampling
from rasterio.windows import Window
from scipy import ndimage

from al_loop import bands
from al_loop.config import Workspace
from al_loop.io.quicklooks import FALSE_COLOUR, NATURAL, stretch_band
from al_loop.patches import read_patch
from al_loop.terrain import hillshade, pixel_size_metres
from db.models import Patch

VIEW_SIZE = 256  # pixels of a context view (the patch views keep the patch's size)
CONTEXT_SPAN = 3  # the context view covers this many patch widths, centred on the patch
OUTLINE = (255, 212, 0, 255)  # the patch outline on the context view (the region box's yellow)
THERMAL = ("B6_VCID_1", "B6_VCID_2")  # low gain first: it saturates less over warm rock
SHADE_SMOOTHING_PX = 1.5  # Gaussian sigma of the DEM the hillshade is drawn from


@dataclass(frozen=True)
class View:
    key: str  # the task data field and file suffix
    title: str  # shown above the image


VIEWS: tuple[View, ...] = (
    View("false_colour", "False colour B5/B4/B2: ice and snow cyan, cloud white, rock and debris brown"),
    View("natural", "Natural colour B3/B2/B1"),
    View("swir_thermal", "SWIR and cold (B5, B7, inverted B6): cloud white, snow and ice blue, "
                         "rock and debris yellow to orange"),
    View("terrain", "Terrain: hillshade"),
    View("context", "Context: 3 patch widths around the patch (outlined)"),
)
VIEW_KEYS = tuple(v.key for v in VIEWS)


def _scaled(band: np.ndarray, limits: Sequence[float] | None, valid: np.ndarray) -> np.ndarray:
    """``band`` stretched to 0-255 by ``limits``, or by its own 2-98 % percentiles without."""
    if limits is None:
        values = band[valid & np.isfinite(band)]
        limits = np.percentile(values, [2, 98]) if values.size else (0.0, 1.0)
    return stretch_band(band, float(limits[0]), max(float(limits[1]), float(limits[0]) + 1e-6))


def _rgba(channels: Sequence[np.ndarray], valid: np.ndarray) -> Image.Image:
    rgba = np.stack([*channels, np.where(valid, 255, 0).astype(np.uint8)], axis=-1)
    return Image.fromarray(rgba, mode="RGBA")


def card(height: int, width: int, text: str) -> Image.Image:
    """A grey stand-in for a view that cannot be drawn, saying why."""
    image = Image.new("RGBA", (width, height), (96, 96, 96, 255))
    draw = ImageDraw.Draw(image)
    words, lines = text.split(), [""]
    for word in words:  # wrap to the image width (the default font is about 6 px a character)
        if len(lines[-1]) + len(word) + 1 > max(8, width // 7):
            lines.append("")
        lines[-1] = f"{lines[-1]} {word}".strip()
    for k, line in enumerate(lines):
        draw.text((6, 6 + 12 * k), line, fill=(255, 255, 255, 255))
    return image


def composite(pixels: dict[str, np.ndarray], valid: np.ndarray, stretch: dict, names: Sequence[str],
              invert: Sequence[bool] = (False, False, False)) -> Image.Image:
    """An RGBA composite of three named bands; a grey card naming the bands the patch lacks."""
    missing = [n for n in names if n not in pixels]
    if missing:
        return card(valid.shape[0], valid.shape[1], f"no {', '.join(missing)} in this scene")
    channels = []
    for name, flip in zip(names, invert, strict=True):
        scaled = _scaled(pixels[name], stretch.get(name), valid)
        channels.append(255 - scaled if flip else scaled)
    return _rgba(channels, valid)


def contour_interval(dem: np.ndarray, lines: int = 8) -> float:
    """A round contour interval (50, 100, 200, 500 m ...) giving about ``lines`` contours."""
    finite = dem[np.isfinite(dem)]
    relief = float(finite.max() - finite.min()) if finite.size else 0.0
    for step in (10, 20, 50, 100, 200, 500, 1000):
        if relief / step <= lines:
            return float(step)
    return 2000.0


def terrain(dem: np.ndarray, valid: np.ndarray, xres: float | np.ndarray, yres: float | np.ndarray
            ) -> tuple[Image.Image, float]:
    """Hillshade (sun from the north-west at 45°) with elevation contours in orange; returns the
    image and the contour interval in metres. The shading is of the DEM smoothed over a few
    pixels: DEMs resampled from 90 m onto 30 m pixels are terraced, which a hillshade shows as
    stripes."""
    known = np.isfinite(dem) & valid  # nodata (outside the scene: 0 or NaN) would be a cliff
    if known.any():  # each unknown pixel takes its nearest known height: no cliff at the edge
        nearest = ndimage.distance_transform_edt(~known, return_distances=False, return_indices=True)
        filled = dem[tuple(nearest)]
    else:
        filled = np.zeros(dem.shape)
    shade = hillshade(ndimage.gaussian_filter(filled, SHADE_SMOOTHING_PX), xres, yres)
    grey = np.nan_to_num(shade * 255.0, nan=0.0).astype(np.uint8)
    step = contour_interval(np.where(known, dem, np.nan))
    level = np.floor(filled / step)
    edge = np.zeros(dem.shape, bool)
    edge[:-1] |= level[:-1] != level[1:]
    edge[:, :-1] |= level[:, :-1] != level[:, 1:]
    edge &= known
    rgb = [np.where(edge, value, grey).astype(np.uint8) for value in (255, 140, 0)]
    return _rgba(rgb, known), step


def outline(image: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    """``image`` with the rectangle ``box`` (left, top, right, bottom in pixels) drawn on it."""
    drawn = image.copy()
    ImageDraw.Draw(drawn).rectangle(box, outline=OUTLINE, width=2)
    return drawn


def painted_bands(available: Sequence[str]) -> tuple[tuple[str, ...], str]:
    """The composite the expert paints on (and the context shows) and its title: the false colour,
    or natural colour for a scene without B5."""
    if all(name in available for name in FALSE_COLOUR):
        return FALSE_COLOUR, VIEWS[0].title
    return NATURAL, "Natural colour B3/B2/B1 (no B5 in this scene for the false colour)"


def patch_views(pixels: dict[str, np.ndarray], valid: np.ndarray, stretch: dict,
                pixel_size: tuple[float | np.ndarray, float | np.ndarray] | None
                ) -> tuple[dict[str, Image.Image], dict[str, str]]:
    """The patch-grid views (all but the context) from a patch's bands by name, and their titles."""
    thermal = next((t for t in THERMAL if t in pixels), THERMAL[0])
    painted, painted_title = painted_bands(list(pixels))
    titles = {v.key: v.title for v in VIEWS}
    titles["false_colour"] = painted_title
    views = {
        "false_colour": composite(pixels, valid, stretch, painted),
        "natural": composite(pixels, valid, stretch, NATURAL),
        "swir_thermal": composite(pixels, valid, stretch, ("B5", "B7", thermal), invert=(False, False, True)),
    }
    if "elevation" in pixels and np.isfinite(pixels["elevation"]).any():
        xres, yres = pixel_size or (30.0, 30.0)
        views["terrain"], step = terrain(pixels["elevation"], valid, xres, yres)
        titles["terrain"] = f"Terrain: hillshade, elevation contours every {step:g} m"
    else:
        views["terrain"] = card(valid.shape[0], valid.shape[1], "no elevation (DEM) for this scene")
    return views, titles


def read_context(path: Path, channel_index: dict[str, int], row_off: int, col_off: int, height: int,
                 width: int, stretch: dict) -> Image.Image:
    """The painted composite (:func:`painted_bands`) of ``CONTEXT_SPAN`` patch sizes around a
    patch of a scene raster, read decimated to :data:`VIEW_SIZE` pixels, the patch outlined."""
    span_h, span_w = height * CONTEXT_SPAN, width * CONTEXT_SPAN
    top, left = row_off - (span_h - height) // 2, col_off - (span_w - width) // 2
    names, _ = painted_bands(list(channel_index))
    if any(n not in channel_index for n in names):
        return card(VIEW_SIZE, VIEW_SIZE, f"no {', '.join(n for n in names if n not in channel_index)} in this scene")
    with rasterio.open(path) as src:
        data = src.read([channel_index[n] + 1 for n in names], window=Window(left, top, span_w, span_h),
                        out_shape=(3, VIEW_SIZE, VIEW_SIZE), boundless=True, fill_value=0,
                        resampling=Resampling.average).astype(np.float32)
    pixels = dict(zip(names, data, strict=True))
    valid = bands.valid_mask(data, names)
    scale_y, scale_x = VIEW_SIZE / span_h, VIEW_SIZE / span_w
    box = ((col_off - left) * scale_x, (row_off - top) * scale_y,
           (col_off - left + width) * scale_x - 1, (row_off - top + height) * scale_y - 1)
    return outline(composite(pixels, valid, stretch, names), box)


def grid_pixel_size(transform: Sequence[float] | None, crs: str | None, row_off: int, height: int
                    ) -> tuple[np.ndarray, np.ndarray] | None:
    """Pixel width and height in metres over a patch's rows (None without a georeferenced grid)."""
    if not transform or not crs:
        return None
    return pixel_size_metres(Affine(*transform[:6]), crs, np.arange(row_off, row_off + height))


def write_views(images: dict[str, Image.Image], folder: Path, stem: str) -> dict[str, Path]:
    """Write ``<stem>_<view>.png`` for each view; returns the paths by view key."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, image in images.items():
        path = folder / f"{stem}_{key}.png"
        tmp = path.with_name(f".{path.name}.part")
        image.save(tmp, format="PNG", compress_level=1)
        tmp.replace(path)
        paths[key] = path
    return paths


def patch_view_files(workspace: Workspace, patch: Patch) -> tuple[dict[str, Path], dict[str, str]]:
    """The views of a stored patch as PNGs under ``scenes/views/`` (written once, then reused);
    returns their paths and titles by view key."""
    folder = workspace.scenes_dir / "views"
    stem = f"patch{patch.id}"
    paths = {v.key: folder / f"{stem}_{v.key}.png" for v in VIEWS}
    titles_file = folder / f"{stem}_titles.json"
    if all(p.exists() for p in paths.values()) and titles_file.exists():
        return paths, json.loads(titles_file.read_text())
    scene = patch.scene
    wanted = [c for c in (*FALSE_COLOUR, *NATURAL, "B7", *THERMAL, "elevation") if c in scene.available_channels]
    wanted = list(dict.fromkeys(wanted))
    pixels, valid = read_patch(workspace, patch, wanted)
    size = grid_pixel_size(scene.transform, scene.crs, patch.row_off, patch.height) if not patch.data_path else None
    images, titles = patch_views(dict(zip(wanted, pixels, strict=True)), valid, scene.stretch or {}, size)
    if patch.data_path or not scene.data_path:
        images["context"] = card(VIEW_SIZE, VIEW_SIZE, "no wider context: this scene is stored as separate slices")
    else:
        index = {c: scene.channels.index(c) for c in scene.available_channels}
        images["context"] = read_context(workspace.resolve(scene.data_path), index, patch.row_off, patch.col_off,
                                         patch.height, patch.width, scene.stretch or {})
    written = write_views(images, folder, stem)
    titles_file.write_text(json.dumps(titles))  # last: its presence says every view is written
    return written, titles
