import numpy as np
import pytest

from al_loop.tiling import clipped_blocks, edge_aligned_starts, patch_windows


@pytest.mark.parametrize(
    "height, width, size, overlap", [(1000, 700, 256, 0), (512, 512, 512, 0), (1100, 530, 256, 64)]
)
def test_windows_cover_every_pixel_on_a_regular_grid(height, width, size, overlap):
    covered = np.zeros((height + size, width + size), dtype=int)
    windows = patch_windows(height, width, size, overlap)
    for row, col in windows:
        assert row % (size - overlap) == 0 and col % (size - overlap) == 0
        assert row < height and col < width
        covered[row : row + size, col : col + size] += 1
    assert covered[:height, :width].min() >= 1
    assert len(set(windows)) == len(windows)


def test_without_overlap_every_scene_pixel_lies_in_exactly_one_patch():
    height, width, size = 655, 800, 256
    covered = np.zeros((height + size, width + size), dtype=int)
    windows = patch_windows(height, width, size)
    for row, col in windows:
        covered[row : row + size, col : col + size] += 1
    assert (covered[:height, :width] == 1).all()
    assert len(windows) == 3 * 4  # the last row and column reach past the edge


def test_overlap_is_respected_between_neighbours():
    rows = sorted({r for r, _ in patch_windows(2000, 300, 512, 112)})
    assert rows[1] - rows[0] == 400


def test_small_scene_gets_one_patch_reaching_past_its_edge():
    assert patch_windows(169, 139, 512) == [(0, 0)]


@pytest.mark.parametrize("size, overlap", [(0, 0), (256, 256), (256, -1)])
def test_bad_sizes_are_refused(size, overlap):
    with pytest.raises(ValueError, match="patch"):
        patch_windows(100, 100, size, overlap)


@pytest.mark.parametrize("length, size, stride", [(1000, 256, 192), (256, 256, 192), (100, 256, 192), (513, 256, 256)])
def test_edge_aligned_tiles_are_whole_and_cover_the_axis(length, size, stride):
    starts = edge_aligned_starts(length, size, stride)
    covered = np.zeros(max(length, size), dtype=int)
    for start in starts:
        covered[start : start + size] += 1
    assert (covered[:length] > 0).all()
    assert starts == sorted(starts) and starts[0] == 0
    assert all(start + size <= length for start in starts) or starts == [0]  # whole, unless the axis is shorter


@pytest.mark.parametrize("height, width, size", [(100, 70, 32), (64, 64, 64), (10, 300, 128)])
def test_clipped_blocks_cover_every_pixel_once_inside_the_scene(height, width, size):
    covered = np.zeros((height, width), dtype=int)
    for row, col, h, w in clipped_blocks(height, width, size):
        assert 0 < h <= size and 0 < w <= size
        covered[row : row + h, col : col + w] += 1
    assert (covered == 1).all()

