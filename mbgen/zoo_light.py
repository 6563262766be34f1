"""The lightweight networks MobileNet is usually compared with: SqueezeNet 1.1 and
ShuffleNetV2 (x0.5, x1.0), written the way torchvision writes them, so the zoo also
exercises what the torch frontend must take from user code: ``torch.cat`` on channels,
``x.chunk(2, dim=1)``, the channel shuffle ``view -> transpose -> contiguous -> view``,
``nn.MaxPool2d`` (with ``ceil_mode=True`` in SqueezeNet) and ``x.mean([2, 3])``.

* **SqueezeNet 1.1** (Iandola et al. 2016; the 1.1 variant of the authors' repository, as in
  torchvision): a 3x3 stride-2 convolution with 64 filters, three 3x3 stride-2 max-pools with
  ``ceil_mode=True``, eight fire modules (squeeze 1x1, then expand 1x1 and expand 3x3
  concatenated on channels, ReLU everywhere), and a 1x1 convolution classifier with ReLU
  followed by global average pooling. It has no BatchNorm: convolutions carry a bias.
* **ShuffleNetV2** (Ma et al. 2018, Table 5): a 3x3 stride-2 stem with 24 filters, a 3x3
  stride-2 max-pool, three stages of 4, 8 and 4 units and a 1x1 convolution to 1024 channels,
  then global average pooling and a fully connected classifier. A stride-1 unit splits its
  channels in two halves, transforms one (1x1, depthwise 3x3, 1x1) and concatenates it with
  the other; a stride-2 unit concatenates two transformed copies of its input. Every unit
  ends with a channel shuffle of 2 groups.

Weights and BatchNorm statistics are set by ``mbgen.zoo`` as for MobileNet. SqueezeNet is
built with a BatchNorm after every convolution for that initialisation, and
:meth:`SqueezeNet.fold_batchnorm` then folds each into its convolution's weights and bias:
the finished model is torchvision's layout, and its activations are as well-scaled as the
other zoo models'.
"""

from __future__ import annotations

import torch
from torch import nn

SHUFFLENET_ALPHAS = (0.5, 1.0)

# ShuffleNetV2 output channels of the stem, the three stages and the last conv (Table 5).
_SHUFFLE_CHANNELS = {0.5: (24, 48, 96, 192, 1024), 1.0: (24, 116, 232, 464, 1024)}
_SHUFFLE_REPEATS = (4, 8, 4)

# SqueezeNet 1.1 fire modules: (input, squeeze, expand 1x1, expand 3x3); "M" is a max-pool.
_SQUEEZE_LAYOUT = ("M", (64, 16, 64, 64), (128, 16, 64, 64), "M", (128, 32, 128, 128),
                   (256, 32, 128, 128), "M", (256, 48, 192, 192), (384, 48, 192, 192),
                   (384, 64, 256, 256), (512, 64, 256, 256))


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
             relu: bool = True, bias: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=bias),
        nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- SqueezeNet


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = _conv_bn(cin, squeeze, 1, bias=True)
        self.expand1x1 = _conv_bn(squeeze, expand1x1, 1, bias=True)
        self.expand3x3 = _conv_bn(squeeze, expand3x3, 3, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(x)
        return torch.cat([self.expand1x1(x), self.expand3x3(x)], 1)


class SqueezeNet(nn.Module):
    """SqueezeNet 1.1; :meth:`fold_batchnorm` removes the initialisation's BatchNorms."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, 64, 3, 2), nn.BatchNorm2d(64),
                                                 nn.ReLU(inplace=True))]
        for spec in _SQUEEZE_LAYOUT:
            layers.append(nn.MaxPool2d(3, 2, ceil_mode=True) if spec == "M" else Fire(*spec))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), _conv_bn(512, num_classes, 1, bias=True),
            nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)

    def fold_batchnorm(self) -> None:
        """Fold every (Conv2d, BatchNorm2d, ...) into the convolution: torchvision's layout."""
        with torch.no_grad():
            for seq in list(self.modules()):
                if not (isinstance(seq, nn.Sequential) and len(seq) > 1
                        and isinstance(seq[0], nn.Conv2d)
                        and isinstance(seq[1], nn.BatchNorm2d)):
                    continue
                conv, bn = seq[0], seq[1]
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
                conv.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
                del seq[1]


# ----------------------------------------------------------------------------- ShuffleNetV2


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batch, -1, height, width)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        half = cout // 2
        self.stride = stride
        if stride > 1:
            self.branch1 = nn.Sequential(_conv_bn(cin, cin, 3, stride, groups=cin, relu=False),
                                         _conv_bn(cin, half, 1))
        self.branch2 = nn.Sequential(
            _conv_bn(cin if stride > 1 else half, half, 1),
            _conv_bn(half, half, 3, stride, groups=half, relu=False),
            _conv_bn(half, half, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, alpha: float, num_classes: int = 1000) -> None:
        super().__init__()
        channels = _SHUFFLE_CHANNELS[alpha]
        self.conv1 = _conv_bn(3, channels[0], 3, 2)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = channels[0]
        stages: list[nn.Module] = []
        for repeats, cout in zip(_SHUFFLE_REPEATS, channels[1:4]):
            units = [ShuffleUnit(cin, cout, 2)]
            units += [ShuffleUnit(cout, cout, 1) for _ in range(repeats - 1)]
            stages.append(nn.Sequential(*units))
            cin = cout
        self.stage2, self.stage3, self.stage4 = stages
        self.conv5 = _conv_bn(cin, channels[4], 1)
        self.fc = nn.Linear(channels[4], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean([2, 3]))
