"""The expert-time cost model, on hand-made masks and lead times."""

import numpy as np
import pytest

from al_loop.sampling import cost


def test_edge_pixels_count_both_sides_of_a_boundary_and_ignore_unlabelled():
    mask = np.zeros((8, 8), np.uint8)
    assert cost.edge_pixels(mask) == 0
    mask[:, 4:] = 1  # one vertical boundary: columns 3 and 4
    assert cost.edge_pixels(mask) == 16
    mask[:, 6:] = 255  # unlabelled next to a class is no outline to draw
    assert cost.edge_pixels(mask) == 16
    with pytest.raises(ValueError, match="2-D"):
        cost.edge_pixels(np.zeros((2, 2, 2)))


def test_fit_recovers_a_linear_cost_and_falls_back_to_the_prior():
    edges = np.array([0, 100, 200, 400, 800, 50.0])
    seconds = 40 + 0.5 * edges
    model = cost.fit(edges, seconds)
    assert model.fitted_on == 6
    assert model.seconds == pytest.approx(40, abs=1e-6) and model.seconds_per_edge_px == pytest.approx(0.5)
    assert "fitted on 6 lead times" in model.describe()
    assert cost.fit(edges[:4], seconds[:4]) is cost.PRIOR  # too few lead times
    assert cost.fit(edges[:5], np.r_[seconds[:4], np.nan]) is cost.PRIOR  # a missing one does not count
    # Never negative parts: lead times that fall with outline length give a flat cost, not a negative slope.
    flat = cost.fit(edges, 300 - 0.1 * edges)
    assert flat.seconds_per_edge_px == 0 and flat.predict(1e6) >= cost.MIN_SECONDS
    with pytest.raises(ValueError, match="one length"):
        cost.fit(edges, seconds[:3])


def test_per_second_trades_score_against_expected_time():
    scores = np.array([0.9, 0.6, 0.3])
    same = cost.per_second(scores, np.array([60.0, 60.0, 60.0]))
    assert np.allclose(same, scores)  # equal costs: the ranking stands
    weighed = cost.per_second(scores, np.array([300.0, 60.0, 60.0]))
    assert weighed.argmax() == 1  # the best patch takes five times as long as the next: it drops
    with pytest.raises(ValueError, match="positive"):
        cost.per_second(scores, np.array([0.0, 1.0, 1.0]))
