"""The served model and predictions as Label Studio results.

:class:`ModelHolder` keeps the champion loaded once. A promotion (by this process's worker, by
``al-loop worker`` elsewhere, or ``al-loop models promote``) is noticed by :meth:`refresh`, which
loads the new version beside the old one and then swaps one reference: a request in flight keeps
the model it started with, so none fails and none mixes two versions.

A prediction's ``score``, which Label Studio shows beside the model version, is the model's
calibrated confidence for the patch: the expected share of its valid pixels the pre-label gets
right (:mod:`al_loop.model.calibration`: temperature scaling fitted on validation pixels). The
sampler's order reaches Label Studio through the task data instead (``round``, ``rank``: the
project's "al-loop rank" view and sequential sampling in import order, see :mod:`backends.studio`).
The model version shown is the version's name, with "(provisional: why)" when it is trained on
too little to trust (:func:`al_loop.gate.provisional`).

Pre-labels are cleaned before they are sent (:mod:`al_loop.prelabels`): class boundaries
smoothed by a majority filter (``backend.smoothing_radius``) and parts below the minimum mapping
unit (``backend.min_mapping_unit_m2``) given their surroundings' class, so an expert corrects a
few outlines instead of erasing speckle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from affine import Affine

from al_loop.classes import UNLABELED, class_code
from al_loop.config import Workspace
from al_loop.gate import provisional
from al_loop.model.calibration import patch_confidence
from al_loop.model.checkpoints import CheckpointError, load_version
from al_loop.model.inference import pick_device, predict_proba
from al_loop.model.network import UNet
from al_loop.model.normalization import normalize
from al_loop.patches import read_patch
from al_loop.prelabels import clean_prediction, min_pixels_for_area
from al_loop.sampling.regions import Region
from al_loop.terrain import pixel_size_metres
from backends.label_config import LABEL_NAMES, REGION_NAME, label_config
from backends.results import (
    ResultError,
    has_control,
    mask_to_brush_results,
    mask_to_polygon_results,
    region_to_result,
    validate_with_sdk,
)
from db import queries, registry
from db.models import ModelVersion, Patch
from db.session import Store

log = logging.getLogger(__name__)

FORMATS = ("brush", "polygons")
MIN_PART_PX = 16  # polygon predictions leave out specks smaller than this (brushes stay exact)


class ModelUnavailable(LookupError):
    """No model can be served (none trained yet, or the champion's file cannot be loaded)."""


class PredictionError(LookupError):
    """A task cannot be predicted (no model, no such patch); the message says which."""


@dataclass(frozen=True)
class ServedModel:
    version_id: int
    name: str
    model: UNet
    channels: list[str]
    codes: np.ndarray  # mask code of each model output class
    normalization: dict
    temperature: float = 1.0  # of the calibrated confidence
    provisional: str | None = None  # why the version is too weakly trained to trust, or None

    @property
    def title(self) -> str:
        """The model version Label Studio shows."""
        return self.name + (f" (provisional: {self.provisional})" if self.provisional else "")


class ModelHolder:
    """The champion, loaded once and swapped atomically (see the module docstring)."""

    def __init__(self, workspace: Workspace, store: Store, check_every: float = 2.0) -> None:
        self.workspace, self.store, self.check_every = workspace, store, check_every
        self.device = pick_device()
        self._served: ServedModel | None = None
        self._load_lock = threading.Lock()
        self._checked_at = 0.0
        self._failed: int | None = None  # the champion that could not be loaded (tried once)
        self.problem: str | None = None  # why the champion is not served, in words

    @property
    def current(self) -> ServedModel | None:
        return self._served

    @property
    def version_name(self) -> str | None:
        served = self._served
        return served.name if served else None

    @property
    def version_title(self) -> str | None:
        """The model version as Label Studio shows it (see :attr:`ServedModel.title`)."""
        served = self._served
        return served.title if served else None

    def refresh(self, force: bool = True) -> bool:
        """Serve the store's champion if it changed; True when a new model was swapped in.
        Without ``force``, looks at the store at most every ``check_every`` seconds."""
        if not force and time.monotonic() - self._checked_at < self.check_every:
            return False
        with self._load_lock:  # one loader at a time; readers never wait for it
            self._checked_at = time.monotonic()
            with self.store.session() as session:
                champion = registry.champion(session)
                if champion is None or champion.id == self._failed or (
                        self._served and self._served.version_id == champion.id):
                    return False
                try:
                    served = self._load(champion)
                except (CheckpointError, PredictionError) as exc:
                    # Labels are still taken; predictions say why they cannot be made.
                    self._failed = champion.id
                    self.problem = (f"the champion {champion.name} cannot be served: {exc}; promote or roll back "
                                    "to another version (al-loop models promote VERSION)")
                    log.error(self.problem)
                    return False
            self._served, self._failed, self.problem = served, None, None
            if served.provisional:
                log.warning("model %s is provisional (%s): its pre-labels are a rough guess; label more patches "
                            "and retrain", served.name, served.provisional)
            return True

    def _load(self, champion: ModelVersion) -> ServedModel:
        unknown = [c for c in champion.classes if class_code(c) not in LABEL_NAMES]
        if unknown:
            raise PredictionError(f"model {champion.name} predicts {unknown}, which the labeling "
                                  "config has no label for")
        model, _ = load_version(self.workspace, champion)
        metrics = champion.metrics or {}
        return ServedModel(champion.id, champion.name, model.to(self.device).eval(), list(champion.channels),
                           np.array([class_code(c) for c in champion.classes], dtype=np.uint8),
                           dict(champion.normalization),
                           float((metrics.get("calibration") or {}).get("temperature", 1.0)), provisional(metrics))


def predict_masks(workspace: Workspace, served: ServedModel, patches: Sequence[Patch], device: torch.device,
                  batch_size: int) -> tuple[list[np.ndarray], list[float]]:
    """Class masks (al-loop codes; nodata pixels unlabeled) and calibrated confidences of ``patches``."""
    masks, confidences = [], []
    for start in range(0, len(patches), batch_size):
        batch = [read_patch(workspace, p, served.channels) for p in patches[start : start + batch_size]]
        x = np.stack([normalize(pixels, valid, served.normalization) for pixels, valid in batch])
        probs = predict_proba(served.model, torch.from_numpy(x), device=device, batch_size=batch_size,
                              precision=workspace.config.model.precision).numpy()
        for (_, valid), p in zip(batch, probs, strict=True):
            mask = served.codes[p.argmax(0)]
            mask[~valid] = UNLABELED
            masks.append(mask)
            confidences.append(patch_confidence(p, valid, served.temperature))
    return masks, confidences


def mapping_unit_pixels(patch: Patch, area_m2: float) -> int:
    """The minimum mapping unit in pixels of ``patch``'s grid (30 m pixels without a georeferenced grid)."""
    if area_m2 <= 0:
        return 0
    scene = patch.scene
    if scene.transform and scene.crs:
        xres, yres = pixel_size_metres(Affine(*scene.transform[:6]), scene.crs, [patch.row_off + patch.height // 2])
        return min_pixels_for_area(area_m2, float(xres[0, 0]), float(yres[0, 0]))
    return min_pixels_for_area(area_m2, 30.0, 30.0)


def to_prediction(mask: np.ndarray, served_name: str, score: float, fmt: str, config_xml: str | None,
                  region: Region | None = None) -> dict:
    """One Label Studio prediction, checked against the project's labeling config (default:
    al-loop's own, with both brush and polygon tools). A ``region`` to label comes as a box when
    the config has the region tag (a project with an older config gets the whole patch)."""
    if fmt not in FORMATS:
        raise ValueError(f"prediction format must be one of {FORMATS}, found {fmt!r}")
    result = mask_to_brush_results(mask) if fmt == "brush" else mask_to_polygon_results(mask, min_part_px=MIN_PART_PX)
    config_xml = config_xml or label_config(polygons=True)
    if region is not None and has_control(config_xml, REGION_NAME):
        result.append(region_to_result(region, *mask.shape))
    prediction = {"model_version": served_name, "score": round(score, 6), "result": result}
    try:
        validate_with_sdk(config_xml, prediction)
    except ResultError as exc:
        raise ValueError(f"the prediction does not fit the project's labeling config: {exc}") from None
    return prediction


def predict_patch_ids(workspace: Workspace, store: Store, holder: ModelHolder, patch_ids: Sequence[int],
                      config_xml: str | None = None) -> list[dict]:
    """Predictions for ``patch_ids``, in order; PredictionError when a patch or the model is missing."""
    served = holder.current
    if served is None:
        raise ModelUnavailable(holder.problem or "no champion model yet: train one (al-loop train) before asking "
                                                 "for predictions")
    with store.session() as session:
        # The scenes come along: read_patch uses them after the session closed.
        found = {p.id: p for p in queries.patches_by_id(session, list(patch_ids), with_scenes=True)}
    missing = [i for i in patch_ids if i not in found]
    if missing:
        raise PredictionError(f"no patch {missing[0]} in the store" + (f" (nor {missing[1:]})" if missing[1:] else ""))
    cfg = workspace.config.backend
    masks, confidences = predict_masks(workspace, served, [found[i] for i in patch_ids], holder.device, cfg.batch_size)
    masks = [clean_prediction(mask, mapping_unit_pixels(found[i], cfg.min_mapping_unit_m2), cfg.smoothing_radius)
             for i, mask in zip(patch_ids, masks, strict=True)]
    with store.session() as session:
        regions = queries.newest_round_regions(session, list(patch_ids))
    return [
        to_prediction(mask, served.title, confidence, cfg.prediction_format, config_xml,
                      Region.from_list(regions[i], *mask.shape) if i in regions else None)
        for i, mask, confidence in zip(patch_ids, masks, confidences, strict=True)
    ]
