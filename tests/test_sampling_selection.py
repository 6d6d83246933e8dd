"""Batch selection: exact top-K, per-scene caps, exclusion radius, k-center spread, power
sampling, and clear errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest

from al_loop.sampling.selection import select_batch, top_order


def test_top_k_is_exact_without_diversity():
    scores = np.random.default_rng(0).random(10_000)
    chosen = select_batch(scores, 25, method="greedy")
    np.testing.assert_array_equal(chosen, np.argsort(-scores, kind="stable")[:25])


def test_ties_go_to_the_lower_index_whatever_the_partition():
    scores = np.array([1.0, 5.0, 5.0, 3.0, 5.0, 5.0, 0.0])
    np.testing.assert_array_equal(top_order(scores, 3), [1, 2, 4])
    np.testing.assert_array_equal(select_batch(scores, 5, method="greedy"), [1, 2, 4, 5, 3])


def test_per_scene_cap_is_respected_and_the_pool_grows_past_it():
    rng = np.random.default_rng(1)
    scores = rng.random(1_000)
    scene_ids = np.where(np.arange(1_000) < 500, "A", "B")
    scores[:500] += 10.0  # every top patch is in scene A
    chosen = select_batch(scores, 8, scene_ids=scene_ids, per_scene_cap=3, method="greedy", pool_factor=1)
    assert len(chosen) == 6  # 3 + 3: the constraint, not k, is binding
    assert (scene_ids[chosen] == "A").sum() == 3 and (scene_ids[chosen] == "B").sum() == 3
    np.testing.assert_array_equal(chosen[:3], np.argsort(-scores)[:3])


def test_exclusion_radius_keeps_chosen_patches_apart():
    xy = np.stack(np.meshgrid(np.arange(20.0), np.arange(20.0)), -1).reshape(-1, 2) * 1000.0  # 1 km grid
    scores = -np.hypot(*(xy - 10_000.0).T)  # best at the centre, falling off outwards
    chosen_near = select_batch(scores, 10, centers=xy, method="greedy")
    gaps_near = np.hypot(*(xy[chosen_near][:, None] - xy[chosen_near][None]).transpose(2, 0, 1))
    assert gaps_near[np.triu_indices(10, 1)].min() < 3000.0  # without the radius they cluster
    chosen = select_batch(scores, 10, centers=xy, exclusion_radius=3000.0, method="greedy")
    gaps = np.hypot(*(xy[chosen][:, None] - xy[chosen][None]).transpose(2, 0, 1))
    assert len(chosen) == 10 and gaps[np.triu_indices(10, 1)].min() >= 3000.0
    assert chosen[0] == np.argmax(scores)


def test_kcenter_spreads_over_the_embedding_space():
    rng = np.random.default_rng(2)
    clusters = np.repeat(np.arange(3), 30)
    embeddings = np.eye(3)[clusters] * 10.0 + rng.normal(scale=0.1, size=(90, 3))
    scores = rng.random(90) * 0.1 + (clusters == 0)  # every top score is in cluster 0
    greedy = select_batch(scores, 3, embeddings=embeddings, method="greedy")
    assert set(clusters[greedy]) == {0}
    spread = select_batch(scores, 3, embeddings=embeddings, diversity=1.0, pool_factor=30)
    assert set(clusters[spread]) == {0, 1, 2}
    assert spread[0] == np.argmax(scores)  # the first pick is by score


def test_kcenter_score_only_is_the_top_k():
    rng = np.random.default_rng(3)
    scores, embeddings = rng.random(200), rng.normal(size=(200, 8))
    chosen = select_batch(scores, 10, embeddings=embeddings, method="kcenter", diversity=0.0)
    np.testing.assert_array_equal(chosen, np.argsort(-scores)[:10])


def test_kcenter_respects_caps():
    rng = np.random.default_rng(4)
    scores, embeddings = rng.random(300), rng.normal(size=(300, 4))
    scene_ids = np.arange(300) % 3
    chosen = select_batch(scores, 9, embeddings=embeddings, scene_ids=scene_ids, per_scene_cap=3)
    assert len(chosen) == 9 and np.bincount(scene_ids[chosen]).max() == 3


def test_power_sampling_is_deterministic_with_a_seed_and_follows_scores():
    rng = np.random.default_rng(5)
    scores = rng.random(5_000)
    first = select_batch(scores, 20, method="power", seed=7)
    np.testing.assert_array_equal(first, select_batch(scores, 20, method="power", seed=7))
    assert not np.array_equal(first, select_batch(scores, 20, method="power", seed=8))
    sharp = select_batch(scores, 20, method="power", seed=7, power_beta=2_000.0)
    assert len(set(sharp) & set(np.argsort(-scores)[:40])) >= 15  # large beta: near the top-K
    zeros = np.zeros(100)
    zeros[:10] = 1.0
    assert set(select_batch(zeros, 10, method="power", seed=0)) == set(range(10))  # zero never drawn first


def test_power_with_beta_zero_is_uniform():
    scores = np.arange(10.0)
    picks = np.concatenate([select_batch(scores, 1, method="power", power_beta=0.0, seed=s) for s in range(400)])
    counts = np.bincount(picks, minlength=10)
    assert counts.min() > 15  # uniform: ~40 each; proportional to score would starve index 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(scores=np.ones(5), k=0), "positive integer"),
        (dict(scores=np.ones(5), k=6), "k=6 is larger than the pool of 5"),
        (dict(scores=np.ones(0), k=1), "empty"),
        (dict(scores=np.array([1.0, np.nan]), k=1), "1 of 2 are not"),
        (dict(scores=np.ones(5), k=1, scene_ids=np.zeros(4)), r"scene_ids must have shape \(5,\).*\(4,\)"),
        (dict(scores=np.ones(5), k=1, centers=np.zeros((5, 3))), r"centers must have shape \(5, 2\).*\(5, 3\)"),
        (dict(scores=np.ones(5), k=1, embeddings=np.zeros((4, 8))), r"embeddings must have shape \(5, C\)"),
        (dict(scores=np.ones(5), k=1, per_scene_cap=2), "needs scene_ids"),
        (dict(scores=np.ones(5), k=1, exclusion_radius=10.0), "needs centers"),
        (dict(scores=np.ones(5), k=1, method="kcenter"), "needs embeddings"),
        (dict(scores=np.ones(5), k=1, method="badge"), "valid methods: greedy, kcenter, power"),
        (dict(scores=-np.ones(5), k=1, method="power"), "non-negative"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, message):
    scores, k = kwargs.pop("scores"), kwargs.pop("k")
    with pytest.raises(ValueError, match=message):
        select_batch(scores, k, **kwargs)
