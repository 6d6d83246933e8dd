"""U-Net for glacier segmentation, split into a deterministic trunk and a cheap stochastic head.

Monte Carlo dropout is what the active-learning loop scores patches with, so it has to be cheap:
the only dropout of the default network sits just before the 1x1 classifier. The trunk
(:meth:`UNet.features`) then runs once per patch and only the head (:meth:`UNet.head`: channel
dropout plus a 1x1 convolution, a fraction of a percent of the FLOPs) is sampled T times.
Any richer head costs real compute: one 3x3 convolution of 16 to 16 filters at full resolution is
about 4% of a paper-size pass, so 20 samples of it alone would add most of a whole pass.

``depth`` counts the poolings, as ``net_depth`` of the paper's code: depth 5 with 16 base filters
gives encoder blocks of 16 to 256 filters and a 512-filter bottleneck, and inputs must be
multiples of ``2**depth`` on each side.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class Features(NamedTuple):
    """One trunk pass: full-resolution decoder features and the pooled bottleneck."""

    decoded: torch.Tensor  # (N, base_filters, H, W), the head's input
    bottleneck: torch.Tensor  # (N, C_bottleneck), spatial mean, for diversity sampling


class SpatialDropout(nn.Dropout2d):
    """Channel dropout that can be switched on at inference (``mc=True``).

    In training mode it is plain :class:`nn.Dropout2d` (one mask per image). An MC sample draws
    one channel mask shared by the whole batch: each sample is one sub-network applied alike to
    every image, so an image's scores do not depend on the batch it sits in, overlapping scene
    tiles see the same T sub-networks (seamless blending), and patches ranked against each other
    are scored with common random draws. Masks come from the global CPU generator, which the
    caller seeds (see :func:`al_loop.model.inference.mc_predict`).
    """

    def channel_scale(self, channels: int) -> torch.Tensor:
        """One MC sample's mask, already scaled: 0 or 1/(1-p) per channel, shape (channels,)."""
        keep = torch.rand(channels) >= self.p
        return keep.float() / (1.0 - self.p)

    def forward(self, x: torch.Tensor, mc: bool = False) -> torch.Tensor:
        if not mc:
            return super().forward(x)
        scale = self.channel_scale(x.shape[1]).to(device=x.device, dtype=x.dtype)
        return x * scale[:, None, None]


def _norm(channels: int) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: its statistics are per image, so it behaves the same with the
    # small batches large patches force (4-16 of 512x512), identically in training and eval
    # mode, and an MC sample of one image never depends on the other images in its batch.
    return nn.GroupNorm(_groups(channels), channels)


def _groups(channels: int) -> int:
    """Largest of 8, 4, 2, 1 dividing ``channels``: groups of at least 2 channels from 16 up."""
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class ConvBlock(nn.Module):
    """Two 3x3 convolutions, each followed by GroupNorm and ReLU; optional dropout after the
    first convolution (where the paper's code puts it)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = _norm(out_channels)
        self.dropout = SpatialDropout(dropout) if dropout > 0 else None
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _norm(out_channels)

    def forward(self, x: torch.Tensor, mc: bool = False) -> torch.Tensor:
        x = self.norm1(self.conv1(x))
        if self.dropout is not None:
            x = self.dropout(x, mc)
        x = F.relu(x, inplace=True)
        return F.relu(self.norm2(self.conv2(x)), inplace=True)


class UpBlock(nn.Module):
    """2x transposed-convolution upsampling, concatenation with the skip, then a ConvBlock."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.block = ConvBlock(2 * out_channels, out_channels, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, mc: bool = False) -> torch.Tensor:
        return self.block(torch.cat([skip, self.up(x)], dim=1), mc)


class UNet(nn.Module):
    """U-Net with ``depth`` poolings, filters doubling from ``base_filters`` up to ``max_filters``.

    The head (channel dropout then a 1x1 classifier) is the only stochastic part unless
    ``dropout_everywhere`` puts dropout in every block as in the paper; that variant exists to
    compare against, and MC sampling it means re-running the whole network per sample.
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        depth: int = 5,
        base_filters: int = 16,
        max_filters: int = 512,
        dropout: float = 0.3,
        dropout_everywhere: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, found {depth}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), found {dropout}")
        self.depth, self.in_channels = depth, in_channels
        self.dropout_everywhere = dropout_everywhere
        filters = [min(base_filters * 2**i, max_filters) for i in range(depth + 1)]
        block_dropout = dropout if dropout_everywhere else 0.0

        self.down = nn.ModuleList()
        channels = in_channels
        for f in filters[:-1]:
            self.down.append(ConvBlock(channels, f, block_dropout))
            channels = f
        self.middle = ConvBlock(channels, filters[-1], block_dropout)
        self.up = nn.ModuleList(
            UpBlock(filters[i + 1], filters[i], block_dropout) for i in reversed(range(depth))
        )
        self.head_dropout = SpatialDropout(dropout)
        self.classifier = nn.Linear(filters[0], n_classes)  # a 1x1 convolution, see head()

    @property
    def multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return 2**self.depth

    def check_input(self, x: torch.Tensor) -> None:
        """A clear error for inputs the network cannot take."""
        if x.ndim != 4:
            raise ValueError(f"expected input of shape (N, C, H, W), found {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, found {x.shape[1]}")
        h, w = x.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise ValueError(
                f"input height and width must be multiples of {self.multiple} (2**depth, depth "
                f"{self.depth}); found {h}x{w}"
            )

    def _encode(self, x: torch.Tensor, mc: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
        self.check_input(x)
        skips = []
        for block in self.down:
            x = block(x, mc)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        return skips, self.middle(x, mc)

    def features(self, x: torch.Tensor, mc: bool = False) -> Features:
        """The trunk: everything before the head. Deterministic in eval mode unless
        ``dropout_everywhere`` and ``mc``."""
        skips, x = self._encode(x, mc)
        bottleneck = x.mean(dim=(2, 3))
        for block in self.up:
            x = block(x, skips.pop(), mc)
        return Features(x, bottleneck)

    def head(self, decoded: torch.Tensor, mc: bool = False) -> torch.Tensor:
        """Logits (N, n_classes, H, W) from the trunk's decoded features; one MC sample if ``mc``.

        Dropout followed by the 1x1 classifier is linear in the features, so an MC sample scales
        the classifier's weight columns by the channel mask instead of masking the (16-channel,
        full-resolution) features: the same logits for a fraction of the memory traffic.
        """
        weight = self.classifier.weight  # (n_classes, channels)
        if mc:
            scale = self.head_dropout.channel_scale(weight.shape[1])
            weight = weight * scale.to(device=weight.device, dtype=weight.dtype)
        else:
            decoded = self.head_dropout(decoded)  # active in training mode only
        # The 1x1 convolution as a matrix product: several times faster than conv2d on CPU.
        n, _, height, width = decoded.shape
        logits = torch.matmul(weight, decoded.flatten(2)) + self.classifier.bias[:, None]
        return logits.view(n, -1, height, width)

    def bottleneck_features(self, x: torch.Tensor) -> torch.Tensor:
        """Spatially pooled bottleneck features (N, C), running the encoder only."""
        return self._encode(x, mc=False)[1].mean(dim=(2, 3))

    def forward(self, x: torch.Tensor, mc: bool = False) -> torch.Tensor:
        return self.head(self.features(x, mc).decoded, mc)
