"""The label classes and the one integer encoding of a label mask.

A stored label mask is a ``uint8`` array on the patch grid:

* ``0`` background, ``1`` clean ice, ``2`` debris-covered glacier;
* ``3`` glacier of unknown type: an inventory that only says "glacier". A binary model counts it
  as glacier; a multiclass model ignores it (it may be either glacier class);
* ``255`` unlabeled: no information (outside a label's coverage, or mapped so on purpose: the
  ignore target), ignored everywhere.

A patch may hold labels from several sources (an outline inventory, a clean-ice/debris map, an
expert's annotation); :func:`combine_masks` merges them into the one mask training and metrics
use.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BACKGROUND = 0
CLEAN_ICE = 1
DEBRIS = 2
GLACIER = 3
UNLABELED = 255

CLASS_NAMES: dict[int, str] = {
    BACKGROUND: "background",
    CLEAN_ICE: "clean_ice",
    DEBRIS: "debris",
    GLACIER: "glacier",
}
CLASS_CODES: dict[str, int] = {name: code for code, name in CLASS_NAMES.items()}

LABEL_CODES: dict[str, int] = {**CLASS_CODES, "unlabeled": UNLABELED}
"""Names a label file's values may be mapped to: the classes, and ``unlabeled`` (ignore)."""

MULTICLASS = ("background", "clean_ice", "debris")
BINARY = ("background", "glacier")


def class_code(name: str) -> int:
    """The mask code of a class name; a clear error naming the valid names otherwise."""
    try:
        return CLASS_CODES[name]
    except KeyError:
        raise ValueError(
            f"unknown class {name!r}; valid classes: {', '.join(CLASS_CODES)}"
        ) from None


def label_code(name: str) -> int:
    """The mask code a label value may be mapped to: a class, or ``unlabeled`` (ignored)."""
    try:
        return LABEL_CODES[name]
    except KeyError:
        raise ValueError(
            f"unknown class {name!r}; map values to one of: {', '.join(LABEL_CODES)}"
        ) from None


def combine_masks(masks: Sequence[np.ndarray]) -> np.ndarray:
    """One mask from several labels of the same patch, given weakest first.

    A label overrides the ones before it wherever it says something (is not ``unlabeled``),
    except that "glacier of unknown type" never replaces clean ice or debris: both say the
    pixel is glacier, and the typed label says which kind. So an outline inventory ("glacier")
    and a clean-ice/debris map of the same ground combine into typed glacier inside the map and
    untyped glacier elsewhere, and an expert's annotation (strongest) overrides both.
    """
    if not masks:
        raise ValueError("no label masks to combine")
    out = np.array(masks[0], dtype=np.uint8, copy=True)
    for mask in masks[1:]:
        says = (mask != UNLABELED) & ~((mask == GLACIER) & ((out == CLEAN_ICE) | (out == DEBRIS)))
        out[says] = mask[says]
    return out


def class_counts(mask: np.ndarray) -> dict[str, int]:
    """Pixel count of every class (and of ``unlabeled``) in a label mask."""
    mask = np.asarray(mask, dtype=np.uint8)
    # One comparison per code is 6x np.bincount's speed (which widens every pixel to 64 bits).
    result = {name: int(np.count_nonzero(mask == code)) for code, name in CLASS_NAMES.items()}
    result["unlabeled"] = int(np.count_nonzero(mask == UNLABELED))
    if sum(result.values()) != mask.size:
        unknown = sorted(set(np.unique(mask).tolist()) - set(CLASS_NAMES) - {UNLABELED})
        raise ValueError(f"label mask holds unknown class codes {unknown}")
    return result
