"""Deterministic and Monte Carlo prediction, and sliding-window scene prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from al_loop.model.inference import (
    _ramp,
    autocast_dtype,
    cpu_has_bf16,
    mc_predict,
    pick_device,
    predict_proba,
    predict_scene,
)
from al_loop.model.network import UNet


def small(**kwargs) -> UNet:
    torch.manual_seed(0)
    return UNet(5, 3, depth=3, base_filters=8, **kwargs).eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(3, 5, 64, 64, generator=torch.Generator().manual_seed(1))


def naive_mc(model: UNet, x: torch.Tensor, T: int, seed: int) -> tuple[torch.Tensor, ...]:
    """All T samples held at once, the textbook formulas."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoded = model.features(x).decoded
        probs = torch.stack([torch.softmax(model.head(decoded, mc=True), 1) for _ in range(T)])
    mean = probs.mean(0)
    entropy = -(mean * mean.log()).sum(1)
    expected = -(probs * probs.log()).sum(2).mean(0)
    return mean, entropy, entropy - expected


def test_pick_device():
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_predict_proba_is_softmax_of_eval_forward_and_restores_mode(x):
    model = small().train()
    probs = predict_proba(model, x, batch_size=2)
    assert model.training
    assert probs.shape == (3, 3, 64, 64) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(1), torch.ones(3, 64, 64))
    with torch.no_grad():
        torch.testing.assert_close(probs, torch.softmax(model.eval()(x), 1))
    torch.testing.assert_close(predict_proba(model, x.numpy()), probs)  # numpy in, same out


def test_mc_running_sums_equal_naive(x):
    model = small()
    result = mc_predict(model, x, T=7, seed=3, batch_size=8)
    mean, entropy, bald = naive_mc(model, x, T=7, seed=3)
    torch.testing.assert_close(result.mean_probs, mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.entropy, entropy, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.bald, bald.clamp(min=0), atol=1e-5, rtol=0)
    assert result.bald.max() > 1e-4  # the samples do disagree somewhere
    torch.testing.assert_close(result.embedding, model.bottleneck_features(x).detach())


def test_bald_between_zero_and_entropy(x):
    result = mc_predict(small(), x, T=10)
    assert (result.bald >= 0).all()
    assert (result.bald <= result.entropy + 1e-6).all()
    assert (result.entropy <= np.log(3) + 1e-6).all()


def test_mc_reproducible_and_independent_of_batching(x):
    model = small()
    a = mc_predict(model, x, T=5, seed=11, batch_size=3)
    b = mc_predict(model, x, T=5, seed=11, batch_size=1)
    c = mc_predict(model, x, T=5, seed=12, batch_size=3)
    torch.testing.assert_close(a.bald, b.bald)
    torch.testing.assert_close(a.mean_probs, b.mean_probs)
    assert not torch.allclose(a.bald, c.bald)


def test_invalid_pixels_have_no_uncertainty(x):
    model = small()
    valid = torch.ones(3, 64, 64, dtype=torch.bool)
    valid[:, :, :20] = False
    masked = mc_predict(model, x, T=5, valid=valid)
    plain = mc_predict(model, x, T=5)
    assert (masked.entropy[~valid] == 0).all() and (masked.bald[~valid] == 0).all()
    assert (masked.entropy[valid] > 0).all()
    torch.testing.assert_close(masked.entropy[valid], plain.entropy[valid])
    torch.testing.assert_close(masked.mean_probs, plain.mean_probs)


def test_trunk_runs_once_unless_dropout_everywhere(x, monkeypatch):
    for everywhere, expected_calls in ((False, 1), (True, 4)):
        model = small(dropout_everywhere=everywhere)
        calls = []
        original = model.features
        monkeypatch.setattr(model, "features", lambda *a, **k: calls.append(1) or original(*a, **k))  # noqa: B023
        result = mc_predict(model, x, T=4)
        assert len(calls) == expected_calls
        assert result.bald.max() > 0


def test_mc_needs_samples(x):
    with pytest.raises(ValueError, match="T must be at least 1"):
        mc_predict(small(), x, T=0)


def reader(scene: np.ndarray):
    calls = []

    def read(row: int, col: int, h: int, w: int) -> np.ndarray:
        calls.append((row, col, h, w))
        return scene[:, row : row + h, col : col + w]

    return read, calls


def test_scene_of_one_tile_equals_predict_proba(x):
    model = small()
    scene = x[0].numpy()
    read, _ = reader(scene)
    out = predict_scene(model, read, 64, 64, tile=64, overlap=16)
    expected = predict_proba(model, x[:1])[0].numpy()
    np.testing.assert_allclose(out.probs, expected, atol=1e-6)
    np.testing.assert_array_equal(out.classes, expected.argmax(0))
    assert out.classes.dtype == np.uint8 and out.bald is None
    entropy = -(expected * np.log(expected)).sum(0)
    np.testing.assert_allclose(out.entropy, entropy, atol=1e-5)


