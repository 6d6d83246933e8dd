"""Whole-scene prediction to a GeoTIFF in the scene's grid and CRS: the class map, class
probabilities and (with Monte Carlo dropout) predictive entropy and BALD."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import rasterio

from al_loop import bands
from al_loop.config import Workspace
from al_loop.io.rasters import read_window
from al_loop.model.checkpoints import load_version
from al_loop.model.inference import pick_device, predict_scene
from al_loop.model.normalization import normalize
from al_loop.patches import scene_transform
from db import registry
from db.models import Scene
from db.session import Store

NODATA_CLASS = 255


def predict_scene_file(workspace: Workspace, store: Store, scene_id: int, out: Path | None = None,
                       version_name: str | None = None, mc_samples: int | None = None) -> Path:
    """Predict a stored raster scene with a model version (default: the champion)."""
    with store.session() as session:
        scene = session.get(Scene, scene_id)
        if scene is None or not scene.data_path:
            raise LookupError(f"no raster scene with id {scene_id} in the store")
        version = registry.version_or_champion(session, version_name)
        channel_idx = bands.require_channels(version.channels, scene.available_channels, where=f"scene {scene.id} "
                                                                                               f"({scene.name})")
        channel_idx = [scene.channels.index(scene.available_channels[i]) for i in channel_idx]
        reflective_names = [c for c in scene.available_channels if c in bands.REFLECTIVE_BANDS]
        reflective = [scene.channels.index(c) for c in reflective_names]
        source = workspace.resolve(scene.data_path)
        model, _ = load_version(workspace, version)
        norm, classes = version.normalization, list(version.classes)
        name, crs, transform = scene.name, scene.crs, scene_transform(scene)
        height, width = scene.height, scene.width
    T = workspace.config.model.mc_samples if mc_samples is None else mc_samples
    out = Path(out or workspace.root / "predictions" / f"{name}-{version.name}.tif")
    valid_map = np.zeros((height, width), bool)  # filled tile by tile as the model reads them
    with rasterio.open(source) as src:
        def window(r: int, c: int, h: int, w: int) -> np.ndarray:
            valid = bands.valid_mask(read_window(src, r, c, h, w, reflective), reflective_names)
            valid_map[r : r + h, c : c + w] = valid
            return normalize(read_window(src, r, c, h, w, channel_idx), valid, norm)

        result = predict_scene(model, window, height, width, T=T, device=pick_device(),
                               read_valid=lambda r, c, h, w: valid_map[r : r + h, c : c + w],
                               precision=workspace.config.model.precision)
    invalid = ~valid_map
    result.classes[invalid] = NODATA_CLASS
    layers = [("class", result.classes.astype(np.float32))]
    layers += [(f"p_{c}", result.probs[k]) for k, c in enumerate(classes)]
    layers += [("entropy", result.entropy)]
    if result.bald is not None:
        layers += [("bald", result.bald)]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.part")
    profile = dict(driver="GTiff", width=width, height=height, count=len(layers), dtype="float32",
                   crs=crs, transform=transform, tiled=True, compress="deflate")
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            for i, (label, array) in enumerate(layers, start=1):
                dst.write(array.astype(np.float32), i)
                dst.set_band_description(i, label)
            dst.update_tags(model_version=version.name, mc_samples=T, class_nodata=NODATA_CLASS)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
