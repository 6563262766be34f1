"""PyTorch frontend: every supported layer gives the numbers PyTorch gives (run through the
float interpreter, an independent numpy implementation), and unsupported input fails clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mbgen import ir, zoo
from mbgen.errors import UserError
from mbgen.float_interp import run_float
from mbgen.frontends.torch_frontend import from_module, load_pt2


def image(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def run_graph(graph: ir.Graph, x: torch.Tensor) -> np.ndarray:
    nhwc = x.permute(0, 2, 3, 1).numpy()
    return run_float(graph, {"input": nhwc})[graph.outputs[0]]


def torch_output_nhwc(module: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        y = module(x)
    return (y.permute(0, 2, 3, 1) if y.dim() == 4 else y).numpy()


def assert_matches_torch(module: nn.Module, x: torch.Tensor, graph: ir.Graph,
                         tol: float = 1e-5) -> None:
    expected = torch_output_nhwc(module, x)
    got = run_graph(graph, x)
    assert got.shape == expected.shape
    scale = max(float(np.abs(expected).max()), 1e-6)
    assert float(np.abs(got - expected).max()) / scale < tol


def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random (non-default) parameters and BN statistics, eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            if tensor.dtype.is_floating_point:
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5
                             if tensor.dim() == 1 else torch.randn(tensor.shape, generator=generator))
    return module.eval()


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return torch.add(x, F.relu6(self.conv(x)))


class FunctionalHead(nn.Module):
    """Functional forms: F.conv2d on a parameter, clamp, x.mean, x.view(x.size(0), -1)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 3, 3, 3))
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = F.conv2d(x, self.weight, None, 2, 1).clamp(min=0.0)
        x = x.mean((2, 3), keepdim=True)
        return self.fc(x.view(x.size(0), -1))


