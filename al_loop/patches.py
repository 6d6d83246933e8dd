"""Reading a stored patch's pixels back, channels chosen by name."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import rasterio

from al_loop import bands
from al_loop.config import Workspace
from al_loop.io.rasters import read_window
from al_loop.io.slices import read_slice_image
from db.models import Patch, Scene


def read_patch(
    workspace: Workspace, patch: Patch, channels: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``(len(channels), H, W)`` float32 and the valid-pixel mask ``(H, W)``.

    ``channels`` default to all the scene has; a channel the scene lacks is a
    :class:`~al_loop.bands.MissingChannelError` naming the scene. The valid mask always uses
    the scene's reflective bands, whatever channels were asked for.
    """
    scene: Scene = patch.scene
    wanted = list(scene.available_channels if channels is None else channels)
    bands.require_channels(wanted, scene.available_channels, where=f"scene {scene.id} ({scene.name})")
    reflective = [c for c in scene.available_channels if c in bands.REFLECTIVE_BANDS]
    names = list(dict.fromkeys(wanted + reflective))
    if patch.data_path:  # a slice: its own (H, W, 15) file
        image = read_slice_image(workspace.resolve(patch.data_path))
        pixels = image[[scene.channels.index(c) for c in names]].astype(np.float32)
    else:
        with rasterio.open(workspace.resolve(scene.data_path)) as src:
            pixels = read_window(
                src, patch.row_off, patch.col_off, patch.height, patch.width,
                [scene.channels.index(c) for c in names],
            )
    valid = bands.valid_mask(pixels[[names.index(c) for c in reflective]], reflective)
    return pixels[: len(wanted)], valid
