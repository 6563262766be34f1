"""Built-in MobileNet models with deterministic weights, for tests, benchmarks and demos.

Names are ``mbv1_<alpha>_<resolution>``, ``mbv2_...``, ``mbv3s_...`` (MobileNetV3-Small) and
``mbv3l_...`` (Large), e.g. ``mbv1_0.25_128``.

* **MobileNetV1** (Howard et al. 2017, Table 1): a 3x3 stride-2 convolution with ``32*alpha``
  filters, 13 depthwise-separable blocks (3x3 depthwise + BN + ReLU6, then 1x1 pointwise +
  BN + ReLU6), global average pooling, dropout and a fully connected classifier. We use ReLU6,
  as TensorFlow's reference MobileNetV1 does (the paper says ReLU); channel counts are
  ``int(c * alpha)`` like TF's ``depth_multiplier``.
* **MobileNetV2** (Sandler et al. 2018, Table 2): inverted residual blocks from the t/c/n/s
  table with ReLU6, linear (activation-free) bottlenecks and ``out = x + block(x)`` when the
  stride is 1 and the channel count is unchanged. Channels are rounded to multiples of 8
  (:func:`make_divisible`); the last 1x1 conv has ``1280 * max(1, alpha)`` channels.
* **MobileNetV3** Small and Large (Howard et al. 2019, Tables 2 and 1): see ``mbgen.zoo_v3``.
* **SqueezeNet 1.1** (``squeezenet1_1_<res>``) and **ShuffleNetV2** x0.5 / x1.0
  (``shufflenetv2_<alpha>_<res>``): see ``mbgen.zoo_light``.

The weights are random but not arbitrary: Kaiming-normal convolutions, random BatchNorm
affine parameters, and BatchNorm running statistics measured on a seeded synthetic batch, so
each normalisation really normalises and activations stay O(1) all the way to the logits.
That keeps int8 quantisation meaningful (no layer collapses to a few levels).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

import torch
from torch import nn

from mbgen.errors import UserError
from mbgen.zoo_light import SHUFFLENET_ALPHAS, ShuffleNetV2, SqueezeNet
from mbgen.zoo_v3 import V3_ALPHAS, MobileNetV3

V1_ALPHAS = (0.25, 0.5, 0.75, 1.0)
V2_ALPHAS = (0.35, 0.5, 0.75, 1.0)
RESOLUTIONS = (96, 128, 160, 192, 224)

# MobileNetV1 body after the stem: (pointwise output channels, depthwise stride).
_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
              (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))

# MobileNetV2 bottlenecks: expansion t, output channels c, repeats n, first stride s.
_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

# Images in the synthetic batch that sets the BatchNorm statistics. Enough pixels per
# channel even at the 3x3..7x7 tail of the network, cheap enough to build in well under 1 s.
_CALIBRATION_BATCH = 4


@dataclass(frozen=True)
class ModelInfo:
    family: str        # "mobilenet_v1" | "mobilenet_v2" | "mobilenet_v3_small" | "..._large"
                       # | "squeezenet1_1" | "shufflenet_v2"
    alpha: float       # width multiplier
    resolution: int    # input height and width


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to the nearest multiple of ``divisor``, never losing > 10 %."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _alpha_text(alpha: float) -> str:
    return f"{alpha:g}" if alpha != int(alpha) else f"{alpha:.1f}"


def _all_infos() -> dict[str, ModelInfo]:
    infos: dict[str, ModelInfo] = {}
    for prefix, family, alphas in (("mbv1", "mobilenet_v1", V1_ALPHAS),
                                   ("mbv2", "mobilenet_v2", V2_ALPHAS),
                                   ("mbv3s", "mobilenet_v3_small", V3_ALPHAS),
                                   ("mbv3l", "mobilenet_v3_large", V3_ALPHAS)):
        for alpha in alphas:
            for res in RESOLUTIONS:
                infos[f"{prefix}_{_alpha_text(alpha)}_{res}"] = ModelInfo(family, alpha, res)
    for res in RESOLUTIONS:
        infos[f"squeezenet1_1_{res}"] = ModelInfo("squeezenet1_1", 1.0, res)
    for alpha in SHUFFLENET_ALPHAS:
        for res in RESOLUTIONS:
            infos[f"shufflenetv2_{_alpha_text(alpha)}_{res}"] = ModelInfo("shufflenet_v2",
                                                                          alpha, res)
    return infos


_INFOS = _all_infos()


def names() -> list[str]:
    """Every zoo model name, V1 before V2 before V3 before SqueezeNet and ShuffleNetV2, narrow
    before wide, small before large input."""
    return list(_INFOS)


def suggest(name: str) -> list[str]:
    """Zoo names close to ``name`` (for 'did you mean' messages), best first."""
    return difflib.get_close_matches(name, names(), n=3, cutoff=0.6)


def describe(name: str) -> ModelInfo:
    """Family, width multiplier and resolution of a zoo model; UserError if unknown."""
    info = _INFOS.get(name)
    if info is None:
        close = suggest(name)
        hint = f"; did you mean {', '.join(close)}?" if close else \
            "; names look like mbv1_0.25_128 or mbv2_0.35_96 (see `mbgen models`)"
        raise UserError(f"unknown zoo model {name!r}{hint}")
    return info


def input_shape(name: str) -> tuple[int, int, int, int]:
    """NCHW input shape ``(1, 3, res, res)`` of a zoo model."""
    res = describe(name).resolution
    return (1, 3, res, res)


# ----------------------------------------------------------------------------- building blocks


def _conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int, groups: int = 1,
                   tf_padding: bool = False) -> nn.Sequential:
    conv: nn.Module = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups,
                                bias=False)
    if tf_padding and stride == 2:
        # TensorFlow's 'SAME' at stride 2 pads (kernel - 2) pixels on an even input, the odd
        # one at the bottom/right; PyTorch pads kernel // 2 on every side. Every zoo resolution
        # is a multiple of 32, so each stride-2 layer sees an even size.
        total = kernel - 2
        conv = nn.Sequential(
            nn.ZeroPad2d((total // 2, total - total // 2, total // 2, total - total // 2)),
            nn.Conv2d(cin, cout, kernel, stride, padding=0, groups=groups, bias=False))
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU6(inplace=False))


class MobileNetV1(nn.Module):
    def __init__(self, alpha: float, num_classes: int = 1000, dropout: float = 1e-3,
                 tf_padding: bool = False) -> None:
        super().__init__()
        width = 32 * alpha
        cin = int(width)
        layers: list[nn.Module] = [_conv_bn_relu6(3, cin, 3, 2, tf_padding=tf_padding)]
        for cout_full, stride in _V1_BLOCKS:
            cout = int(cout_full * alpha)
            layers.append(nn.Sequential(
                _conv_bn_relu6(cin, cin, 3, stride, groups=cin,
                               tf_padding=tf_padding),    # conv_dw
                _conv_bn_relu6(cin, cout, 1, 1),          # conv_pw
            ))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.pool(self.features(x)))
        return self.classifier(self.dropout(x))


class InvertedResidual(nn.Module):
    """Expand (1x1, ReLU6) -> depthwise 3x3 (ReLU6) -> project (1x1, linear) [+ x]."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(_conv_bn_relu6(cin, hidden, 1, 1))
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, alpha: float, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        cin = make_divisible(32 * alpha)
        last = make_divisible(1280 * max(1.0, alpha))
        layers: list[nn.Module] = [_conv_bn_relu6(3, cin, 3, 2)]
        for t, c, n, s in _V2_SETTINGS:
            cout = make_divisible(c * alpha)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(_conv_bn_relu6(cin, last, 1, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.pool(self.features(x)))
        return self.classifier(self.dropout(x))


# ----------------------------------------------------------------------------- weights


def _init_weights(model: nn.Module, generator: torch.Generator) -> None:
    """Seeded Kaiming init; BatchNorm gets random (not identity) affine parameters.

    A BatchNorm that feeds a ReLU6 (ReLU, hard swish) gets a positive mean shift (beta ~ N(1,
    0.5)), so most of its units are active as in a trained network; linear-bottleneck
    BatchNorms keep beta ~ N(0, 0.25). Convolutions with a bias (V3's squeeze-excite) get
    bias ~ N(0, 0.1).
    With beta centred on 0 everywhere, half the units of every layer sit at the ReLU's corner
    and the random network becomes chaotic: any perturbation, int8 rounding of the input
    included, grows layer by layer (end-to-end cosine 0.90-0.96 vs 0.999 with this init), which
    says nothing about quantisation quality on a trained model.
    """
    gated = {id(seq[1]) for seq in model.modules()
             if isinstance(seq, nn.Sequential) and len(seq) == 3
             and isinstance(seq[2], (nn.ReLU6, nn.ReLU, nn.Hardswish))}
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                std = math.sqrt(2.0 / fan_in)
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.out_channels, generator=generator))
            elif isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(0.5 + torch.rand(c, generator=generator))    # gamma 0.5..1.5
                beta = 0.25 * torch.randn(c, generator=generator)
                module.bias.copy_(1.0 + 2.0 * beta if id(module) in gated else beta)
            elif isinstance(module, nn.Linear):
                std = 1.0 / math.sqrt(module.in_features)
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                module.bias.copy_(0.1 * torch.randn(module.out_features, generator=generator))


