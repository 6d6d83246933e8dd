"""The U-Net: shapes, input checks, where dropout acts and that the trunk is deterministic."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from al_loop.model.network import UNet


def small(**kwargs) -> UNet:
    torch.manual_seed(0)
    return UNet(5, 3, depth=3, base_filters=8, **kwargs).eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 5, 64, 64, generator=torch.Generator().manual_seed(1))


def test_shapes(x):
    model = small()
    assert model(x).shape == (2, 3, 64, 64)
    trunk = model.features(x)
    assert trunk.decoded.shape == (2, 8, 64, 64)
    assert trunk.bottleneck.shape == (2, 64)  # 8 * 2**3 filters at the bottleneck
    torch.testing.assert_close(model.bottleneck_features(x), trunk.bottleneck)


def test_filters_double_and_are_capped():
    paper = UNet(15, 3)  # depth 5, 16 to 512 filters as in the paper
    assert [b.conv2.out_channels for b in paper.down] == [16, 32, 64, 128, 256]
    assert paper.middle.conv2.out_channels == 512
    capped = UNet(15, 3, depth=6, max_filters=512)
    assert [b.conv2.out_channels for b in capped.down][-1] == 512  # 16 * 2**5
    assert capped.middle.conv2.out_channels == 512  # not 1024
    assert capped.multiple == 64


def test_wrong_input_size_names_expected_and_found(x):
    model = small()
    with pytest.raises(ValueError, match=r"multiples of 8.*found 60x64"):
        model(x[:, :, :60])
    with pytest.raises(ValueError, match="expected 5 input channels, found 4"):
        model(x[:, :4])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        model(x[0])


def test_groupnorm_not_batchnorm_and_images_independent_of_batch(x):
    model = small()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    torch.testing.assert_close(model(x)[1:], model(x[1:]))
    model.train()  # same in training mode once dropout is out of the picture
    model.head_dropout.p = 0.0
    torch.testing.assert_close(model(x)[1:], model(x[1:]))


def test_eval_forward_is_deterministic_and_equals_head_of_features(x):
    model = small()
    first = model(x)
    torch.testing.assert_close(model(x), first, rtol=0, atol=0)
    torch.testing.assert_close(model.head(model.features(x).decoded), first)


def test_mc_heads_differ_and_training_mode_drops(x):
    model = small()
    decoded = model.features(x).decoded
    assert not torch.allclose(model.head(decoded, mc=True), model.head(decoded, mc=True))
    model.train()
    assert not torch.allclose(model(x), model(x))


def test_head_only_dropout_leaves_trunk_deterministic(x):
    model = small()
    assert sum(isinstance(m, nn.Dropout2d) for m in model.modules()) == 1
    torch.testing.assert_close(model.features(x, mc=True).decoded, model.features(x).decoded)


def test_dropout_everywhere_makes_trunk_stochastic(x):
    model = small(dropout_everywhere=True)
    # one per block: 3 down, the middle, 3 up, plus the head
    assert sum(isinstance(m, nn.Dropout2d) for m in model.modules()) == 3 + 1 + 3 + 1
    assert not torch.allclose(model.features(x, mc=True).decoded, model.features(x, mc=True).decoded)
    torch.testing.assert_close(model.features(x).decoded, model.features(x).decoded)


def test_mc_mask_is_shared_across_the_batch(x):
    model = small()
    same = x[:1].expand(3, -1, -1, -1)
    out = model(same, mc=True)
    torch.testing.assert_close(out[0], out[1])
    torch.testing.assert_close(out[0], out[2])


def test_mc_head_equals_masked_features_through_the_classifier(x):
    """The head folds the channel mask into the classifier weights: same logits as masking."""
    model = small()
    decoded = model.features(x).decoded
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        logits = model.head(decoded, mc=True)
        torch.manual_seed(4)
        masked = model.head_dropout(decoded, mc=True)
    expected = torch.einsum("kc,nchw->nkhw", model.classifier.weight, masked)
    expected = expected + model.classifier.bias[:, None, None]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert (masked == 0).all(dim=(0, 2, 3)).any()  # some channel was dropped, in every image