def test_scene_mc_of_one_tile_equals_mc_predict(x):
    model = small()
    read, _ = reader(x[0].numpy())
    out = predict_scene(model, read, 64, 64, tile=64, overlap=16, T=6, seed=2)
    expected = mc_predict(model, x[:1], T=6, seed=2)
    np.testing.assert_allclose(out.probs, expected.mean_probs[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(out.entropy, expected.entropy[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(out.bald, expected.bald[0].numpy(), atol=1e-5)


class Pointwise(nn.Conv2d):
    """A 1x1 convolution that asks for inputs in multiples of 8, as a depth-3 U-Net does."""

    multiple = 8


@pytest.mark.parametrize("height, width, windows", [(100, 150, 4 * 6), (20, 30, 1)])
def test_sliding_window_is_seamless_for_pointwise_model(height, width, windows):
    torch.manual_seed(0)
    model = Pointwise(5, 3, 1)
    scene = np.random.default_rng(0).normal(size=(5, height, width)).astype(np.float32)
    read, calls = reader(scene)
    out = predict_scene(model, read, height, width, tile=32, overlap=8, batch_size=3)
    with torch.no_grad():
        whole = torch.softmax(model(torch.from_numpy(scene)[None]), 1)[0].numpy()
    np.testing.assert_allclose(out.probs, whole, atol=1e-5)
    # 100 x 150: rows start at 0, 24, 48, 68 and columns at 0, 24, 48, 72, 96, 118
    assert len(calls) == windows
    assert all(r + h <= height and c + w <= width for r, c, h, w in calls)


def test_ramp_weights_are_positive_and_sum_to_one_where_neighbours_overlap():
    ramp = _ramp(32, 8)
    assert (ramp > 0).all() and ramp.max() == 1 and (ramp[8:24] == 1).all()
    assert ramp[0] < ramp[3] < ramp[7]  # tile borders, where context is missing, count least
    np.testing.assert_allclose(ramp[24:] + ramp[:8], 1)  # next tile starts at stride 24
    np.testing.assert_array_equal(_ramp(5, 0), 1)


def test_scene_smaller_than_tile_is_padded_and_cropped():
    model = small()
    scene = np.random.default_rng(1).normal(size=(5, 40, 50)).astype(np.float32)
    read, calls = reader(scene)
    valid = np.ones((40, 50), dtype=bool)
    valid[:5] = False
    out = predict_scene(
        model, read, 40, 50, tile=64, overlap=16, T=3,
        read_valid=lambda r, c, h, w: valid[r : r + h, c : c + w],
    )
    assert calls == [(0, 0, 40, 50)]
    padded = np.pad(scene, ((0, 0), (0, 0), (0, 6)), mode="reflect")  # 50 -> 56, a multiple of 8
    expected = mc_predict(model, padded[None], T=3)
    np.testing.assert_allclose(out.probs, expected.mean_probs[0, :, :, :50].numpy(), atol=1e-6)
    np.testing.assert_array_equal(out.classes, out.probs.argmax(0))
    assert (out.entropy[:5] == 0).all() and (out.bald[:5] == 0).all()
    np.testing.assert_allclose(out.bald[5:], expected.bald[0, 5:, :50].numpy(), atol=1e-5)


def test_scene_rejects_bad_tiling():
    read, _ = reader(np.zeros((5, 64, 64), np.float32))
    with pytest.raises(ValueError, match="multiple of 8"):
        predict_scene(small(), read, 64, 64, tile=60)
    with pytest.raises(ValueError, match="overlap"):
        predict_scene(small(), read, 64, 64, tile=64, overlap=64)


def test_precision_is_chosen_by_the_hardware_and_can_be_forced():
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "fp32") is None and autocast_dtype(cpu, "bf16") is torch.bfloat16
    assert autocast_dtype(cpu, "auto") is (torch.bfloat16 if cpu_has_bf16() else None)
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, found 'fp16'"):
        autocast_dtype(cpu, "fp16")


def test_bf16_scoring_stays_close_to_fp32(x):
    """Channels-last bf16 against fp32 on the same model and images: the classes, the
    uncertainties and the ranking of images by uncertainty barely move."""
    model = small()
    fp32 = mc_predict(model, x, T=8, seed=3, precision="fp32")
    bf16 = mc_predict(model, x, T=8, seed=3, precision="bf16")
    assert bf16.mean_probs.dtype == torch.float32
    same = (fp32.mean_probs.argmax(1) == bf16.mean_probs.argmax(1)).float().mean()
    assert same > 0.97
    assert (fp32.mean_probs - bf16.mean_probs).abs().mean() < 0.01
    assert (fp32.bald - bf16.bald).abs().mean() < 0.01
    assert torch.equal(fp32.entropy.mean((1, 2)).argsort(), bf16.entropy.mean((1, 2)).argsort())
    deterministic = predict_proba(model, x, precision="bf16")
    assert (deterministic.argmax(1) == predict_proba(model, x).argmax(1)).float().mean() > 0.97
