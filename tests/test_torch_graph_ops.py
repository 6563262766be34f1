"""The graph-shaping ops PyTorch users write (torch.cat, chunk / split, channel shuffle,
max pooling with ceil_mode, in-place ReLU, flatten), in one small module: its float IR
matches PyTorch, its int8 C equals the numpy reference and TFLM on the emitted .tflite, and
the .pt2 (both ATen dialects) and ONNX routes give the module route's int8.

The input is 28 x 26 so that ``ceil_mode=True`` really adds a row (14 -> 7 rows instead of
6) and the channel shuffle has 3 groups of 4 (not the zoo's 2).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers_c import build_folder, run
from mbgen.compiler import (CompileOptions, ModelSource, PreparedModel, emit, prepare,
                            to_int8_graph)
from mbgen.errors import UserError
from mbgen.float_interp import run_float
from mbgen.frontends.torch_frontend import from_module, load_pt2
from mbgen.images import quantize_input
from mbgen.quantize.calibration import synthetic_inputs
from mbgen.reference import run_int8

SHAPE = (1, 3, 28, 26)


def _shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w)
    return torch.transpose(x, 1, 2).contiguous().view(n, -1, h, w)


class GraphOps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, 2, 1), nn.BatchNorm2d(12),
                                  nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.branch = nn.Conv2d(6, 6, 3, 1, 1)
        self.side = nn.Conv2d(4, 4, 1)
        self.head = nn.Conv2d(12, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x))
        x1, x2 = x.chunk(2, dim=1)
        x = _shuffle(torch.cat([x1, F.relu(self.branch(x2), inplace=True)], 1), 3)
        a, b = torch.split(x, [4, 8], dim=1)
        x = torch.cat((self.side(a), b[:, ::2], b[:, 1::2]), dim=1)
        x = F.max_pool2d(x, 2, ceil_mode=True)
        x = self.head(x)
        x.relu_()
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def _module() -> nn.Module:
    torch.manual_seed(5)
    module = GraphOps()
    with torch.no_grad():
        bn = module.stem[1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        bn.bias.uniform_(0.5, 1.5)   # most units active after the ReLU, as in a trained net
    return module.eval()


def test_float_graph_matches_pytorch_and_the_shuffle_lowers_to_tflite_form():
    module = _module()
    graph = from_module(module, torch.zeros(SHAPE), "graph_ops")
    ops = [type(n.op).__name__ for n in graph.nodes]
    assert ops.count("Concatenation") == 2 and ops.count("StridedSlice") == 6
    assert ops.count("MaxPool2D") == 2
    i = ops.index("Transpose")
    assert ops[i - 1:i + 2] == ["Reshape", "Transpose", "Reshape"]
    pools = [n for n in graph.nodes if type(n.op).__name__ == "MaxPool2D"]
    assert pools[0].op.padding.bottom == 1 and pools[0].op.padding.right == 0  # ceil_mode
    for x in synthetic_inputs((1, 28, 26, 3), count=2, seed=3):
        with torch.no_grad():
            want = module(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
        got = run_float(graph, x)[graph.outputs[0]]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_int8_c_equals_numpy_and_tflm(tmp_path):
    pytest.importorskip("tflite_micro.python.tflite_micro.runtime",
                        reason="the TFLM reference needs the tflite-micro package")
    from mbgen.tflm import run_tflm

    float_graph = from_module(_module(), torch.zeros(SHAPE), "graph_ops")
    graph = to_int8_graph(float_graph, CompileOptions())
    tflite = tmp_path / "m.tflite"
    prepared = PreparedModel(ModelSource("graph_ops", "pt2", None), float_graph, graph)
    emit(prepared, CompileOptions(target="host", out_dir=tmp_path / "c", emit_tflite=tflite))
    exe = build_folder(tmp_path / "c")
    rng = np.random.default_rng(11)
    for _ in range(3):
        q = rng.integers(-128, 128, graph.tensors[graph.inputs[0]].shape).astype(np.int8)
        got = np.frombuffer(run(exe, q.tobytes()), dtype=np.int8)
        np.testing.assert_array_equal(got, run_int8(graph, q)[graph.outputs[0]].ravel())
        np.testing.assert_array_equal(got, run_tflm(tflite, q).ravel())


def test_channel_shuffle_module_and_function_from_module_and_pt2(tmp_path):
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 12, 1), nn.ChannelShuffle(3), nn.ReLU(),
                                      nn.Conv2d(12, 12, 3, 1, 1))

        def forward(self, x):
            return F.channel_shuffle(self.body(x), 2)

    torch.manual_seed(2)
    module, example = Functional().eval(), torch.zeros(SHAPE)
    program = torch.export.export(module, (example,))
    graphs = {"module": from_module(module, example, "shuffle")}
    for label, exported in (("aten", program), ("core", program.run_decompositions())):
        torch.export.save(exported, str(tmp_path / f"{label}.pt2"))
        graphs[label] = load_pt2(tmp_path / f"{label}.pt2")
    x = synthetic_inputs((1, 28, 26, 3), count=1, seed=8)[0]
    with torch.no_grad():
        want = module(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    for route, graph in graphs.items():
        assert sum(type(n.op).__name__ == "Transpose" for n in graph.nodes) == 2, route
        got = run_float(graph, x)[graph.outputs[0]].transpose(0, 3, 1, 2)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=route)


def test_five_d_views_and_transposes_outside_a_shuffle_are_refused():
    class BadView(nn.Module):
        def forward(self, x):
            return x.view(1, 3, 1, 28, 26).mean(2)

    class BadTranspose(nn.Module):
        def forward(self, x):
            return x.transpose(2, 3)

    with pytest.raises(UserError, match="channel shuffle"):
        from_module(BadView(), torch.zeros(SHAPE), "bad")
    with pytest.raises(UserError, match="transpose"):
        from_module(BadTranspose(), torch.zeros(SHAPE), "bad")


@pytest.mark.slow
def test_pt2_and_onnx_routes_give_the_module_int8(tmp_path):
    module, example = _module(), torch.zeros(SHAPE)
    options = CompileOptions()
    want = to_int8_graph(from_module(module, example, "graph_ops"), options)
    program = torch.export.export(module, (example,))
    files = []
    for label, exported in (("aten", program), ("core", program.run_decompositions())):
        files.append(tmp_path / f"{label}.pt2")
        torch.export.save(exported, str(files[-1]))
    files.append(tmp_path / "model.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, str(files[-1]), opset_version=17, dynamo=False,
                          input_names=["input"])
    qp = want.tensors[want.inputs[0]].quant
    for path in files:
        graph = prepare(str(path), options).graph
        for x in synthetic_inputs((1, 28, 26, 3), count=2, seed=4):
            q = quantize_input(x, qp.scalar_scale, qp.scalar_zero_point)
            np.testing.assert_array_equal(run_int8(graph, q)[graph.outputs[0]],
                                          run_int8(want, q)[want.outputs[0]],
                                          err_msg=f"{path.name} != module route")
