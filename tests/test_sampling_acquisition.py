"""Acquisition scores on hand-made arrays, and the cloud likelihood against the real clip's BQA."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from al_loop import bands
from al_loop.model.inference import MCResult
from al_loop.sampling import acquisition as acq

CH = list(bands.CHANNELS)
# Ramp ends measured on the real clip by cloud_thresholds (rounded), so hand-made pixels read as
# they would in that scene.
CLIP_THRESHOLDS = {
    "visible_dark": 48.0,
    "visible_bright": 255.0,
    "swir_low": 14.0,
    "swir_high": 112.0,
    "thermal_warm": 4.0,
    "thermal_cold": -11.0,
}


def thermal_dn(celsius: float, band: str = "B6_VCID_1") -> float:
    """Inverse of bands.brightness_temperature."""
    lmin, lmax = bands.THERMAL_GAIN[band]
    radiance = bands.THERMAL_K1 / (math.exp(bands.THERMAL_K2 / (celsius + 273.15)) - 1.0)
    return (radiance - lmin) * 254.0 / (lmax - lmin) + 1.0


def dn_for_ndsi(usual: float, b5: float) -> float:
    """Green DN that gives the usual NDSI (B2 - B5) / (B2 + B5) for a SWIR DN."""
    return b5 * (1.0 + usual) / (1.0 - usual)


def patch(h: int = 8, w: int = 8, **values: float | np.ndarray) -> np.ndarray:
    """A (15, h, w) patch of clear ground at a plausible debris site, overridable per channel;
    ndvi and ndsi are recomputed from the bands (sign-flipped ndsi, as stored)."""
    base = {
        "B1": 60.0, "B2": 60.0, "B3": 60.0, "B4": 66.0, "B5": 44.0,
        "B6_VCID_1": thermal_dn(4.0), "B6_VCID_2": 150.0, "B7": 28.0, "B8": 60.0, "BQA": 672.0,
        "elevation": 4500.0, "slope": 8.0,
    }
    base.update(values)
    pixels = np.zeros((len(CH), h, w), np.float32)
    for name, value in base.items():
        pixels[CH.index(name)] = value
    planes = {name: pixels[CH.index(name)] for name in ("B3", "B4", "B5", "B2")}
    pixels[CH.index("ndvi")] = bands.compute_index("ndvi", planes)
    pixels[CH.index("ndsi")] = bands.compute_index("ndsi", planes)
    return pixels


def one_hot(k: int, cls: int, h: int = 2, w: int = 2) -> np.ndarray:
    probs = np.zeros((k, h, w), np.float32)
    probs[cls] = 1.0
    return probs


# ---------------------------------------------------------------- uncertainty measures


@pytest.mark.parametrize("k", [2, 3])
def test_uniform_probabilities_are_maximally_uncertain(k):
    probs = np.full((k, 2, 2), 1.0 / k, np.float32)
    np.testing.assert_allclose(acq.entropy(probs), math.log(k), rtol=1e-6)
    np.testing.assert_allclose(acq.margin(probs), 1.0, rtol=1e-6)
    np.testing.assert_allclose(acq.least_confidence(probs), 1.0 - 1.0 / k, rtol=1e-6)


def test_one_hot_probabilities_are_certain():
    probs = one_hot(3, 1)
    for fn in (acq.entropy, acq.margin, acq.least_confidence):
        np.testing.assert_allclose(fn(probs), 0.0, atol=1e-7)


def test_margin_uses_the_two_most_probable_classes():
    probs = np.array([0.1, 0.6, 0.3], np.float32)[:, None, None]
    assert acq.margin(probs)[0, 0] == pytest.approx(1.0 - (0.6 - 0.3))
    assert acq.least_confidence(probs)[0, 0] == pytest.approx(0.4)


def test_invalid_pixels_are_nan_and_never_count():
    probs = np.full((3, 2, 2), 1.0 / 3, np.float32)
    probs[:, 0, 0] = [1.0, 0.0, 0.0]
    valid = np.array([[True, False], [False, False]])
    for fn in (acq.entropy, acq.margin, acq.least_confidence):
        score = fn(probs, valid)
        assert np.isnan(score[~valid]).all()
        # the only valid pixel is certain: the uncertain invalid ones must not lift the patch
        assert acq.aggregate(score, valid, q=1.0) == pytest.approx(0.0, abs=1e-7)
    assert np.isnan(acq.bald(np.ones((2, 2), np.float32), valid)[~valid]).all()


def test_valid_mask_defaults_to_finite_probabilities():
    probs = np.full((2, 1, 2), 0.5, np.float32)
    probs[:, 0, 1] = np.nan
    assert np.isnan(acq.entropy(probs)[0, 1]) and np.isfinite(acq.entropy(probs)[0, 0])


# ---------------------------------------------------------------- aggregation and mixing


def test_aggregate_is_the_mean_of_the_top_fraction():
    scores = np.arange(1.0, 11.0).reshape(2, 5)
    assert acq.aggregate(scores, q=0.2) == pytest.approx(9.5)  # top 2 of 10
    assert acq.aggregate(scores, q=0.25) == pytest.approx(9.0)  # ceil(2.5) = 3: 8, 9, 10
    assert acq.aggregate(scores, q=1.0) == pytest.approx(5.5)
    assert acq.aggregate(scores, q=0.01) == pytest.approx(10.0)  # at least one pixel


def test_aggregate_skips_nan_and_invalid_and_scores_empty_patches_zero():
    scores = np.array([[np.nan, 100.0], [1.0, 3.0]])
    valid = np.array([[True, False], [True, True]])
    assert acq.aggregate(scores, valid, q=0.5) == pytest.approx(3.0)  # 100 is invalid, NaN skipped
    assert acq.aggregate(scores, np.zeros((2, 2), bool)) == 0.0
    assert acq.aggregate(np.full((2, 2), np.nan)) == 0.0
    with pytest.raises(ValueError, match="q must be in"):
        acq.aggregate(scores, q=0.0)


def test_rank_normalize_averages_ties():
    np.testing.assert_allclose(acq.rank_normalize(np.array([3.0, 1.0, 3.0, 2.0])), [2.5 / 3, 0.0, 2.5 / 3, 1.0 / 3])
    np.testing.assert_allclose(acq.rank_normalize(np.array([7.0, 7.0, 7.0])), [0.5, 0.5, 0.5])
    np.testing.assert_allclose(acq.rank_normalize(np.array([4.0])), [0.5])
    with pytest.raises(ValueError, match="finite"):
        acq.rank_normalize(np.array([1.0, np.nan]))


def test_combine_is_monotone_in_each_component():
    rng = np.random.default_rng(0)
    components = {name: rng.random(50) for name in ("bald", "debris", "cloud")}
    weights = {"bald": 1.0, "debris": 2.0, "cloud": 0.5}
    base = acq.combine(components, weights, exponents={"cloud": 2.0})
    assert base.shape == (50,) and (base >= 0).all() and (base <= 1).all()
    for name in components:
        lifted = {**components, name: components[name].copy()}
        lifted[name][7] = 10.0  # patch 7 becomes the best in this component
        after = acq.combine(lifted, weights, exponents={"cloud": 2.0})
        assert after[7] > base[7]
        # nobody else gains by another patch rising
        others = np.arange(50) != 7
        assert (after[others] <= base[others] + 1e-12).all()


def test_combine_weighs_and_rejects_bad_names():
    components = {"a": np.array([0.0, 1.0, 2.0]), "b": np.array([2.0, 1.0, 0.0])}
    np.testing.assert_allclose(acq.combine(components, {"a": 1.0, "b": 1.0}), [0.5, 0.5, 0.5])
    np.testing.assert_allclose(acq.combine(components, {"a": 3.0, "b": 1.0}), [0.25, 0.5, 0.75])
    with pytest.raises(ValueError, match="not given"):
        acq.combine(components, {"a": 1.0, "c": 1.0})
    with pytest.raises(ValueError, match="no weight"):
        acq.combine(components, {"a": 1.0}, exponents={"b": 2.0})
    with pytest.raises(ValueError, match="non-negative"):
        acq.combine(components, {"a": -1.0})


def test_unknown_strategy_names_the_valid_ones():
    with pytest.raises(ValueError, match="random, entropy, margin, bald, debris, cloud, combined"):
        acq.strategy_components("coreset")


def test_pool_scores_per_strategy():
    components = {"bald": np.array([0.1, 0.3, 0.2]), "debris": np.array([0.0, 0.5, 1.0]), "cloud": np.zeros(3)}
    np.testing.assert_array_equal(acq.pool_scores("bald", components), components["bald"])
    np.testing.assert_allclose(
        acq.pool_scores("combined", components), acq.combine(components, acq.STRATEGIES["combined"])
    )
    first, again = acq.pool_scores("random", components, rng=3), acq.pool_scores("random", components, rng=3)
    np.testing.assert_array_equal(first, again)
    with pytest.raises(ValueError, match="needs component 'margin'"):
        acq.pool_scores("margin", components)


# ---------------------------------------------------------------- debris


def debris_scene(slope: float) -> np.ndarray:
    """A gentle moraine-like patch with a column of clean ice on its left edge."""
    pixels = patch(8, 8, slope=slope)
    ice = {"B1": 200.0, "B2": dn_for_ndsi(0.7, 20.0), "B3": 200.0, "B4": 150.0, "B5": 20.0}
    for name, value in ice.items():
        pixels[CH.index(name), :, 0] = value
    planes = {name: pixels[CH.index(name)] for name in ("B2", "B5")}
    pixels[CH.index("ndsi")] = bands.compute_index("ndsi", planes)
    return pixels


def test_debris_background_confusion_needs_those_two_on_top():
    probs = np.array(
        [[0.5, 0.45, 0.1, 0.2], [0.0, 0.1, 0.5, 0.0], [0.5, 0.45, 0.4, 0.8]], np.float32
    ).reshape(3, 1, 4)  # classes: background, clean ice, debris
    np.testing.assert_allclose(acq.debris_background_confusion(probs)[0], [1.0, 0.9, 0.0, 0.4], rtol=1e-6)


def test_debris_prior_is_high_on_gentle_ground_near_ice_and_killed_by_steep_slope():
    gentle = acq.debris_prior(debris_scene(slope=8.0), CH)
    steep = acq.debris_prior(debris_scene(slope=40.0), CH)
    assert gentle[:, 1].min() > 0.9  # next to the ice
    assert gentle[:, 1].min() > gentle[:, 7].max()  # decays away from the ice
    assert np.allclose(gentle[:, 0], 0.0)  # the clean ice itself is snow-like, not debris
    np.testing.assert_allclose(steep, 0.0, atol=1e-7)


def test_debris_prior_skips_missing_channels():
    pixels = debris_scene(slope=40.0)
    keep = [i for i, name in enumerate(CH) if name != "slope"]
    without_slope = acq.debris_prior(pixels[keep], [CH[i] for i in keep])
    np.testing.assert_allclose(without_slope, acq.debris_prior(debris_scene(slope=8.0), CH), rtol=1e-6)


def test_debris_prior_is_zero_outside_the_elevation_band_and_on_vegetation():
    assert acq.debris_prior(debris_scene(8.0), CH)[0, 1] > 0.9
    low = debris_scene(8.0)
    low[CH.index("elevation")] = 2500.0
    assert acq.debris_prior(low, CH).max() == 0.0
    green = debris_scene(8.0)
    green[CH.index("B4"), :, 1:] = 140.0  # NDVI (140 - 60) / 200 = 0.4
    assert acq.debris_prior(green, CH)[:, 1:].max() == 0.0


def test_debris_ambiguity_needs_both_confusion_and_prior():
    probs = np.zeros((3, 8, 8), np.float32)
    probs[0], probs[2] = 0.5, 0.5  # debris and background share the mass everywhere
    gentle = acq.debris_ambiguity(probs, debris_scene(8.0), CH)
    steep = acq.debris_ambiguity(probs, debris_scene(40.0), CH)
    assert gentle[:, 1].min() > 0.9
    assert np.nanmax(steep) == 0.0
    confident = acq.debris_ambiguity(one_hot(3, 0, 8, 8), debris_scene(8.0), CH)
    assert np.nanmax(confident) == 0.0


def test_debris_ambiguity_is_nan_on_invalid_pixels():
    pixels = debris_scene(8.0)
    pixels[:9, 3, :] = np.nan  # an SLC-off stripe
    probs = np.full((3, 8, 8), 1.0 / 3, np.float32)
    score = acq.debris_ambiguity(probs, pixels, CH)
    assert np.isnan(score[3]).all() and np.isfinite(score[2]).all()


# ---------------------------------------------------------------- cloud


def median_pixel(b5: float, ndsi: float, celsius: float, visible: float) -> np.ndarray:
    return patch(1, 1, B1=visible, B2=dn_for_ndsi(ndsi, b5), B3=visible, B5=b5, B6_VCID_1=thermal_dn(celsius))


def test_cloud_likelihood_separates_cloud_from_snow_by_swir():
    # hkh_data.md medians: snow B5 21, NDSI 0.72, -7.5 C; cloud B5 97, NDSI 0.27, -6.9 C
    cloud = acq.cloud_likelihood(median_pixel(97.0, 0.27, -6.9, 200.0), CH, CLIP_THRESHOLDS)
    snow = acq.cloud_likelihood(median_pixel(21.0, 0.72, -7.5, 200.0), CH, CLIP_THRESHOLDS)
    medium = acq.cloud_likelihood(median_pixel(45.0, 0.38, -0.3, 110.0), CH, CLIP_THRESHOLDS)
    ground = acq.cloud_likelihood(patch(1, 1), CH, CLIP_THRESHOLDS)
    assert cloud[0, 0] > 0.8
    assert snow[0, 0] < 0.05
    assert 0.1 < medium[0, 0] < 0.6  # the in-between group is in between
    assert ground[0, 0] < 0.05  # warm and dark


def test_cloud_likelihood_skips_missing_channels_and_needs_one():
    keep = [i for i, name in enumerate(CH) if name not in ("B6_VCID_1",)]
    pixels = median_pixel(97.0, 0.27, -6.9, 200.0)[keep]
    assert acq.cloud_likelihood(pixels, [CH[i] for i in keep], CLIP_THRESHOLDS)[0, 0] > 0.8
    terrain = [CH.index("elevation"), CH.index("slope")]
    with pytest.raises(bands.MissingChannelError, match="at least one"):
        acq.cloud_likelihood(patch(1, 1)[terrain], ["elevation", "slope"], CLIP_THRESHOLDS)


def test_cloud_thresholds_adapt_to_the_scene_and_keep_a_minimum_span():
    scene = np.concatenate([patch(4, 4), median_pixel(97.0, 0.27, -6.9, 200.0).repeat(4, 1).repeat(4, 2)], axis=2)
    th = acq.cloud_thresholds(scene, CH)
    assert th["visible_dark"] < th["visible_bright"]
    assert th["swir_low"] < th["swir_high"]
    assert th["thermal_warm"] > th["thermal_cold"]
    flat = acq.cloud_thresholds(patch(4, 4), CH)  # one value everywhere: spans are the minimum
    assert flat["visible_bright"] - flat["visible_dark"] == pytest.approx(40.0)
    assert flat["thermal_warm"] - flat["thermal_cold"] == pytest.approx(8.0)
    with pytest.raises(ValueError, match="no"):
        acq.cloud_thresholds(np.zeros((len(CH), 3, 3), np.float32), CH)


def test_opaque_cloud_patch_is_pushed_below_a_partly_cloudy_one():
    opaque = np.full((10, 10), 0.95, np.float32)
    opaque[:, :1] = 0.5  # a thin edge of ambiguous cloud
    partly = np.full((10, 10), 0.05, np.float32)
    partly[:, :3] = 0.5
    partly[:, 3:5] = 0.95
    assert acq.opaque_cloud_penalty(opaque, np.ones((10, 10), bool)) == 0.0
    assert acq.opaque_cloud_penalty(partly, np.ones((10, 10), bool)) == 1.0
    assert acq.aggregate(acq.cloud_ambiguity(opaque)) < acq.aggregate(acq.cloud_ambiguity(partly))
    assert acq.aggregate(acq.cloud_ambiguity(partly)) == pytest.approx(1.0)


def test_cloud_ambiguity_peaks_at_half_and_where_the_model_says_ice():
    likelihood = np.array([[0.0, 0.5, 1.0, 0.5]], np.float32)
    probs = np.zeros((3, 1, 4), np.float32)
    probs[0, 0, :3] = 1.0  # background
    probs[1, 0, 3] = 1.0  # clean ice at the last (ambiguous) pixel
    score = acq.cloud_ambiguity(likelihood, probs)
    np.testing.assert_allclose(score[0], [0.0, 0.5, 0.0, 1.0], atol=1e-6)


def test_bqa_decoding_of_the_clip_codes():
    codes = np.array([672, 704, 752, 756, 928, 1696, 1728, 0])
    flags = acq.bqa_flags(codes)
    np.testing.assert_array_equal(flags["cloud"], [0, 0, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(flags["cloud_confidence"], [1, 2, 3, 3, 1, 1, 2, 0])
    np.testing.assert_array_equal(flags["shadow_confidence"], [1, 1, 1, 1, 3, 1, 1, 0])
    np.testing.assert_array_equal(flags["snow_confidence"], [1, 1, 1, 1, 1, 3, 3, 0])
    np.testing.assert_array_equal(flags["saturation"], [0, 0, 0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(acq.bqa_cloud_mask(codes), [0, 0, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(acq.bqa_cloud_mask(codes, min_confidence=2), [0, 1, 1, 1, 0, 0, 1, 0])


def test_auroc_by_hand():
    assert acq.auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)) == pytest.approx(0.75)
    assert math.isnan(acq.auroc(np.array([0.1, 0.2]), np.array([0, 0], bool)))


def test_cloud_likelihood_agrees_with_bqa_on_the_real_clip(shared_data):
    import rasterio

    # shared_data skips with its reason when ../shared/data is absent
    with rasterio.open(shared_data / "lila_hkh" / "LE07_134040_20070922_clip.tif") as src:
        pixels, channels = src.read(), list(src.descriptions)
    valid = bands.valid_mask(pixels, channels)
    sample = pixels[:, ::3, ::3]  # thresholds from a sample, as per scene in the loop
    likelihood = acq.cloud_likelihood(pixels, channels, acq.cloud_thresholds(sample, channels), valid)
    bqa = pixels[channels.index("BQA")]
    result = acq.cloud_agreement(likelihood, bqa, valid)
    print(f"cloud likelihood vs BQA cloud on the clip: {result}")
    assert result["n_cloud"] > 500 and result["n_clear"] > 10_000
    assert result["auroc"] > 0.95  # measured 0.994
    assert result["precision"] > 0.8 and result["recall"] > 0.6
    snow = acq.bqa_flags(bqa)["snow_confidence"] == 3
    assert np.nanmedian(likelihood[snow & valid]) < 0.1  # snow is not cloud


# ---------------------------------------------------------------- per patch


def mc_for(probs: np.ndarray, bald_map: np.ndarray) -> MCResult:
    mean = torch.from_numpy(probs[None])
    entropy_map = torch.zeros(1, *mean.shape[2:])  # not used: entropy is recomputed from the mean
    return MCResult(mean, entropy_map, torch.from_numpy(bald_map[None]), torch.zeros(1, 4))


def test_score_patch_returns_every_component_or_a_strategy_subset():
    pixels = debris_scene(8.0)
    probs = np.full((3, 8, 8), 1.0 / 3, np.float32)
    bald_map = np.full((8, 8), 0.2, np.float32)
    scores = acq.score_patch(mc_for(probs, bald_map), pixels, CH, cloud_thresholds=CLIP_THRESHOLDS)
    assert set(scores) == set(acq.COMPONENTS)
    assert scores["entropy"] == pytest.approx(math.log(3), rel=1e-5)
    assert scores["bald"] == pytest.approx(0.2)
    # a three-way tie puts debris and background among the top two: 2/3 of the shared mass
    expected_debris = acq.aggregate(acq.debris_prior(pixels, CH)) * 2.0 / 3.0
    assert scores["debris"] == pytest.approx(expected_debris, rel=1e-5) and scores["debris"] > 0.5
    margin_only = acq.score_patch(mc_for(probs, bald_map), pixels, CH, strategy="margin")
    assert margin_only == {"margin": pytest.approx(1.0)}
    assert acq.score_patch(mc_for(probs, bald_map), pixels, CH, strategy="random") == {}
    with pytest.raises(ValueError, match="cloud_thresholds"):
        acq.score_patch(mc_for(probs, bald_map), pixels, CH, strategy="cloud")
    with pytest.raises(ValueError, match="valid strategies"):
        acq.score_patch(mc_for(probs, bald_map), pixels, CH, strategy="badge")


def test_cold_start_prefers_glacier_and_debris_patches():
    valley = patch(8, 8, elevation=2800.0, slope=8.0)
    snowfield = patch(8, 8, B1=200.0, B2=dn_for_ndsi(0.7, 20.0), B3=200.0, B5=20.0, B6_VCID_1=thermal_dn(-8.0))
    tongue = debris_scene(8.0)
    scores = {name: acq.prior_components(p, CH, cloud_thresholds=CLIP_THRESHOLDS)
              for name, p in (("valley", valley), ("snowfield", snowfield), ("tongue", tongue))}
    assert scores["snowfield"]["glacier"] > 0.8 and scores["valley"]["glacier"] < 0.05
    assert scores["tongue"]["debris"] > 0.9 and scores["valley"]["debris"] == 0.0
    assert set(scores["valley"]) == set(acq.PRIOR_WEIGHTS)


def test_glacier_presence_is_one_minus_background_and_nan_where_invalid():
    probs = np.array([[[0.9, 0.2]], [[0.05, 0.5]], [[0.05, 0.3]]], np.float32)  # (3, 1, 2)
    valid = np.array([[True, False]])
    out = acq.glacier_presence(probs, valid)
    assert out[0, 0] == pytest.approx(0.1) and np.isnan(out[0, 1])


def test_balanced_prefers_a_patch_with_glacier_among_equally_uncertain_ones():
    names = ("bald", "debris", "glacier", "cloud")
    components = {n: np.array([0.5, 0.5]) for n in names}
    components["glacier"] = np.array([0.05, 0.6])  # same uncertainty, only the second shows glacier
    scores = acq.pool_scores("balanced", components)
    assert scores[1] > scores[0]
    assert acq.pool_scores("combined", components)[0] == acq.pool_scores("combined", components)[1]
