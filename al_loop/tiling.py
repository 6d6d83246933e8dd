"""Windows over a scene, every pixel covered: the three ways al-loop cuts one (pure).

* :func:`patch_windows` (:func:`grid_starts`): the patch grid; the last windows reach past the
  edge, so that with no overlap every pixel lies in exactly one patch;
* :func:`edge_aligned_starts`: inference tiles; the last one is moved back to end at the edge, so
  every tile is whole (its overlap with the one before is blended);
* :func:`clipped_blocks`: blocks read or written one at a time; the last ones are cut at the edge.
"""

from __future__ import annotations

from collections.abc import Iterator


def grid_starts(length: int, size: int, stride: int) -> list[int]:
    """Starts of windows along one axis, until a window reaches the end; the last one may
    reach past it."""
    offsets = [0]
    while offsets[-1] + size < length:
        offsets.append(offsets[-1] + stride)
    return offsets


def edge_aligned_starts(length: int, size: int, stride: int) -> list[int]:
    """Starts of windows covering ``length``; the last window ends at the edge (a window
    reaches past it only when the axis is shorter than one window)."""
    if length <= size:
        return [0]
    return list(range(0, length - size, stride)) + [length - size]


def clipped_blocks(height: int, width: int, size: int) -> Iterator[tuple[int, int, int, int]]:
    """``(row_off, col_off, height, width)`` of blocks of side ``size``, row by row, the last
    ones cut at the edges."""
    for row in range(0, height, size):
        for col in range(0, width, size):
            yield row, col, min(size, height - row), min(size, width - col)


def patch_windows(height: int, width: int, size: int, overlap: int = 0) -> list[tuple[int, int]]:
    """``(row_off, col_off)`` of square patches of side ``size`` covering every pixel.

    A regular grid: neighbours share ``overlap`` pixels (none by default), and the last row and
    column of patches reach past the scene's edge (read as nodata there) rather than being
    shifted back over their neighbours. So with no overlap every scene pixel lies in exactly one
    patch: an expert never labels the same ground twice, and metrics count each pixel once.
    """
    if size <= 0:
        raise ValueError(f"patch size must be positive, found {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"patch overlap must be in [0, {size}), found {overlap}")
    stride = size - overlap
    return [(r, c) for r in grid_starts(height, size, stride) for c in grid_starts(width, size, stride)]