def _calibrate_batchnorm(model: nn.Module, resolution: int, generator: torch.Generator) -> None:
    """Set BN running statistics to those of a synthetic, image-like seeded batch.

    ``momentum=None`` makes BN keep a plain cumulative average, so one pass stores exactly the
    batch statistics. Inputs are smooth noise in the usual [-1, 1] preprocessing range.
    Everything runs in float64 on one thread: some CPU kernels (bilinear resize, reductions)
    split work by thread count, and the statistics, rounded once to float32, must not depend on
    the machine, so that a seed means the same weights everywhere.
    """
    coarse = torch.rand((_CALIBRATION_BATCH, 3, 8, 8), generator=generator) * 2 - 1
    noise = 0.25 * torch.randn((_CALIBRATION_BATCH, 3, resolution, resolution),
                               generator=generator)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        smooth = nn.functional.interpolate(coarse.double(), size=(resolution, resolution),
                                           mode="bilinear", align_corners=False)
        batch = (smooth + noise.double()).clamp(-1.0, 1.0)
        model.double().train()
        for module in model.modules():  # statistics of the eval-mode network, and no draws
            if isinstance(module, nn.Dropout):  # from the global RNG (SqueezeNet's dropout
                module.eval()                   # comes before a BatchNorm)
        with torch.no_grad():
            model(batch)
    finally:
        torch.set_num_threads(threads)
        model.float()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1  # back to PyTorch's default for anyone who fine-tunes
    model.eval()