class FlattenSpatial(nn.Module):
    """Linear on a flattened 3x3 map: its weights must be reordered from CHW to HWC."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.fc = nn.Linear(4 * 3 * 3, 7)

    def forward(self, x):
        return self.fc(torch.flatten(F.relu(self.conv(x)), 1))


class GlobalMeanNoKeep(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        return self.fc(torch.mean(F.hardswish(x), dim=[-1, -2]))


LAYER_CASES = {
    "conv_stride_pad_dilation": (nn.Sequential(nn.Conv2d(3, 5, 3, stride=2, padding=2,
                                                         dilation=2)), (1, 3, 11, 9)),
    "conv_asymmetric_kernel": (nn.Sequential(nn.Conv2d(3, 4, (3, 1), stride=(1, 2),
                                                       padding=(1, 0), bias=False)), (1, 3, 8, 8)),
    "conv_same_even_kernel": (nn.Sequential(nn.Conv2d(3, 4, 4, padding="same")), (1, 3, 7, 6)),
    "depthwise": (nn.Sequential(nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4)), (1, 4, 9, 9)),
    "depthwise_multiplier_3": (nn.Sequential(nn.Conv2d(2, 6, 3, padding=1, groups=2)),
                               (1, 2, 6, 6)),
    "batchnorm_eps_from_layer": (nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, eps=0.5)),
                                 (1, 3, 5, 5)),
    "relu_relu6_hardtanh": (nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1),
                                          nn.ReLU6(), nn.Hardtanh(0.0, 6.0)), (1, 3, 4, 4)),
    "hardswish": (nn.Sequential(nn.Conv2d(3, 4, 1), nn.Hardswish()), (1, 3, 4, 4)),
    "avgpool_count_include_pad": (nn.Sequential(nn.AvgPool2d(3, 2, padding=1)), (1, 3, 7, 7)),
    "avgpool_exclude_pad": (nn.Sequential(nn.AvgPool2d(3, 2, padding=1,
                                                       count_include_pad=False)), (1, 3, 7, 7)),
    "avgpool_valid": (nn.Sequential(nn.AvgPool2d((2, 3))), (1, 3, 6, 7)),
    "pool_flatten_dropout_linear": (nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                                  nn.Dropout(0.5), nn.Linear(3, 4)), (1, 3, 5, 5)),
    "identity": (nn.Sequential(nn.Identity(), nn.Conv2d(3, 3, 1)), (1, 3, 4, 4)),
    "residual_add_functional": (Residual(), (1, 4, 6, 6)),
    "functional_head": (FunctionalHead(), (1, 3, 8, 8)),
    "flatten_spatial_linear": (FlattenSpatial(), (1, 3, 7, 7)),
    "mean_without_keepdim": (GlobalMeanNoKeep(), (1, 3, 4, 5)),
}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_matches_pytorch(case: str) -> None:
    module, shape = LAYER_CASES[case]
    module = seeded(module)
    x = image(shape, seed=1) * 4  # wide enough to cross the 0 and 6 clamps
    graph = from_module(module, x, case)
    ir.verify(graph)
    assert graph.inputs == ["input"]
    n, c, h, w = shape
    assert graph.tensors["input"].shape == (1, h, w, c)
    assert all(t.dtype == "float32" for t in graph.tensors.values())
    assert_matches_torch(module, x, graph)


def test_batchnorm_keeps_its_eps_and_dropout_becomes_identity() -> None:
    module = seeded(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, eps=0.125),
                                  nn.Dropout(0.3)))
    graph = from_module(module, image((1, 3, 4, 4)), "bn")
    ops = [n.op for n in graph.nodes]
    assert [type(op) for op in ops] == [ir.Conv2D, ir.BatchNorm, ir.Identity]
    assert ops[1].eps == 0.125


def test_weight_layouts_follow_the_ir_contract() -> None:
    module = seeded(nn.Sequential(nn.Conv2d(3, 8, (3, 5), padding=(1, 2)),
                                  nn.Conv2d(8, 16, 3, padding=1, groups=8)))
    graph = from_module(module, image((1, 3, 6, 6)), "layouts")
    conv, dw = graph.nodes
    assert graph.tensors[conv.inputs[1]].shape == (8, 3, 5, 3)     # O, KH, KW, I
    assert graph.tensors[dw.inputs[1]].shape == (1, 3, 3, 16)      # 1, KH, KW, C*m
    assert dw.op.depth_multiplier == 2
    assert conv.op.padding == ir.Padding(1, 1, 2, 2)


def test_batch_of_several_uses_the_first_image() -> None:
    module = seeded(nn.Sequential(nn.Conv2d(3, 4, 3)))
    x = image((3, 3, 5, 5))
    graph = from_module(module, x, "batch")
    assert graph.tensors["input"].shape == (1, 5, 5, 3)
    assert_matches_torch(module, x[:1], graph)


@pytest.mark.parametrize("name", ["mbv1_0.25_128", "mbv2_0.35_96"])
def test_zoo_model_matches_pytorch(name: str) -> None:
    model = zoo.get(name)
    x = image(zoo.input_shape(name), seed=3)
    graph = from_module(model, x, name)
    assert graph.tensors[graph.outputs[0]].shape == (1, 1000)
    counts = {op: sum(isinstance(n.op, op) for n in graph.nodes)
              for op in (ir.BatchNorm, ir.Add, ir.DepthwiseConv2D)}
    if name.startswith("mbv1"):
        assert counts == {ir.BatchNorm: 27, ir.Add: 0, ir.DepthwiseConv2D: 13}
    else:
        assert counts == {ir.BatchNorm: 52, ir.Add: 10, ir.DepthwiseConv2D: 17}
    assert_matches_torch(model, x, graph, tol=1e-4)


# ----------------------------------------------------------------------------- .pt2


def export_to(tmp_path: Path, module: nn.Module, x: torch.Tensor, decompose: bool = False,
              name: str = "model.pt2") -> Path:
    program = torch.export.export(module, (x,))
    if decompose:
        program = program.run_decompositions()
    path = tmp_path / name
    torch.export.save(program, str(path))
    return path


@pytest.mark.slow  # torch.export of ~150 ops takes 3-15 s depending on machine load
def test_pt2_round_trip_of_a_zoo_model(tmp_path: Path) -> None:
    name = "mbv2_0.35_96"
    model = zoo.get(name)
    x = image(zoo.input_shape(name), seed=4)
    graph = load_pt2(export_to(tmp_path, model, x))
    ir.verify(graph)
    reference = from_module(model, x, name)
    assert [type(n.op) for n in graph.nodes] == [type(n.op) for n in reference.nodes]
    np.testing.assert_allclose(run_graph(graph, x), run_graph(reference, x), rtol=0, atol=1e-5)
    assert_matches_torch(model, x, graph, tol=1e-4)


class TinyNet(nn.Module):
    """Every op of a MobileNetV2 block, small enough to export in a fraction of a second."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU6())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False),
                                   nn.BatchNorm2d(8), nn.ReLU6(),
                                   nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8, eps=1e-3))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                                  nn.Linear(8, 10))

    def forward(self, x):
        x = self.stem(x)
        return self.head(x + self.block(x))


