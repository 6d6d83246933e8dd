"""The HKH ``slices/`` layout: file pairing, footprints, image reads and mask conventions."""

from __future__ import annotations

import json
from pathlib import Path

import fiona
import numpy as np
import pytest

from al_loop.classes import BACKGROUND, CLEAN_ICE, DEBRIS, GLACIER, UNLABELED, class_counts
from al_loop.io.slices import (
    detect_mask_convention,
    find_slices,
    mask_to_classes,
    read_slice_image,
    read_slice_mask,
)
from tests.conftest import SHARED_DATA

DATA = SHARED_DATA
LILA = DATA / "lila_hkh"
needs_data = pytest.mark.skipif(
    not (LILA / "slices").is_dir(),
    reason=f"real sample data not found at {LILA} (see shared/data/README.md)",
)


def one_hot(classes: np.ndarray) -> np.ndarray:
    """A 'splits' mask (clean, debris, background) from codes 1, 2, 0."""
    channels = [classes == CLEAN_ICE, classes == DEBRIS, classes == BACKGROUND]
    return np.stack(channels, axis=2).astype(np.uint8)


def nested(classes: np.ndarray) -> np.ndarray:
    """A 'slices' mask (any glacier, clean, debris) from codes 1, 2, 3, 0."""
    glacier = np.isin(classes, (CLEAN_ICE, DEBRIS, GLACIER))
    return np.stack([glacier, classes == CLEAN_ICE, classes == DEBRIS], axis=2).astype(np.uint8)


# ---------------------------------------------------------------------------- real slices


@needs_data
def test_real_masks_are_slices_convention_with_the_documented_counts():
    expected = {"slice_6_mask_072.npy": 697, "slice_14_mask_062.npy": 33}
    with fiona.open(LILA / "slices.geojson") as src:
        means = {Path(f.properties["mask_slice"]).name: f.properties["mask_mean_1"] for f in src}
    for name, glacier_pixels in expected.items():
        mask = np.load(LILA / "slices" / name)
        assert detect_mask_convention(mask) == "slices"
        counts = class_counts(read_slice_mask(LILA / "slices" / name))
        assert counts == {
            "background": 512 * 512 - glacier_pixels,
            "clean_ice": glacier_pixels,
            "debris": 0,
            "glacier": 0,
            "unlabeled": 0,
        }
        assert means[name] * 512 * 512 == pytest.approx(glacier_pixels)  # the geojson agrees


@needs_data
def test_find_slices_pairs_real_masks_with_their_footprints():
    entries = find_slices(LILA / "slices")  # footprints: slices.geojson in the parent

    assert [e.name for e in entries] == ["slice_14_062", "slice_6_072"]
    assert [e.mask_path.name for e in entries] == ["slice_14_mask_062.npy", "slice_6_mask_072.npy"]
    for entry in entries:
        assert entry.image_path is None  # the real images are not in the sample
        assert entry.crs.to_epsg() == 32643
        minx, miny, maxx, maxy = entry.bounds
        assert entry.transform * (0, 0) == pytest.approx((minx, maxy))
        assert entry.transform * (512, 512) == pytest.approx((maxx, miny))
        assert entry.transform.a == pytest.approx(29.65, abs=0.01)  # ~30 m Landsat pixels
    six = entries[1]
    assert six.bounds == pytest.approx((543608.211, 3784433.526, 558790.145, 3799615.657))


# ---------------------------------------------------------------------------- synthetic slices


def write_slice_folder(root: Path) -> Path:
    """slices/ with one image+mask pair, one lone mask, and slices.geojson beside it."""
    folder = root / "slices"
    folder.mkdir()
    image = np.arange(8 * 8 * 15, dtype=np.float32).reshape(8, 8, 15)
    np.save(folder / "slice_3_img_001.npy", image)
    np.save(folder / "slice_3_mask_001.npy", nested(np.zeros((8, 8), np.uint8)))
    np.save(folder / "slice_3_mask_002.npy", nested(np.zeros((8, 8), np.uint8)))
    (folder / "README.txt").write_text("not a slice")
    ring = [[100, 0], [100, 80], [20, 80], [20, 0], [100, 0]]
    feature = {
        "type": "Feature",
        "properties": {
            "img_slice": "D:\\hkh\\slices\\slice_3_img_001.npy",
            "mask_slice": "/datadrive/glaciers/processed/slices/slice_3_mask_001.npy",
        },
        "geometry": {"type": "Polygon", "coordinates": [ring]},
    }
    collection = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "EPSG:32645"}},
        "features": [feature],
    }
    (root / "slices.geojson").write_text(json.dumps(collection))
    return folder


