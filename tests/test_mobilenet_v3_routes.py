"""MobileNetV3 written the way PyTorch users write it, through all three model routes.

The module below is torchvision's MobileNetV3-Small layout, spelled with the functional and
in-place forms user code has (F.adaptive_avg_pool2d(x, (1, 1)), F.relu(inplace=True),
F.hardsigmoid(inplace=True), ``scale * x``, nn.Hardswish, torch.flatten, Dropout). It must
compile from the nn.Module (torch.fx), from a torch.export .pt2 and from torch.onnx's
export; the three int8 graphs must agree (same tensors in, outputs within 2 LSB), and the
.pt2 route must track the PyTorch float model (cosine >= 0.98, as for the zoo).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mbgen.compiler import CompileOptions, prepare, to_int8_graph
from mbgen.frontends.torch_frontend import from_module, load_pt2
from mbgen.images import quantize_input
from mbgen.quantize.calibration import synthetic_inputs
from mbgen.reference import run_int8
from mbgen.verify import cosine, dequantize

# torch.export, torch.onnx.export and three quantisations: about 8 s on a quiet machine
pytestmark = pytest.mark.slow

RES = 96
MIN_COSINE = 0.98


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x):
        scale = F.adaptive_avg_pool2d(x, (1, 1))
        scale = F.relu(self.fc1(scale), inplace=True)
        scale = F.hardsigmoid(self.fc2(scale), inplace=True)
        return scale * x


def _conv(cin, cout, k, stride, act, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), act() if act else nn.Identity())


class InvertedResidual(nn.Module):
    def __init__(self, cin, k, exp, cout, se, hs, stride):
        super().__init__()
        act = (lambda: nn.Hardswish(inplace=True)) if hs else (lambda: nn.ReLU(inplace=True))
        layers = [] if exp == cin else [_conv(cin, exp, 1, 1, act)]
        layers.append(_conv(exp, exp, k, stride, act, groups=exp))
        if se:
            layers.append(SqueezeExcitation(exp, _make_divisible(exp // 4)))
        layers.append(_conv(exp, cout, 1, 1, None))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x):
        result = self.block(x)
        if self.use_res_connect:
            result += x
        return result


class TorchvisionStyleMobileNetV3Small(nn.Module):
    SETTING = [(3, 16, 16, True, False, 2), (3, 72, 24, False, False, 2),
               (3, 88, 24, False, False, 1), (5, 96, 40, True, True, 2),
               (5, 240, 40, True, True, 1), (5, 120, 48, True, True, 1),
               (5, 288, 96, True, True, 2), (5, 576, 96, True, True, 1)]

    def __init__(self, num_classes: int = 100) -> None:
        super().__init__()
        layers = [_conv(3, 16, 3, 2, nn.Hardswish)]
        cin = 16
        for k, exp, cout, se, hs, stride in self.SETTING:
            layers.append(InvertedResidual(cin, k, exp, cout, se, hs, stride))
            cin = cout
        layers.append(_conv(cin, 6 * cin, 1, 1, nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(6 * cin, 256), nn.Hardswish(inplace=True),
                                        nn.Dropout(p=0.2, inplace=True),
                                        nn.Linear(256, num_classes))

    def forward(self, x):
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def _trained_looking(model: nn.Module) -> nn.Module:
    """Seeded weights, BN biases shifted positive and BN statistics from a synthetic batch
    (as the zoo does, so the random network is not chaotic)."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(1.0 + 0.5 * torch.randn(m.num_features, generator=gen))
                m.momentum = None
        model.train()
        model(torch.rand((4, 3, RES, RES), generator=gen) * 2 - 1)
    return model.eval()


@pytest.fixture(scope="module")
def routes(tmp_path_factory):
    torch.manual_seed(0)
    module = _trained_looking(TorchvisionStyleMobileNetV3Small())
    example = torch.zeros(1, 3, RES, RES)
    folder = tmp_path_factory.mktemp("v3_routes")
    pt2 = folder / "v3.pt2"
    torch.export.save(torch.export.export(module, (example,)), str(pt2))
    onnx_path = folder / "v3.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, str(onnx_path), opset_version=17, dynamo=False,
                          input_names=["input"], training=torch.onnx.TrainingMode.PRESERVE)
    options = CompileOptions()
    graphs = {
        "module": to_int8_graph(from_module(module, example, "v3"), options),
        "pt2": to_int8_graph(load_pt2(pt2), options),
        "onnx": prepare(str(onnx_path), options).graph,
    }
    return module, graphs


def test_pt2_file_holds_the_inplace_ops_users_write(routes, tmp_path):
    """The export keeps aten.hardsigmoid_/relu_/hardswish_ (the issue's refusal) and mul."""
    module, _ = routes
    program = torch.export.export(module, (torch.zeros(1, 3, RES, RES),))
    names = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert {"aten.hardsigmoid_.default", "aten.mul.Tensor"} <= names, names


def test_three_routes_agree_and_pt2_tracks_pytorch(routes):
    module, graphs = routes
    reference = graphs["pt2"]
    qp = reference.tensors[reference.inputs[0]].quant
    for route, graph in graphs.items():
        other = graph.tensors[graph.inputs[0]].quant
        assert (other.scalar_scale, other.scalar_zero_point) == \
            (qp.scalar_scale, qp.scalar_zero_point), route
    worst = 0
    for i, x in enumerate(synthetic_inputs(reference.tensors[reference.inputs[0]].shape,
                                           count=3, seed=41)):
        q = quantize_input(x, qp.scalar_scale, qp.scalar_zero_point)
        outs = {r: run_int8(g, q)[g.outputs[0]].ravel().astype(np.int32)
                for r, g in graphs.items()}
        for route in ("module", "onnx"):
            worst = max(worst, int(np.abs(outs[route] - outs["pt2"]).max()))
        with torch.no_grad():
            want = module(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy().ravel()
        got = dequantize(reference, outs["pt2"].astype(np.int8))
        cos = cosine(got, want)
        print(f"input {i}: .pt2 route cosine {cos:.4f}, top-1 "
              f"{'same' if np.argmax(got) == np.argmax(want) else 'differs'}")
        assert cos >= MIN_COSINE
    print(f"largest difference between the module/ONNX and .pt2 int8 outputs: {worst} LSB")
    assert worst <= 2
