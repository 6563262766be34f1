"""The torch frontend takes squeeze-excitation code as people write it: hard sigmoid (module,
functional, in place), sigmoid, ``x * s`` / ``torch.mul`` / ``mul_`` with a (1, C, 1, 1)
scale, constant scales (``x * 0.5``, ``x / 6``, scale weights), functional ReLU forms,
adaptive pooling to 1 or (1, 1), flatten / view / reshape.

Each graph runs through the float interpreter (numpy) and must give PyTorch's numbers, from
the nn.Module (torch.fx) and from torch.export (.pt2, which keeps the ATen ops as written).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mbgen import ir
from mbgen.errors import UserError
from mbgen.frontends.hard_sigmoid import hard_sigmoid_layers
from mbgen.float_interp import run_float
from mbgen.frontends.torch_frontend import from_module, load_pt2
from test_torch_frontend import assert_matches_torch, export_to, image


class EveryForm(nn.Module):
    """Three squeeze-excitations spelled three ways, on one small feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Conv2d(8, 4, 1)
        self.fc2 = nn.Conv2d(4, 8, 1)
        self.gate = nn.Hardsigmoid()
        self.lin1 = nn.Linear(8, 4)
        self.lin2 = nn.Linear(4, 8)
        self.act = nn.Hardswish(inplace=True)

    def forward(self, x):
        x = F.relu6(self.stem(x))
        # torchvision: pool -> conv -> relu -> conv -> hardsigmoid -> scale * x
        s = F.adaptive_avg_pool2d(x, 1)
        s = F.hardsigmoid(self.fc2(F.relu(self.fc1(s), inplace=True)), inplace=True)
        x = s * x
        # module gate, torch.mul with the feature map first, in-place ReLU spellings
        s = self.gate(self.fc2(torch.relu_(self.fc1(F.adaptive_avg_pool2d(x, (1, 1))))))
        x = torch.mul(x, s)
        x = self.act(x)
        # Linear squeeze-excitation: mean -> flatten -> linear -> view -> in-place multiply
        s = torch.flatten(x.mean((2, 3), keepdim=True), 1)
        s = torch.sigmoid(self.lin2(F.relu(self.lin1(s)).relu_()))
        x = x.clone()
        x.mul_(s.view(1, 8, 1, 1))
        x *= torch.sigmoid(F.hardswish(x))
        y = F.hardsigmoid(x.reshape(1, -1).reshape(1, 8, 5, 5))
        return F.hardsigmoid(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))  # flat (1, N)


def _module() -> nn.Module:
    torch.manual_seed(5)
    return EveryForm().eval()


def test_every_form_from_the_module_matches_pytorch() -> None:
    module, x = _module(), image((1, 3, 5, 5), seed=3) * 3
    graph = from_module(module, x, "forms")
    ops = [type(n.op) for n in graph.nodes]
    assert ops.count(ir.Mul) == 4 and ops.count(ir.Logistic) == 2
    assert_matches_torch(module, x, graph)


@pytest.mark.parametrize("decompose", [False, True], ids=["as_exported", "core_aten"])
def test_every_form_from_pt2_matches_pytorch(tmp_path, decompose) -> None:
    """As exported (aten.hardsigmoid_, aten.mul_, aten.relu_ ... kept) and decomposed to core
    ATen (hard sigmoid / hard swish spelled add, clamp, clamp, [mul,] div)."""
    module, x = _module(), image((1, 3, 5, 5), seed=3) * 3
    graph = load_pt2(export_to(tmp_path, module, x, decompose))
    ops = [type(n.op) for n in graph.nodes]
    assert ops.count(ir.HardSwish) == 2 and ops.count(ir.DepthwiseConv2D) == 8
    assert_matches_torch(module, x, graph)


class HSigmoid(nn.Module):
    """Hand-written MobileNetV3 code (e.g. d-li14/mobilenetv3.pytorch) spells hard sigmoid
    as relu6(x + 3) / 6 and hard swish as x * h_sigmoid(x)."""

    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU6(inplace=True)

    def forward(self, x):
        return self.relu(x + 3) / 6


