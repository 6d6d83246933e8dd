"""Cutting a scene into patch windows that cover it whole, edges included."""

from __future__ import annotations


def _offsets(length: int, size: int, stride: int) -> list[int]:
    if length <= size:
        return [0]
    offsets = list(range(0, length - size + 1, stride))
    if offsets[-1] + size < length:
        offsets.append(length - size)  # the last patch sits flush with the edge
    return offsets


def patch_windows(height: int, width: int, size: int, overlap: int = 0) -> list[tuple[int, int]]:
    """``(row_off, col_off)`` of square patches of side ``size`` covering every pixel.

    Neighbours share ``overlap`` pixels; the last row and column of patches are shifted back
    to end at the scene's edge, so every patch lies inside the scene and has the full size.
    A scene smaller than one patch gets a single patch that reaches past its edge (read as
    nodata there).
    """
    if size <= 0:
        raise ValueError(f"patch size must be positive, found {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"patch overlap must be in [0, {size}), found {overlap}")
    stride = size - overlap
    return [(r, c) for r in _offsets(height, size, stride) for c in _offsets(width, size, stride)]
