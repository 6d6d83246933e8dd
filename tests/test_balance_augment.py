"""Class weights from the labels' balance, and the augmentations that suit multispectral patches."""

import numpy as np
import pytest
import torch

from al_loop import bands
from al_loop.config import CONFIG_FILE, ConfigError, load_config
from al_loop.model import augment
from al_loop.model.balance import MAX_RATIO, auto_weights, class_shares
from al_loop.model.data import HeldPixels, Sample
from al_loop.model.training import epoch_repeats, loss_weights, validation_can_choose


def test_rare_classes_weigh_more_and_no_class_more_than_the_bound():
    # The HKH archive's balance: glacier ~2.4 % of pixels, debris a tenth of it.
    hkh = auto_weights(class_shares([976, 22, 2]))
    assert hkh[0] == 1.0 and 1.0 < hkh[1] < hkh[2] == MAX_RATIO
    # Ground that is half glacier: no class is worth much more than another.
    half = auto_weights(class_shares([46, 44, 10]))
    assert half[0] == 1.0 and half[1] == pytest.approx(1.0, abs=0.05)
    assert half[2] == pytest.approx(np.sqrt(4.6), abs=0.01)
    # The paper's weights make glacier 3-4.5 times background wherever; auto follows the labels.
    assert half[1] < 1.1 < hkh[1]


def test_untyped_glacier_counts_toward_the_glacier_classes():
    # Outlines only: 54 % glacier of unknown type, no typed ice: half each to clean ice and debris.
    shares = class_shares([46, 0, 0], unknown_glacier=54)
    assert shares.tolist() == pytest.approx([0.46, 0.27, 0.27])
    # With a typed map beside them, untyped pixels follow the typed proportion (3 clean : 1 debris).
    assert class_shares([50, 30, 10], unknown_glacier=10).tolist() == pytest.approx([0.5, 0.375, 0.125])
    assert auto_weights([0.9, 0.1, 0.0]) == [1.0, 3.0, 1.0]  # an absent class weighs as the most common
    with pytest.raises(ValueError, match="no labelled pixels"):
        class_shares([0, 0, 0])


def test_loss_weights_come_from_the_training_targets_or_the_configured_list():
    target = np.zeros((10, 10), np.uint8)
    target[:5] = 254  # untyped glacier
    target[9] = 255  # unlabelled
    sample = Sample(1, 1, (1,), HeldPixels(np.zeros((1, 10, 10), np.float32), np.ones((10, 10), bool)), target)
    weights = loss_weights("auto", [sample], 3)
    assert weights == auto_weights(class_shares([40, 0, 0], unknown_glacier=50))
    assert loss_weights([0.2, 0.6, 0.9], [sample], 2) == [0.2, 0.6]  # a binary model takes the first two
    with pytest.raises(ValueError, match="training.class_weights has 2 values, the model has 3 classes"):
        loss_weights([1.0, 2.0], [sample], 3)


@pytest.mark.parametrize("text, found", [
    ('class_weights = "auto"', "auto"),
    ("class_weights = [0.2, 0.6, 0.9]", [0.2, 0.6, 0.9]),
])
def test_class_weights_are_auto_or_a_list(tmp_path, text, found):
    (tmp_path / CONFIG_FILE).write_text(f"[training]\n{text}\n")
    assert load_config(tmp_path, environ={}).training.class_weights == found
    from_environment = load_config(tmp_path, environ={"AL_LOOP_TRAINING_CLASS_WEIGHTS": "1,2,3"})
    assert from_environment.training.class_weights == [1, 2, 3]


@pytest.mark.parametrize("text, message", [
    ('class_weights = "some"', "class_weights: expected auto or a list of numbers, one per class, found 'some'"),
    ("class_weights = [0.2, -1, 0.9]", "training.class_weights: class weights must be positive numbers"),
    ("class_weights = true", "training.class_weights: expected auto or a list of numbers"),
    ("band_jitter = -0.1", "training.band_jitter must be at least 0"),
    ("gap_augment = 1.5", "training.gap_augment must be between 0 and 1"),
])
def test_bad_training_values_are_named(tmp_path, text, message):
    (tmp_path / CONFIG_FILE).write_text(f"[training]\n{text}\n")
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(tmp_path, environ={})


def test_band_jitter_moves_bands_and_keeps_indices_consistent_and_terrain_alone():
    rng = np.random.default_rng(0)
    channels = ["B3", "B4", "ndvi", "elevation"]
    pixels = np.stack([rng.uniform(20, 200, (16, 16)), rng.uniform(20, 200, (16, 16)), np.zeros((16, 16)),
                       rng.uniform(3000, 6000, (16, 16))]).astype(np.float32)
    pixels[2] = bands.compute_index("ndvi", {"B4": pixels[1], "B3": pixels[0]})
    jittered = augment.jitter_bands(pixels, channels, [50.0, 50.0, 0.2, 1000.0], 0.05, np.random.default_rng(1))
    assert not np.allclose(jittered[:2], pixels[:2])  # bands moved
    assert np.abs(jittered[:2] / pixels[:2] - 1).max() < 0.5  # by a few percent and DN, not by their size
    np.testing.assert_allclose(jittered[2], bands.compute_index("ndvi", {"B4": jittered[1], "B3": jittered[0]}),
                               rtol=1e-5)
    np.testing.assert_array_equal(jittered[3], pixels[3])  # terrain is no measurement of the sensor
    np.testing.assert_array_equal(pixels[2], bands.compute_index("ndvi", {"B4": pixels[1], "B3": pixels[0]}))


def test_gap_stripes_run_along_a_tilted_scan_once_every_32_lines():
    gaps = augment.gap_stripes((256, 256), np.random.default_rng(3))
    assert 0.05 < gaps.mean() < 0.5
    column = gaps[:, 128].astype(int)
    starts = np.flatnonzero(np.diff(column) == 1)
    assert len(starts) >= 6 and np.all(np.abs(np.diff(starts) - 32) <= 6)  # a period of about 32 px
    assert not np.array_equal(gaps[:, 0], gaps[:, 255])  # tilted, not horizontal


def test_flips_and_rotations_move_input_and_target_together():
    x = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(2, 8, 8)
    y = (x[0] % 7).to(torch.uint8)
    for seed in range(8):
        xa, ya = augment.flip_rotate(x, y, np.random.default_rng(seed))
        assert torch.equal((xa[0] % 7).to(torch.uint8), ya)


def test_few_patches_are_taken_several_times_an_epoch_and_choosing_an_epoch_needs_glacier_in_validation():
    from al_loop.config import TrainingConfig

    cfg = TrainingConfig(batch_size=4, min_steps=8, crop_size=128, crops_per_patch=4)
    assert epoch_repeats(5, cfg) == 7  # 35 items: at least 8 steps of 4
    assert epoch_repeats(40, cfg) == 4  # crops_per_patch already gives 40 steps
    assert epoch_repeats(40, TrainingConfig(batch_size=4, min_steps=8, crop_size=0)) == 1

    def sample(glacier: bool) -> Sample:
        target = np.zeros((4, 4), np.uint8)
        target[0, 0] = 254 if glacier else 0
        return Sample(0, 0, (), HeldPixels(np.zeros((1, 4, 4), np.float32), np.ones((4, 4), bool)), target)

    assert not validation_can_choose([sample(False)] * 5)
    assert validation_can_choose([sample(True)] + [sample(False)] * 4)