class HandWritten(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.h_sigmoid = HSigmoid()

    def forward(self, x):
        x = x * self.h_sigmoid(x)                                  # hard swish
        s = F.relu6(F.adaptive_avg_pool2d(x, 1) + 3.0) / 6.0       # hard sigmoid (gate)
        y = x * F.relu6(x + 3) / 6                                 # hard swish
        y = F.hardsigmoid(y) * y                                   # hard swish
        return y * (torch.clamp(3 + s, 0, 6) * (1 / 6))           # gate applied


def test_hand_written_hard_activations_become_ir_ops() -> None:
    module, x = HandWritten(), image((1, 3, 4, 4), seed=6) * 4
    graph = from_module(module, x, "hand")
    assert [ir.op_name(n.op) for n in graph.nodes] == [
        "HardSwish", "Mean", "HardSwish", "HardSwish", "DepthwiseConv2D", "DepthwiseConv2D",
        "DepthwiseConv2D", "DepthwiseConv2D", "Mul"]
    assert_matches_torch(module, x, graph)


def test_hard_sigmoid_layers_compute_the_clamp() -> None:
    """The shared lowering (torch and ONNX): clamp(alpha x + beta, 0, 1), 4-D and flat."""
    values = np.linspace(-5, 5, 24, dtype=np.float32)
    for shape, alpha, beta in (((1, 2, 3, 4), 1 / 6, 0.5), ((1, 24), 0.2, 0.5),
                               ((1, 4, 6), 0.3, -0.1)):
        x = ir.Tensor("x", shape, "float32")
        tensors, nodes = hard_sigmoid_layers("hs", x, "y", alpha, beta)
        graph = ir.Graph("hs", {t.name: t for t in [x] + tensors}, nodes, ["x"], ["y"])
        ir.verify(graph)
        got = run_float(graph, {"x": values.reshape(shape)})["y"]
        np.testing.assert_allclose(got.ravel(), np.clip(alpha * values + beta, 0, 1),
                                   atol=1e-6)


class ConstantScales(nn.Module):
    """Scale layers and arithmetic on constants: x * 0.5, x / 6, a (1, C, 1, 1) buffer, a
    (C, 1, 1) and a (H, W) weight, and a scalar times a flat vector."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("gain", torch.linspace(0.5, 2.0, 4).reshape(1, 4, 1, 1))
        self.per_channel = nn.Parameter(torch.linspace(-1.0, 1.0, 4).reshape(4, 1, 1))
        self.per_pixel = nn.Parameter(torch.linspace(0.2, 1.2, 16).reshape(4, 4))

    def forward(self, x):
        x = torch.mul(x * 0.5, self.gain) / 6
        x = self.per_pixel * (self.per_channel * x)
        return 3.0 * torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def test_constant_scales_from_module_and_pt2_match_pytorch(tmp_path) -> None:
    module, x = ConstantScales().eval(), image((1, 4, 4, 4), seed=4)
    graph = from_module(module, x, "scales")
    assert [type(n.op) for n in graph.nodes].count(ir.Mul) == 6
    assert_matches_torch(module, x, graph)
    assert_matches_torch(module, x, load_pt2(export_to(tmp_path, module, x)))


class RowScale(nn.Module):
    def forward(self, x):
        return x * torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # (1, C) scales the W axis


class FlatScale(nn.Module):
    def forward(self, x):  # CHW-ordered weights on an HWC-ordered flat vector
        return torch.flatten(x, 1) * torch.linspace(0, 1, 64)


class Quotient(nn.Module):
    def forward(self, x):
        return x / F.adaptive_avg_pool2d(x, 1)


class Shifted(nn.Module):
    def forward(self, x):
        return F.relu6(x + 3) * 2  # not / 6: not a hard sigmoid


@pytest.mark.parametrize("module, pattern", [
    (RowScale(), r"multiplication of shapes \[1, 4, 4, 4\] and \[1, 4\]"),
    (FlatScale(), r"multiplication by a constant of shape \[64\]"),
    (Quotient(), r"division other than of a tensor by a constant"),
    (Shifted(), r"x \+ 3 only inside relu6\(x \+ 3\) / 6"),
])
def test_unsupported_multiplications_are_named(module, pattern) -> None:
    with pytest.raises(UserError, match=pattern):
        from_module(module, image((1, 4, 4, 4)), "m")
