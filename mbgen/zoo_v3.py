"""MobileNetV3 (Howard et al. 2019, "Searching for MobileNetV3"), Large and Small.

Written the way people write it in PyTorch (torchvision's layout), so the zoo also exercises
what the torch frontend must take from user code: squeeze-excitation as
``F.adaptive_avg_pool2d(x, 1) -> 1x1 conv -> ReLU -> 1x1 conv -> F.hardsigmoid -> scale * x``,
``nn.Hardswish``, residuals, and a Linear/Hardswish/Dropout/Linear classifier.

* The block tables are the paper's Table 1 (Large) and Table 2 (Small): kernel, expansion
  size, output channels, squeeze-excite, activation (RE = ReLU, HS = hard swish), stride.
  The squeeze width is ``make_divisible(expanded / 4)`` as in the authors' TF-Slim code.
* Table 2 marks SE on Small's final 1x1 conv (576); the authors' TF-Slim implementation,
  Keras and torchvision have no SE there, and neither do we.
* The width multiplier scales every output channel count through ``make_divisible``
  (multiples of 8, never losing more than 10 %). As in the authors' TF-Slim code (which the
  paper's Table 3 measures: 155 M MACs for Large 0.75, 44 M for Small 0.75), a block's
  expansion is its table ratio times its rounded input channels, and the classifier's hidden
  layer (1024 Small, 1280 Large) only grows for alpha > 1, as in our MobileNetV2.

Weights and BatchNorm statistics are set by ``mbgen.zoo`` exactly as for V1/V2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

V3_ALPHAS = (0.5, 0.75, 1.0)


@dataclass(frozen=True)
class _Bneck:
    kernel: int
    expanded: int
    out: int
    se: bool
    hard_swish: bool   # activation HS, else RE (ReLU)
    stride: int


# Table 1: MobileNetV3-Large.
_LARGE = (
    _Bneck(3, 16, 16, False, False, 1), _Bneck(3, 64, 24, False, False, 2),
    _Bneck(3, 72, 24, False, False, 1), _Bneck(5, 72, 40, True, False, 2),
    _Bneck(5, 120, 40, True, False, 1), _Bneck(5, 120, 40, True, False, 1),
    _Bneck(3, 240, 80, False, True, 2), _Bneck(3, 200, 80, False, True, 1),
    _Bneck(3, 184, 80, False, True, 1), _Bneck(3, 184, 80, False, True, 1),
    _Bneck(3, 480, 112, True, True, 1), _Bneck(3, 672, 112, True, True, 1),
    _Bneck(5, 672, 160, True, True, 2), _Bneck(5, 960, 160, True, True, 1),
    _Bneck(5, 960, 160, True, True, 1),
)
# Table 2: MobileNetV3-Small.
_SMALL = (
    _Bneck(3, 16, 16, True, False, 2), _Bneck(3, 72, 24, False, False, 2),
    _Bneck(3, 88, 24, False, False, 1), _Bneck(5, 96, 40, True, True, 2),
    _Bneck(5, 240, 40, True, True, 1), _Bneck(5, 240, 40, True, True, 1),
    _Bneck(5, 120, 48, True, True, 1), _Bneck(5, 144, 48, True, True, 1),
    _Bneck(5, 288, 96, True, True, 2), _Bneck(5, 576, 96, True, True, 1),
    _Bneck(5, 576, 96, True, True, 1),
)
# (input channels of the first block, last 1x1 conv, classifier hidden width)
_HEADS = {True: (16, 960, 1280), False: (16, 576, 1024)}


def conv_bn_act(cin: int, cout: int, kernel: int, stride: int, act: type[nn.Module] | None,
                groups: int = 1) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + activation (nn.Identity when ``act`` is None)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        act() if act is not None else nn.Identity(),
    )


class SqueezeExcitation(nn.Module):
    """scale = hardsigmoid(fc2(relu(fc1(avgpool(x))))); out = scale * x (torchvision style)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = self.fc2(self.relu(self.fc1(scale)))
        return F.hardsigmoid(scale) * x


class Bneck(nn.Module):
    """Expand (1x1) -> depthwise kxk -> [SE] -> project (1x1, linear) [+ x]."""

    def __init__(self, cin: int, expanded: int, cout: int, spec: _Bneck,
                 divisible: Callable[[float], int]) -> None:
        super().__init__()
        act = nn.Hardswish if spec.hard_swish else nn.ReLU
        self.use_residual = spec.stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(conv_bn_act(cin, expanded, 1, 1, act))
        layers.append(conv_bn_act(expanded, expanded, spec.kernel, spec.stride, act,
                                  groups=expanded))
        if spec.se:
            layers.append(SqueezeExcitation(expanded, divisible(expanded / 4)))
        layers.append(conv_bn_act(expanded, cout, 1, 1, None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.block(x)
        return self.block(x)


class MobileNetV3(nn.Module):
    def __init__(self, large: bool, alpha: float, divisible: Callable[[float], int],
                 num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        table_in, last_conv, hidden = _HEADS[large]
        cin = divisible(table_in * alpha)
        layers: list[nn.Module] = [conv_bn_act(3, cin, 3, 2, nn.Hardswish)]
        for spec in _LARGE if large else _SMALL:
            cout = divisible(spec.out * alpha)
            expanded = divisible(cin * spec.expanded / table_in)
            layers.append(Bneck(cin, expanded, cout, spec, divisible))
            cin, table_in = cout, spec.out
        last_conv = divisible(last_conv * alpha)
        layers.append(conv_bn_act(cin, last_conv, 1, 1, nn.Hardswish))
        hidden = divisible(hidden * max(1.0, alpha))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, hidden), nn.Hardswish(), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.pool(self.features(x)), 1)
        return self.classifier(x)