def test_find_slices_pairs_images_and_masks(tmp_path):
    folder = write_slice_folder(tmp_path)
    paired, lone = find_slices(folder)

    assert paired.name == "slice_3_001"
    assert paired.image_path.name == "slice_3_img_001.npy"
    assert paired.mask_path.name == "slice_3_mask_001.npy"
    assert paired.bounds == (20, 0, 100, 80)
    assert paired.crs.to_epsg() == 32645
    assert paired.transform.a == 10 and paired.transform.e == -10
    assert lone.name == "slice_3_002" and lone.image_path is None
    assert lone.bounds is lone.crs is lone.transform is None  # not in the footprints


def test_find_slices_without_footprints(tmp_path):
    folder = write_slice_folder(tmp_path)
    (tmp_path / "slices.geojson").unlink()
    assert all(e.bounds is None and e.transform is None for e in find_slices(folder))


def test_read_slice_image_is_channels_first(tmp_path):
    folder = write_slice_folder(tmp_path)
    path = folder / "slice_3_img_001.npy"
    image = read_slice_image(path)

    assert image.shape == (15, 8, 8) and image.dtype == np.float32
    np.testing.assert_array_equal(image[4], np.load(path)[..., 4])

    wrong = tmp_path / "slice_3_img_009.npy"
    np.save(wrong, np.zeros((8, 8, 15), np.float64))
    with pytest.raises(ValueError, match=r"slice_3_img_009\.npy.*\(H, W, 15\) float32.*float64"):
        read_slice_image(wrong)


def test_one_hot_masks_are_splits_convention():
    classes = np.array([[0, 1], [2, 0]], np.uint8)
    mask = one_hot(classes)
    assert detect_mask_convention(mask) == "splits"
    np.testing.assert_array_equal(mask_to_classes(mask, "splits"), classes)


def test_slices_convention_keeps_untyped_glacier_apart():
    classes = np.array([[0, 1], [2, 3]], np.uint8)
    mask = nested(classes)
    assert detect_mask_convention(mask) == "slices"
    np.testing.assert_array_equal(mask_to_classes(mask, "slices"), classes)


def test_splits_pixel_with_no_channel_is_unlabeled():
    mask = one_hot(np.array([[0, 1], [2, 0]], np.uint8))
    mask[0, 0] = 0
    expected = [[UNLABELED, CLEAN_ICE], [DEBRIS, BACKGROUND]]
    assert mask_to_classes(mask, "splits").tolist() == expected
    mask[0, 0] = 1
    with pytest.raises(ValueError, match="more than one class"):
        mask_to_classes(mask, "splits")


def test_ambiguous_masks_ask_for_an_explicit_convention():
    neither = np.zeros((2, 2, 3), np.uint8)
    neither[0, 0, 1] = 1  # clean ice outside "any glacier", and not one-hot
    with pytest.raises(ValueError, match="neither convention.*give the convention explicitly"):
        detect_mask_convention(neither)
    both = np.zeros((2, 2, 3), np.uint8)
    both[..., 0] = 1  # all "any glacier" (slices) = all clean ice (splits)
    with pytest.raises(ValueError, match="both conventions"):
        detect_mask_convention(both)


def test_bad_masks_raise_naming_the_file(tmp_path):
    wrong_shape = tmp_path / "slice_1_mask_001.npy"
    np.save(wrong_shape, np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(ValueError, match=r"slice_1_mask_001\.npy.*\(H, W, 3\).*\(8, 8, 2\)"):
        read_slice_mask(wrong_shape)

    wrong_values = tmp_path / "slice_1_mask_002.npy"
    np.save(wrong_values, np.full((8, 8, 3), 255, np.uint8))
    with pytest.raises(ValueError, match=r"slice_1_mask_002\.npy.*0 or 1.*255"):
        read_slice_mask(wrong_values, "slices")

    with pytest.raises(ValueError, match="unknown mask convention 'rgb'"):
        mask_to_classes(np.zeros((2, 2, 3), np.uint8), "rgb")
