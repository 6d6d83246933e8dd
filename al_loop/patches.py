"""Reading a stored patch's pixels back, channels chosen by name."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine

from al_loop import bands
from al_loop.config import Workspace
from al_loop.io.rasters import read_window
from al_loop.io.slices import read_slice_image
from db.models import Patch, Scene


def scene_transform(scene: Scene) -> Affine:
    """The scene's pixel grid on the ground (every raster scene has one; slices need footprints)."""
    if scene.transform is None:
        raise ValueError(f"scene {scene.id} ({scene.name}) has no transform: its slices came without footprints")
    return Affine(*scene.transform)


@dataclass(frozen=True)
class PatchSource:
    """Where one patch's pixels lie and which of its file's bands to read: enough to read it
    again later, or in another process, without the store."""

    path: Path  # the scene raster, or a slice's own (H, W, 15) file
    window: tuple[int, int, int, int] | None  # (row, col, height, width) in the raster; None: a slice
    indexes: tuple[int, ...]  # 0-based band positions: the wanted channels, then the reflective ones
    wanted: int  # how many of ``indexes`` are the wanted channels
    reflective: tuple[str, ...]  # names of the bands after the wanted ones, for the valid-pixel rule
    reflective_at: tuple[int, ...]  # their positions among ``indexes``

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixels ``(wanted, H, W)`` float32 and the valid-pixel mask ``(H, W)``."""
        if self.window is None:
            pixels = read_slice_image(self.path)[list(self.indexes)].astype(np.float32)
        else:
            with rasterio.open(self.path) as src:
                pixels = read_window(src, *self.window, list(self.indexes))
        valid = bands.valid_mask(pixels[list(self.reflective_at)], self.reflective)
        return pixels[: self.wanted], valid


def patch_source(workspace: Workspace, patch: Patch, channels: Sequence[str] | None = None) -> PatchSource:
    """How to read ``patch``'s ``channels`` (default: all the scene has); a channel the scene
    lacks is a :class:`~al_loop.bands.MissingChannelError` naming the scene. The valid mask always
    uses the scene's reflective bands, whatever channels were asked for."""
    scene: Scene = patch.scene
    wanted = list(scene.available_channels if channels is None else channels)
    bands.require_channels(wanted, scene.available_channels, where=f"scene {scene.id} ({scene.name})")
    reflective = [c for c in scene.available_channels if c in bands.REFLECTIVE_BANDS]
    names = list(dict.fromkeys(wanted + reflective))
    indexes = tuple(scene.channels.index(c) for c in names)
    if patch.data_path:
        path, window = workspace.resolve(patch.data_path), None
    else:
        path, window = workspace.resolve(scene.data_path), (patch.row_off, patch.col_off, patch.height, patch.width)
    return PatchSource(Path(path), window, indexes, len(wanted), tuple(reflective),
                       tuple(names.index(c) for c in reflective))


def read_patch(
    workspace: Workspace, patch: Patch, channels: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``(len(channels), H, W)`` float32 and the valid-pixel mask ``(H, W)`` (see
    :func:`patch_source`)."""
    return patch_source(workspace, patch, channels).read()
