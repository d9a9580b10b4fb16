"""The U-Nets of the lightweight U-Net paper (Li et al., "Lightweight U-net: group convolutions for
ultrasound segmentation"): ``unet``, ``light-unet`` and ``lighter-unet@C``.

All three share the bilinear-upsampling U-Net the paper builds on (milesial's Pytorch-UNet:
64-128-256-512-512 channels, dropout 0.5 at the bottleneck) and differ only in their two
convolutions per block ("Conv set 1" and "Conv set 2" of the paper's Fig. 1):

* ``unet``: both are regular 3x3 convolutions;
* ``light-unet``: set 1 regular, set 2 depthwise separable (3x3 depthwise, then 1x1);
* ``lighter-unet@C``: both are group convolutions of group size ``min(C, in_channels)`` followed by
  a 1x1 convolution; the first layer (3 channels) always uses a group of 3, except for C = 1.

With 3 input channels and 1 output channel the parameter counts equal the paper's Table 2
(:data:`PAPER_PARAMETERS`). The network returns logits; the trainer applies the sigmoid
(one output channel) or the softmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .networks import GROUP_SIZES, is_unet, unet_names  # noqa: F401 - the names live torch-free, used from here
from .networks import UNET_NAME as _NAME

PAPER_PARAMETERS = {
    "unet": 17_267_393,
    "light-unet": 11_000_257,
    "lighter-unet@128": 7_944_661,
    "lighter-unet@64": 4_995_541,
    "lighter-unet@32": 3_465_685,
    "lighter-unet@16": 2_700_757,
    "lighter-unet@8": 2_318_293,
    "lighter-unet@4": 2_127_061,
    "lighter-unet@2": 2_031_445,
    "lighter-unet@1": 1_983_583,
}


def _regular(cin: int, cout: int) -> nn.Module:
    return nn.Conv2d(cin, cout, 3, padding=1)


def _grouped(group_size: int):  # noqa: ANN202 - a conv factory
    """3x3 group convolution of ``min(group_size, cin)`` channels per group, then a 1x1 convolution."""

    def make(cin: int, cout: int) -> nn.Module:
        groups = cin // min(group_size, cin)
        return nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, groups=groups), nn.Conv2d(cin, cout, 1))

    return make


class _DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, mid: int, set1, set2) -> None:  # noqa: ANN001
        super().__init__(
            set1(cin, mid),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            set2(mid, cout),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """Bilinear U-Net with configurable convolution sets (see the module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, *, set1, set2, first_set1=None) -> None:  # noqa: ANN001
        super().__init__()
        widths = (64, 128, 256, 512)

        def block(cin: int, cout: int, mid: int | None = None, s1=set1) -> _DoubleConv:  # noqa: ANN001
            return _DoubleConv(cin, cout, mid or cout, s1, set2)

        self.inc = block(in_channels, widths[0], s1=first_set1 or set1)
        self.down = nn.ModuleList([block(widths[i], widths[i + 1]) for i in range(3)] + [block(512, 512)])
        # up path: concatenation of the skip and the upsampled map, halved by the block's first set
        self.up = nn.ModuleList([block(1024, 256, 512), block(512, 128, 256), block(256, 64, 128), block(128, 64, 64)])
        self.dropout = nn.Dropout(0.5)
        self.outc = nn.Conv2d(64, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for block in self.down:
            skips.append(block(F.max_pool2d(skips[-1], 2)))
        x = self.dropout(skips.pop())
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
            dy, dx = skip.shape[2] - x.shape[2], skip.shape[3] - x.shape[3]
            if dy or dx:  # odd sizes: pad the upsampled map to the skip's size
                x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
            x = block(torch.cat([skip, x], dim=1))
        return self.outc(x)

    def get_classifier(self) -> nn.Module:
        """The output convolution (the "head" of :func:`ensemble.learn.model.param_groups`)."""
        return self.outc


def unet(name: str, in_channels: int = 3, out_channels: int = 1) -> UNet:
    """Build ``unet``, ``light-unet`` or ``lighter-unet@C``; an unknown name or group size raises ValueError."""
    match = _NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"unknown U-Net {name!r}; valid: {', '.join(unet_names())}")
    if name == "unet":
        return UNet(in_channels, out_channels, set1=_regular, set2=_regular)
    if name == "light-unet":
        return UNet(in_channels, out_channels, set1=_regular, set2=_grouped(1))
    size = int(match.group(2))
    if size not in GROUP_SIZES:
        raise ValueError(f"lighter-unet@{size}: the group size must be one of {', '.join(map(str, GROUP_SIZES))}")
    # the first layer sees the image's channels all at once, except in the depthwise case
    first = _grouped(1) if size == 1 else _grouped(in_channels)
    return UNet(in_channels, out_channels, set1=_grouped(size), set2=_grouped(size), first_set1=first)
