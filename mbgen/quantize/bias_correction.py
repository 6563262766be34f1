"""Bias correction (Nagel et al. 2019, "Data-free quantization", the analytic form): rounding
the weights shifts each output channel's mean by ``(W_q - W) . E[x]``; subtracting that shift
from the float bias before quantising removes the systematic part of the error.

``E[x]`` is the per-channel mean of the layer's input over the calibration set (float graph).
Padding is ignored (a border tap sees a zero in both graphs, so the shift is slightly
over-estimated at the borders). Layers without a bias of their own are left alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mbgen import ir
from mbgen.float_interp import run_float
from mbgen.quantize.float_rewrites import (
    conv_like_nodes,
    fake_quantized,
    has_private_bias,
    set_constant,
    weight_axis,
)


def input_means(graph: ir.Graph, calib_inputs: Sequence[np.ndarray], names: Sequence[str]
                ) -> dict[str, np.ndarray]:
    """Per-channel (last axis) mean of each named tensor over the calibration inputs."""
    sums = {name: 0.0 for name in names}
    for sample in calib_inputs:
        values = run_float(graph, {graph.inputs[0]: np.asarray(sample, np.float32)},
                           keep_all=True)
        for name in names:
            v = values[name].astype(np.float64)
            sums[name] = sums[name] + v.reshape(-1, v.shape[-1]).mean(axis=0)
    return {name: total / len(calib_inputs) for name, total in sums.items()}


def output_shift(node: ir.Node, error: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Mean output change per channel from a weight error ``error`` on inputs of mean ``mean``."""
    if isinstance(node.op, ir.Conv2D):           # (O, KH, KW, I)
        return np.einsum("okhi,i->o", error, mean)
    if isinstance(node.op, ir.DepthwiseConv2D):  # (1, KH, KW, C*m); input channel = c // m
        per_channel = error.sum(axis=(0, 1, 2))
        return per_channel * np.repeat(mean, node.op.depth_multiplier)
    return error @ mean                          # FullyConnected (O, I)


def correct_biases(graph: ir.Graph, calib_inputs: Sequence[np.ndarray],
                   original: ir.Graph | None = None) -> ir.Graph:
    """A copy of the float ``graph`` with each conv-like bias corrected for weight rounding.

    ``original``: the graph whose weights are the true ones when ``graph``'s were already
    moved onto the int8 grid (AdaRound); by default ``graph`` itself."""
    original = original or graph
    nodes = [n for n in conv_like_nodes(graph) if has_private_bias(graph, n)]
    means = input_means(graph, calib_inputs, sorted({n.inputs[0] for n in nodes}))
    corrected = graph.copy()
    for node in nodes:
        weights = graph.tensors[node.inputs[1]].data.astype(np.float64)
        true = original.tensors[node.inputs[1]].data.astype(np.float64)
        error = fake_quantized(weights, weight_axis(node)) - true
        bias = graph.tensors[node.inputs[2]].data.astype(np.float64)
        set_constant(corrected, node.inputs[2],
                     bias - output_shift(node, error, means[node.inputs[0]]))
    return corrected