@pytest.mark.parametrize("decompose", [False, True], ids=["as_exported", "core_aten"])
def test_pt2_matches_from_module(tmp_path: Path, decompose: bool) -> None:
    model = seeded(TinyNet())
    x = image((1, 3, 16, 16), seed=5) * 3
    graph = load_pt2(export_to(tmp_path, model, x, decompose))
    ir.verify(graph)
    reference = from_module(model, x, "tiny")
    assert [type(n.op) for n in graph.nodes] == [type(n.op) for n in reference.nodes]
    bn_eps = [n.op.eps for n in graph.nodes if isinstance(n.op, ir.BatchNorm)]
    assert bn_eps == pytest.approx([1e-5, 1e-5, 1e-3])
    np.testing.assert_allclose(run_graph(graph, x), run_graph(reference, x), rtol=0, atol=1e-5)
    assert_matches_torch(model, x, graph)


@pytest.mark.parametrize("case", ["flatten_spatial_linear", "avgpool_count_include_pad",
                                  "functional_head", "depthwise_multiplier_3"])
def test_pt2_layers_match_pytorch(tmp_path: Path, case: str) -> None:
    module, shape = LAYER_CASES[case]
    module = seeded(module)
    x = image(shape, seed=2) * 4
    graph = load_pt2(export_to(tmp_path, module, x, decompose=True))
    assert_matches_torch(module, x, graph)


def test_pt2_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_pt2(tmp_path / "nope.pt2")


def test_pt2_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.pt2"
    path.write_bytes(b"PK\x03\x04 this is not a torch.export archive" * 10)
    with pytest.raises(UserError, match="broken.pt2"):
        load_pt2(path)


# ----------------------------------------------------------------------------- errors


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 3, 1), nn.LeakyReLU())

    def forward(self, x):
        return self.conv(x)


class Leaky(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 3, 1), Block())

    def forward(self, x):
        return self.features(x)


def test_unsupported_module_names_layer_and_type() -> None:
    with pytest.raises(UserError) as info:
        from_module(Leaky().eval(), image((1, 3, 4, 4)), "leaky")
    message = str(info.value)
    assert "'features.1.conv.1'" in message and "nn.LeakyReLU" in message
    assert "Conv2d" in message and "\n" not in message  # one line, lists what is supported


def test_unsupported_op_in_pt2_names_layer_and_op(tmp_path: Path) -> None:
    module = Leaky().eval()
    path = export_to(tmp_path, module, image((1, 3, 4, 4)))
    with pytest.raises(UserError) as info:
        load_pt2(path)
    message = str(info.value)
    assert "features.1.conv.1" in message and "leaky_relu" in message


class Tanhish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return torch.tanh(self.head(x))


def test_unsupported_function_is_named() -> None:
    with pytest.raises(UserError, match="tanh"):
        from_module(Tanhish().eval(), image((1, 3, 4, 4)), "tanh")


@pytest.mark.parametrize("module, pattern", [
    (nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), "groups=2"),
    (nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect")), "padding_mode"),
    (nn.Sequential(nn.AdaptiveAvgPool2d(2)), "1x1"),
    (nn.Sequential(nn.Hardtanh(-1.0, 1.0)), "clamp"),
    (nn.Sequential(nn.Conv2d(3, 3, 1), nn.Upsample(scale_factor=2)), "nn.Upsample"),
])
def test_unsupported_configurations(module: nn.Module, pattern: str) -> None:
    x = image((1, module[0].in_channels if isinstance(module[0], nn.Conv2d) else 3, 6, 6))
    if isinstance(module[0], nn.Conv2d) and module[0].groups == 2:
        x = image((1, 4, 6, 6))
    with pytest.raises(UserError, match=pattern):
        from_module(module.eval(), x, "bad")


def test_training_mode_batchnorm_is_refused() -> None:
    module = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)).train()
    with pytest.raises(UserError, match="eval"):
        from_module(module, image((1, 3, 4, 4)), "train")


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return F.relu(x)
        return x


def test_untraceable_model_suggests_export() -> None:
    with pytest.raises(UserError, match="torch.export"):
        from_module(DataDependent(), image((1, 3, 4, 4)), "dyn")


def test_example_input_must_be_nchw() -> None:
    with pytest.raises(UserError, match="NCHW"):
        from_module(nn.Sequential(nn.ReLU()), torch.zeros(3, 4, 4), "rank3")
