"""The float interpreter against PyTorch on single ops built by hand (NCHW <-> NHWC)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mbgen import ir
from mbgen.float_interp import run_float


def _graph(op, x_shape, out_shape, consts=()):
    tensors = {"x": ir.Tensor("x", x_shape, "float32"), "y": ir.Tensor("y", out_shape, "float32")}
    names = ["x"]
    for name, arr in consts:
        tensors[name] = ir.Tensor(name, arr.shape, "float32", arr)
        names.append(name)
    return ir.Graph("g", tensors, [ir.Node("n", op, names, ["y"])], ["x"], ["y"])


def _nhwc(t):
    return t.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("stride,pad,dil", [(1, 1, 1), (2, 1, 1), (2, 0, 1), (1, 2, 2)])
def test_conv_matches_torch(stride, pad, dil):
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.standard_normal((1, 5, 9, 7)), dtype=torch.float32)
    w = torch.tensor(rng.standard_normal((6, 5, 3, 3)), dtype=torch.float32)
    b = torch.tensor(rng.standard_normal(6), dtype=torch.float32)
    want = _nhwc(F.conv2d(x, w, b, stride=stride, padding=pad, dilation=dil))
    op = ir.Conv2D((stride, stride), ir.Padding(pad, pad, pad, pad), (dil, dil))
    g = _graph(op, (1, 9, 7, 5), want.shape,
               [("w", w.permute(0, 2, 3, 1).numpy()), ("b", b.numpy())])
    got = run_float(g, _nhwc(x))["y"]
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("mult", [1, 3])
def test_depthwise_matches_torch(mult):
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.standard_normal((1, 4, 8, 8)), dtype=torch.float32)
    w = torch.tensor(rng.standard_normal((4 * mult, 1, 3, 3)), dtype=torch.float32)
    want = _nhwc(F.conv2d(x, w, None, stride=2, padding=1, groups=4))
    op = ir.DepthwiseConv2D((2, 2), ir.Padding(1, 1, 1, 1), depth_multiplier=mult)
    w_1hwc = w.permute(1, 2, 3, 0).numpy()  # (1, KH, KW, C*m)
    g = _graph(op, (1, 8, 8, 4), want.shape, [("w", w_1hwc)])
    np.testing.assert_allclose(run_float(g, _nhwc(x))["y"], want, atol=1e-4)


def test_average_pool_excludes_padding_like_tflite():
    x = np.ones((1, 3, 3, 1), dtype=np.float32)
    op = ir.AveragePool2D((3, 3), (1, 1), ir.Padding(1, 1, 1, 1))
    g = _graph(op, (1, 3, 3, 1), (1, 3, 3, 1))
    np.testing.assert_allclose(run_float(g, x)["y"], 1.0)  # zero padding would give 4/9


def test_keep_all_returns_every_activation():
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 1, 4) - 2
    g = _graph(ir.ActivationOp(ir.Activation.RELU), (1, 1, 1, 4), (1, 1, 1, 4))
    values = run_float(g, x, keep_all=True)
    assert set(values) == {"x", "y"}
    np.testing.assert_array_equal(values["y"].ravel(), [0, 0, 0, 1])
