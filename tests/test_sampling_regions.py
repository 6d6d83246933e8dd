"""Region queries: the most ambiguous window of a patch, on hand-made maps."""

import numpy as np
import pytest

from al_loop.sampling.regions import Region, ambiguity_map, best_window, region_side


def test_region_side_holds_about_the_fraction_on_the_grid():
    assert region_side(128, 128, 0.25) == 64
    assert region_side(128, 128, 1.0) == 128
    assert region_side(256, 128, 0.25) == 88  # sqrt(0.25 * 256 * 128) = 90.5 -> nearest multiple of 8
    assert region_side(16, 16, 0.01) == 8  # never below one grid step
    with pytest.raises(ValueError, match="fraction"):
        region_side(128, 128, 0.0)


def test_best_window_finds_the_hot_square_and_reaches_the_edges():
    score = np.zeros((128, 128))
    score[70:100, 90:120] = 1.0
    region = best_window(score, 64)
    assert region.pixels == 64 * 64
    assert region.row0 <= 70 and region.row1 >= 100 and region.col0 <= 90 and region.col1 >= 120
    corner = np.zeros((100, 100))
    corner[-5:, -5:] = 1.0  # only the flush-with-the-edge window holds it on a stride-8 grid
    assert best_window(corner, 32).as_list() == [68, 68, 100, 100]
    assert best_window(np.zeros((64, 64)), 32).as_list() == [0, 0, 32, 32]  # ties: the first
    with pytest.raises(ValueError, match="window side"):
        best_window(score, 200)


def test_ambiguity_map_scales_components_so_a_small_scale_one_still_counts():
    valid = np.ones((4, 4), bool)
    bald = np.zeros((4, 4))
    bald[0, 0] = 0.01  # BALD is small in absolute terms
    debris = np.zeros((4, 4))
    debris[3, 3] = 0.9
    combined = ambiguity_map({"bald": bald, "debris": debris, "entropy": np.ones((4, 4))},
                             {"bald": 1.0, "debris": 1.0}, valid)
    assert combined[0, 0] == pytest.approx(0.5) and combined[3, 3] == pytest.approx(0.5) and combined[1, 1] == 0
    valid[3, 3] = False
    masked = ambiguity_map({"bald": bald, "debris": debris}, {"bald": 1.0, "debris": 1.0}, valid)
    assert masked[3, 3] == 0
    with pytest.raises(ValueError, match="no weighted component"):
        ambiguity_map({"entropy": bald}, {"bald": 1.0}, valid)


def test_a_stored_region_is_checked_against_the_patch():
    region = Region.from_list([0, 8, 64, 72], 128, 128)
    mask = region.mask(128, 128)
    assert mask.sum() == region.pixels == 64 * 64 and mask[0, 8] and not mask[0, 7]
    for bad, message in (([0, 0, 64], "four integers"), ([0, 0, 64.5, 64], "four integers"),
                         ([10, 0, 5, 64], "inside"), ([0, 0, 129, 64], "inside")):
        with pytest.raises(ValueError, match=message):
            Region.from_list(bad, 128, 128)
