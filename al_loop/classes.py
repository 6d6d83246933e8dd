"""The label classes and the one integer encoding of a label mask.

A stored label mask is a ``uint8`` array on the patch grid:

* ``0`` background, ``1`` clean ice, ``2`` debris-covered glacier;
* ``3`` glacier of unknown type: an inventory that only says "glacier". A binary model counts it
  as glacier; a multiclass model ignores it (it may be either glacier class);
* ``255`` unlabeled: no information (outside a label's coverage), ignored everywhere.
"""

from __future__ import annotations

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


def class_counts(mask: np.ndarray) -> dict[str, int]:
    """Pixel count of every class (and of ``unlabeled``) in a label mask."""
    counts = np.bincount(np.asarray(mask, dtype=np.uint8).ravel(), minlength=256)  # 4x np.unique's speed
    unknown = sorted(set(np.flatnonzero(counts).tolist()) - set(CLASS_NAMES) - {UNLABELED})
    if unknown:
        raise ValueError(f"label mask holds unknown class codes {unknown}")
    result = {name: int(counts[code]) for code, name in CLASS_NAMES.items()}
    result["unlabeled"] = int(counts[UNLABELED])
    return result
