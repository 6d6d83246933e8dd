"""al-loop's brush RLE codec against the SDK's (the reference for Label Studio's format)."""

from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle as sdk_decode
from label_studio_sdk.converter.brush import mask2rle as sdk_encode

from backends import rle


def _layers():
    rng = np.random.default_rng(3)
    blobs = np.zeros((40, 50), bool)
    blobs[5:30, 10:45] = True
    return {
        "blobs": blobs,
        "noise": rng.random((40, 50)) < 0.5,
        "empty": np.zeros((40, 50), bool),
        "full": np.ones((300, 300), bool),  # 360,000 values: runs longer than a 16-bit field
        "odd": rng.random((7, 13)) < 0.3,
    }


@pytest.mark.parametrize("name", list(_layers()))
def test_both_codecs_read_each_others_streams(name):
    layer = _layers()[name]
    rgba = np.repeat(np.where(layer.ravel(), 255, 0).astype(np.uint8), 4)
    ours = rle.encode_mask(layer)
    np.testing.assert_array_equal(sdk_decode(ours), rgba)
    np.testing.assert_array_equal(rle.decode(ours, rgba.size), rgba)
    np.testing.assert_array_equal(rle.decode(sdk_encode(np.where(layer, 255, 0).astype(np.uint8)), rgba.size), rgba)


def test_literal_records_decode_too():
    # The SDK writes short mixed stretches as literal records (flag 0): values 0..9, then zeros.
    values = np.concatenate([np.arange(10), np.zeros(30)]).astype(np.uint8)
    from label_studio_sdk.converter.brush import encode_rle

    np.testing.assert_array_equal(rle.decode(encode_rle(values), values.size), values)


@pytest.mark.parametrize(("cut", "problem"), [
    (lambda s: s[:5], "inside its 53-bit header"),
    (lambda s: s[:12], "the stream ends at bit 96"),
    (lambda s: [0, 0, 0, 9] + s[4:], "holds 9 values, expected 8000"),
])
def test_broken_streams_are_value_errors_naming_the_problem(cut, problem):
    stream = cut(rle.encode_mask(_layers()["noise"]))
    with pytest.raises(ValueError, match=problem):
        rle.decode(stream, 40 * 50 * 4)


def test_runs_past_the_announced_count_are_refused():
    stream = rle.encode_mask(np.ones((1, 4), bool))  # one run of 16 values
    with pytest.raises(ValueError, match="its runs hold 16 values, past the 8 announced"):
        rle.decode([0, 0, 0, 8] + stream[4:], 8)
