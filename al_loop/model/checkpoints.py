"""Model files: written atomically, loaded safely (weights only), checked against what the
caller expects (channels, classes) before any weight is used."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import torch

from al_loop.config import Workspace
from al_loop.model.network import UNet
from db.models import ModelVersion

FORMAT = "al-loop-unet/1"


class CheckpointError(ValueError):
    """A model file is unreadable, not an al-loop model, or does not fit its use."""


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: a crash at any moment
    leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def safe_load(path: Path) -> dict[str, Any]:
    """Load a file saved by :func:`atomic_save` without executing code (``weights_only``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a damaged file
        raise CheckpointError(f"{path}: not a readable model file ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not an al-loop model file")
    return data


def save_model(model: UNet, path: Path, *, channels: list[str], classes: list[str],
               architecture: dict[str, Any], normalization: dict[str, Any]) -> None:
    atomic_save(
        {
            "format": FORMAT,
            "state_dict": model.state_dict(),
            "channels": list(channels),
            "classes": list(classes),
            "architecture": dict(architecture),
            "normalization": normalization,
        },
        path,
    )


def load_model(path: Path, channels: list[str] | None = None,
               classes: list[str] | None = None) -> tuple[UNet, dict[str, Any]]:
    """The model in ``path`` and its metadata. A file made for another channel set or class
    list than the caller's is refused, naming both."""
    data = safe_load(path)
    if data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an al-loop model file (format {data.get('format')!r}, expected {FORMAT!r})")
    if channels is not None and list(channels) != data["channels"]:
        raise CheckpointError(
            f"{path}: model was trained on channels {data['channels']}, asked to use {list(channels)}"
        )
    if classes is not None and list(classes) != data["classes"]:
        raise CheckpointError(f"{path}: model predicts classes {data['classes']}, expected {list(classes)}")
    model = UNet(len(data["channels"]), len(data["classes"]), **data["architecture"])
    try:
        model.load_state_dict(data["state_dict"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the recorded architecture ({exc})") from None
    model.eval()
    return model, data


def load_version(workspace: Workspace, version: ModelVersion) -> tuple[UNet, dict[str, Any]]:
    """The model of a registered version, checked against its recorded channels and classes."""
    return load_model(workspace.resolve(version.checkpoint_path), version.channels, version.classes)
