"""A numpy interpreter for float IR graphs (before quantisation).

Used to check passes against PyTorch (folding must not change the maths) and to collect the
activation ranges for calibration. Computes in float64 so that it is a tighter reference than
the float32 frameworks it is compared with.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from mbgen import ir, reference_graph_ops


def _pad_nhwc(x: np.ndarray, p: ir.Padding, value: float = 0.0) -> np.ndarray:
    return np.pad(x, ((0, 0), (p.top, p.bottom), (p.left, p.right), (0, 0)),
                  constant_values=value)


def _windows(x: np.ndarray, kh: int, kw: int, stride: tuple[int, int],
             dilation: tuple[int, int]) -> np.ndarray:
    """(N, OH, OW, KH, KW, C) view of every receptive field of a padded NHWC tensor."""
    n, h, w, c = x.shape
    sh, sw = stride
    dh, dw = dilation
    oh = (h - (kh - 1) * dh - 1) // sh + 1
    ow = (w - (kw - 1) * dw - 1) // sw + 1
    s = x.strides
    return np.lib.stride_tricks.as_strided(
        x, shape=(n, oh, ow, kh, kw, c),
        strides=(s[0], s[1] * sh, s[2] * sw, s[1] * dh, s[2] * dw, s[3]), writeable=False)


def _activate(x: np.ndarray, activation: ir.Activation) -> np.ndarray:
    if activation is ir.Activation.RELU:
        return np.maximum(x, 0.0)
    if activation is ir.Activation.RELU6:
        return np.clip(x, 0.0, 6.0)
    return x


def _bias(graph: ir.Graph, node: ir.Node, channels: int) -> np.ndarray:
    if len(node.inputs) > 2 and node.inputs[2]:
        return graph.tensors[node.inputs[2]].data.astype(np.float64)
    return np.zeros(channels)


def _conv(graph: ir.Graph, node: ir.Node, x: np.ndarray) -> np.ndarray:
    op: ir.Conv2D = node.op
    w = graph.tensors[node.inputs[1]].data.astype(np.float64)  # O, KH, KW, I
    patches = _windows(_pad_nhwc(x, op.padding), w.shape[1], w.shape[2], op.stride, op.dilation)
    y = np.einsum("nhwijc,oijc->nhwo", patches, w, optimize=True)
    return _activate(y + _bias(graph, node, w.shape[0]), op.activation)


def _depthwise(graph: ir.Graph, node: ir.Node, x: np.ndarray) -> np.ndarray:
    op: ir.DepthwiseConv2D = node.op
    w = graph.tensors[node.inputs[1]].data.astype(np.float64)[0]  # KH, KW, C*m
    if op.depth_multiplier > 1:
        x = np.repeat(x, op.depth_multiplier, axis=3)  # output channel c*m+j reads input c
    patches = _windows(_pad_nhwc(x, op.padding), w.shape[0], w.shape[1], op.stride, op.dilation)
    y = np.einsum("nhwijc,ijc->nhwc", patches, w, optimize=True)
    return _activate(y + _bias(graph, node, w.shape[2]), op.activation)


def _fully_connected(graph: ir.Graph, node: ir.Node, x: np.ndarray) -> np.ndarray:
    w = graph.tensors[node.inputs[1]].data.astype(np.float64)  # O, I
    y = x.reshape(1, -1) @ w.T + _bias(graph, node, w.shape[0])
    return _activate(y, node.op.activation)


def _average_pool(node: ir.Node, x: np.ndarray) -> np.ndarray:
    op: ir.AveragePool2D = node.op
    kh, kw = op.kernel
    sums = _windows(_pad_nhwc(x, op.padding), kh, kw, op.stride, (1, 1)).sum(axis=(3, 4))
    # TFLite divides by the number of real (unpadded) pixels under the window.
    ones = np.ones((1,) + x.shape[1:3] + (1,))
    counts = _windows(_pad_nhwc(ones, op.padding), kh, kw, op.stride, (1, 1)).sum(axis=(3, 4))
    return _activate(sums / counts, op.activation)


def _softmax(node: ir.Node, x: np.ndarray) -> np.ndarray:
    z = node.op.beta * (x - x.max(axis=-1, keepdims=True))
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    def run(graph: ir.Graph, node: ir.Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _activate(fn(a, b), node.op.activation)
    return run


def _batchnorm(graph: ir.Graph, node: ir.Node, x: np.ndarray) -> np.ndarray:
    gamma, beta, mean, var = (graph.tensors[n].data.astype(np.float64) for n in node.inputs[1:5])
    return (x - mean) / np.sqrt(var + node.op.eps) * gamma + beta


def _run_node(graph: ir.Graph, node: ir.Node, values: dict[str, np.ndarray]) -> np.ndarray:
    op = node.op
    x = values.get(node.inputs[0])  # None: a constant (only Add/Mul take one first)
    out_shape = graph.tensors[node.outputs[0]].shape
    if isinstance(op, ir.Conv2D):
        return _conv(graph, node, x)
    if isinstance(op, ir.DepthwiseConv2D):
        return _depthwise(graph, node, x)
    if isinstance(op, ir.FullyConnected):
        return _fully_connected(graph, node, x)
    if isinstance(op, (ir.Add, ir.Mul)):  # either operand may be a constant
        a, b = (values[n] if n in values else graph.tensors[n].data.astype(np.float64)
                for n in node.inputs[:2])
        return _binary(np.add if isinstance(op, ir.Add) else np.multiply)(graph, node, a, b)
    if isinstance(op, ir.AveragePool2D):
        return _average_pool(node, x)
    if isinstance(op, ir.Mean):
        return x.mean(axis=op.axes, keepdims=op.keep_dims).reshape(out_shape)
    if isinstance(op, (ir.Reshape, ir.Identity, ir.Quantize, ir.Dequantize)):
        return x.reshape(out_shape)
    if isinstance(op, ir.Pad):
        return _pad_nhwc(x, op.padding)
    if isinstance(op, ir.Transpose):
        return np.ascontiguousarray(np.transpose(x, op.perm))
    if isinstance(op, ir.Softmax):
        return _softmax(node, x)
    if isinstance(op, ir.ActivationOp):
        return _activate(x, op.activation)
    if isinstance(op, ir.HardSwish):
        return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0
    if isinstance(op, ir.Logistic):
        return 1.0 / (1.0 + np.exp(-x))
    if isinstance(op, ir.BatchNorm):
        return _batchnorm(graph, node, x)
    if isinstance(op, ir.Concatenation):
        return np.concatenate([values[n] for n in node.inputs], axis=op.axis)
    if isinstance(op, ir.MaxPool2D):
        return _activate(reference_graph_ops.window_max(x, op, -np.inf), op.activation)
    if isinstance(op, ir.StridedSlice):
        return reference_graph_ops.slice_of(x, op, out_shape)
    raise NotImplementedError(f"float interpreter has no {ir.op_name(op)} (node {node.name})")


def _as_input_dict(graph: ir.Graph, inputs) -> dict[str, np.ndarray]:
    if isinstance(inputs, np.ndarray):
        if len(graph.inputs) != 1:
            raise ValueError("graph has several inputs: pass a dict")
        inputs = {graph.inputs[0]: inputs}
    out = {}
    for name in graph.inputs:
        arr = np.asarray(inputs[name], dtype=np.float64)
        want = graph.tensors[name].shape
        if arr.shape != tuple(want):
            arr = arr.reshape(want)
        out[name] = arr
    return out


def run_float(graph: ir.Graph, inputs, keep_all: bool = False) -> dict[str, np.ndarray]:
    """Run a float graph on NHWC inputs; return the outputs (every activation if keep_all).

    ``inputs`` is a dict name -> array, or one array for a single-input graph. Results are
    float32 arrays shaped as their tensors.
    """
    values = _as_input_dict(graph, inputs)
    for node in graph.nodes:
        result = _run_node(graph, node, values)
        out = graph.tensors[node.outputs[0]]
        values[node.outputs[0]] = np.asarray(result, dtype=np.float64).reshape(out.shape)
    names = [n for n in values] if keep_all else list(graph.outputs)
    return {n: values[n].astype(np.float32) for n in names}