def get(name: str, num_classes: int = 1000, seed: int = 0, tf_padding: bool = False) -> nn.Module:
    """Build zoo model ``name`` in eval mode with deterministic (seeded) weights and BN stats.

    ``tf_padding`` (MobileNetV1 only) pads stride-2 layers as TensorFlow's 'SAME' does, for
    weights trained in TensorFlow (``mbgen.weights_tflite``)."""
    info = describe(name)
    if num_classes < 1:
        raise UserError(f"num_classes must be at least 1, got {num_classes}")
    if tf_padding and info.family != "mobilenet_v1":
        raise UserError(f"TensorFlow padding is available for the MobileNet V1 zoo models, "
                        f"not {name}")
    # Layer constructors and train-mode Dropout draw from the global RNG; our weights come
    # from the seeded generator only, and the caller's random stream is left intact.
    with torch.random.fork_rng(devices=[]):
        if info.family == "mobilenet_v1":
            model: nn.Module = MobileNetV1(info.alpha, num_classes, tf_padding=tf_padding)
        elif info.family.startswith("mobilenet_v3"):
            model = MobileNetV3(info.family.endswith("large"), info.alpha, make_divisible,
                                num_classes)
        elif info.family == "squeezenet1_1":
            model = SqueezeNet(num_classes)
        elif info.family == "shufflenet_v2":
            model = ShuffleNetV2(info.alpha, num_classes)
        else:
            model = MobileNetV2(info.alpha, num_classes)
        generator = torch.Generator().manual_seed(seed)
        _init_weights(model, generator)
        _calibrate_batchnorm(model, info.resolution, generator)
        if isinstance(model, SqueezeNet):
            model.fold_batchnorm()
    return model
