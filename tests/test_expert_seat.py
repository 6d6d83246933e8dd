"""The pure parts of the expert's seat: calibrated confidence, why a patch was chosen, the views
on the patch grid, the provisional flag and the change a training made, in words."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from al_loop.gate import describe_change, provisional
from al_loop.io.views import VIEWS, contour_interval, patch_views, terrain
from al_loop.model.calibration import expected_calibration_error, fit_temperature, patch_confidence
from al_loop.sampling.explain import why_chosen


def _overconfident(n: int, temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose labels are drawn from softmax(logits / temperature): calibrated at that T."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 4, size=(n, 3))
    p = np.exp(logits / temperature)
    p /= p.sum(1, keepdims=True)
    targets = np.array([rng.choice(3, p=row) for row in p])
    return logits, targets


def test_temperature_scaling_recovers_the_true_temperature_and_lowers_the_ece():
    logits, targets = _overconfident(20_000, temperature=2.5)
    t = fit_temperature(logits, targets)
    assert t == pytest.approx(2.5, rel=0.1)

    def ece(temp):
        p = np.exp(logits / temp)
        p /= p.sum(1, keepdims=True)
        return expected_calibration_error(p.max(1), p.argmax(1) == targets)

    assert ece(t) < ece(1.0) / 2


def test_patch_confidence_is_the_mean_calibrated_top_probability_over_valid_pixels():
    probs = np.zeros((3, 4, 4))
    probs[0] = 0.9
    probs[1] = 0.05
    probs[2] = 0.05
    valid = np.ones((4, 4), bool)
    assert patch_confidence(probs, valid, 1.0) == pytest.approx(0.9)
    softened = patch_confidence(probs, valid, 3.0)
    assert 1 / 3 < softened < 0.9  # a higher temperature softens, never flips the class
    valid[:] = False
    assert patch_confidence(probs, valid, 1.0) == 0.0


def test_why_chosen_names_the_components_the_patch_ranks_highest_on_in_its_round():
    round_components = [{"bald": 0.1, "debris": 0.9}, {"bald": 0.5, "debris": 0.2}, {"bald": 0.3, "debris": 0.1}]
    words = why_chosen(round_components[0], round_components, "combined", top=1)
    assert words == "chosen by combined: it looks like debris-covered ice (1st of 3)"
    assert "BALD" in why_chosen(round_components[1], round_components, "combined", top=1)
    assert "at random" in why_chosen({}, [{}], "random")
    # a component the strategy does not weigh is never given as a reason
    with_entropy = [{**c, "entropy": 1.0 - k} for k, c in enumerate(round_components)]
    assert "entropy" not in why_chosen(with_entropy[2], with_entropy, "combined", top=3)
    assert "entropy" in why_chosen(with_entropy[0], with_entropy, "entropy")


def test_views_share_the_patch_grid_and_a_missing_band_is_a_card_saying_so():
    rng = np.random.default_rng(0)
    shape = (32, 48)
    pixels = {name: rng.uniform(0, 200, shape).astype(np.float32) for name in ("B1", "B2", "B3", "B4", "B5")}
    pixels["elevation"] = np.add.outer(np.arange(32.0), np.arange(48.0)) * 30
    valid = np.ones(shape, bool)
    views, titles = patch_views(pixels, valid, {}, (30.0, 30.0))
    assert set(views) == {v.key for v in VIEWS} - {"context"}
    assert all(image.size == (48, 32) for image in views.values())  # PIL sizes are (width, height)
    assert (
        titles["terrain"] == f"Terrain: hillshade, elevation contours every {contour_interval(pixels['elevation']):g} m"
    )
    assert titles["false_colour"].startswith("False colour B5/B4/B2")
    # no thermal band: the SWIR/thermal view is a grey card, the others are drawn
    card = np.asarray(views["swir_thermal"])
    assert (card[..., :3] == 96).mean() > 0.8
    assert np.asarray(views["false_colour"])[..., :3].std() > 20
    # a scene without B5 is painted in natural colour, and says so
    del pixels["B5"]
    views, titles = patch_views(pixels, valid, {}, (30.0, 30.0))
    assert titles["false_colour"].startswith("Natural colour") and "no B5" in titles["false_colour"]
    np.testing.assert_array_equal(np.asarray(views["false_colour"]), np.asarray(views["natural"]))


def test_terrain_draws_contours_at_round_intervals():
    dem = np.tile(np.linspace(4000, 4800, 64), (64, 1))
    image, step = terrain(dem, np.ones(dem.shape, bool), 30.0, 30.0)
    assert step == 100.0
    rgba = np.asarray(image)
    contour = (rgba[..., 0] == 255) & (rgba[..., 1] == 140) & (rgba[..., 2] == 0)
    columns = np.flatnonzero(contour.any(axis=0))
    assert 6 <= len(columns) <= 9  # one line per 100 m over 800 m of relief


def test_a_version_trained_on_too_little_is_provisional_and_says_why():
    weak = {"train_patches": 4, "val_patches": 1, "val": {"glacier": {"iou": 0.2, "support": 100}}}
    assert provisional(weak) == "trained on 4 patches; validated on 1 patch; glacier IoU 0.20"
    strong = {"train_patches": 12, "val_patches": 4, "val": {"glacier": {"iou": 0.7, "support": 100}}}
    assert provisional(strong) is None


def test_the_change_a_training_made_compares_the_champion_before_on_the_same_validation_set():
    metrics = {"champion_before": "v1", "val_patches": 4, "gate": {"passed": True, "rows": {
        "clean_ice": {"candidate": 0.61, "champion": 0.52}, "debris": {"candidate": None, "champion": None}}}}
    assert describe_change("v2", metrics) == (
        "v2 promoted: IoU, v1 -> v2 on 4 validation patches: clean ice 0.52 -> 0.61; debris n/a -> n/a")
    first = {"champion_before": None, "val_patches": 4, "gate": {"passed": True, "rows": {
        "glacier": {"candidate": 0.7}}}}
    assert describe_change("v1", first) == "v1 promoted: IoU of v1 on 4 validation patches: glacier 0.70"
    assert "no per-class comparison" in describe_change("v0", {"val_patches": 4})  # a version from before the gate


def test_the_views_of_a_real_hkh_tile_are_all_drawn_and_line_up(shared_data, sqlite_workspace):
    from al_loop.ingest import ingest_hkh_tile
    from al_loop.io.views import patch_view_files
    from al_loop.patches import read_patch
    from al_loop.workspace import open_store
    from db.models import Patch

    store = open_store(sqlite_workspace)
    ingest_hkh_tile(sqlite_workspace, store, shared_data / "lila_hkh" / "LE07_134040_20070922_clip.tif", quiet=True)
    with store.session() as session:
        patch = session.query(Patch).first()
        _ = patch.scene  # loaded while the session is open
        paths, titles = patch_view_files(sqlite_workspace, patch)
        _, valid = read_patch(sqlite_workspace, patch, ["B1"])
    images = {key: np.asarray(PIL.Image.open(path).convert("RGBA")) for key, path in paths.items()}
    # about 1,400 m of relief in the clip: round 200 m contours, nodata ignored
    assert titles["terrain"] == "Terrain: hillshade, elevation contours every 200 m"
    for key in ("false_colour", "natural", "swir_thermal", "terrain"):
        image = images[key]
        assert image.shape[:2] == valid.shape, key  # the patch grid
        np.testing.assert_array_equal(image[..., 3] > 0, valid, err_msg=key)  # transparent exactly off the scene
        assert image[valid][:, :3].std() > 10, key  # drawn, not a grey card
    store.dispose()
