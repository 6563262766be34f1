"""numpy reference of onnxruntime's int8 arithmetic (its CPU provider, MLAS).

``mbgen.reference.run_int8`` calls these kernels for nodes whose ``requantization`` is
``ONNXRUNTIME``. Accumulation is exact int32, as in every MLAS path; requantisation is
float32: ``float(acc) * scale`` (one rounding), clamped to the int8 range minus the zero
point, rounded half to even, plus the zero point. Written from the MLAS semantics described
in ``mbgen/quantize/onnxruntime_params.py``; it shares no code with the C kernels.
"""

from __future__ import annotations

import numpy as np

from mbgen import ir
from mbgen.quantize import onnxruntime_params as ort
from mbgen.reference import Kernel, _pad_spatial, _windows, wrap_int32

INT8_MIN, INT8_MAX = -128, 127
_F32 = np.float32


def requantize(acc: np.ndarray, scales: np.ndarray, zero_point: int) -> np.ndarray:
    """MLAS's requantisation of int32 accumulators (scales broadcast on the last axis)."""
    value = wrap_int32(acc).astype(np.float32) * np.asarray(scales, dtype=np.float32)
    value = np.clip(value, _F32(INT8_MIN - zero_point), _F32(INT8_MAX - zero_point))
    return (np.rint(value).astype(np.int64) + zero_point).astype(np.int8)


def quantize_linear(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """QuantizeLinear to int8: float32 division, clamp, round half to even, zero point."""
    return ort.quantize_linear_int8(x, _F32(scale), zero_point)


def dequantize_linear(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """DequantizeLinear: float32(q - zero_point) * scale."""
    return (np.asarray(q, dtype=np.int32) - zero_point).astype(np.float32) * _F32(scale)


def _weights(graph: ir.Graph, node: ir.Node) -> np.ndarray:
    return graph.tensors[node.inputs[1]].data.astype(np.int64)


def _bias(graph: ir.Graph, node: ir.Node, channels: int) -> np.ndarray:
    if len(node.inputs) > 2 and node.inputs[2]:
        return graph.tensors[node.inputs[2]].data.astype(np.int64).reshape(channels)
    return np.zeros(channels, dtype=np.int64)


def _conv2d(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    op: ir.Conv2D = node.op
    q = ort.conv_quant(graph, node)
    weight = _weights(graph, node).astype(np.float64)              # O, KH, KW, I
    out_c, kh, kw, in_c = weight.shape
    # Padded pixels hold the input zero point (MLAS pads with it): they add 0 after the shift.
    x = _pad_spatial(args[0].astype(np.float64) - q.input_zero_point, op.padding, 0.0)
    windows = _windows(x, (kh, kw), op.stride, op.dilation)
    columns = windows.reshape(-1, kh * kw * in_c)
    # Exact in float64: every partial sum is an integer far below 2**53 for these sizes.
    acc = (columns @ weight.reshape(out_c, -1).T).astype(np.int64)
    acc = acc.reshape(windows.shape[:3] + (out_c,)) + _bias(graph, node, out_c)
    return requantize(acc, q.scales, q.output_zero_point)


def _depthwise_conv2d(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    op: ir.DepthwiseConv2D = node.op
    q = ort.conv_quant(graph, node)
    weight = _weights(graph, node)[0]                               # KH, KW, C*m
    kh, kw, out_c = weight.shape
    x = args[0].astype(np.int64) - q.input_zero_point
    x = np.repeat(x, op.depth_multiplier, axis=3)
    if x.shape[3] != out_c:
        raise ValueError(f"{node.name}: depthwise weights have {out_c} channels, input x "
                         f"multiplier gives {x.shape[3]}")
    x = _pad_spatial(x, op.padding, 0)
    windows = _windows(x, (kh, kw), op.stride, op.dilation)          # N, OH, OW, KH, KW, C
    acc = np.einsum("nhwijc,ijc->nhwc", windows, weight) + _bias(graph, node, out_c)
    return requantize(acc, q.scales, q.output_zero_point)


def _fully_connected(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    q = ort.conv_quant(graph, node)
    weight = _weights(graph, node)                                  # O, I
    out_c, depth = weight.shape
    x = args[0].astype(np.int64).reshape(-1, depth) - q.input_zero_point
    acc = x @ weight.T + _bias(graph, node, out_c)
    return requantize(acc, q.scales, q.output_zero_point)


def _add(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    """QLinearAdd: fma(a, ratio_a, fma(b, ratio_b, fixed)) in float32 on the stored values,
    then round to even."""
    q = ort.add_quant(graph, node)
    stored_a, stored_b = (x.astype(np.float64) + q.offset for x in args)  # uint8: + 128
    value = _fma32(stored_a, q.ratio_a, _fma32(stored_b, q.ratio_b, q.fixed))
    # _mm256_cvtps_epi32 then saturating packs: round to even, clamp to the storage range.
    stored = np.clip(np.rint(value).astype(np.int64), INT8_MIN + q.offset, INT8_MAX + q.offset)
    return (stored - q.offset).astype(np.int8)


def _fma32(x: np.ndarray, y: np.float32, z: np.ndarray | np.float32) -> np.ndarray:
    """float32 fused multiply-add computed exactly in float64, then rounded once."""
    return (x * np.float64(y) + np.asarray(z, dtype=np.float64)).astype(np.float32)


def _mul(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    """QLinearMul: int32 product of the shifted inputs, float32 scale, then the zero point
    added in float32 before rounding half to even (b may broadcast per channel)."""
    q = ort.mul_quant(graph, node)
    product = (args[0].astype(np.int64) - q.a_zero_point) * (args[1].astype(np.int64)
                                                            - q.b_zero_point)
    value = product.astype(np.float32) * q.ratio + _F32(q.stored_zero_point)
    stored = np.clip(np.rint(value), INT8_MIN + q.offset, INT8_MAX + q.offset)
    return (stored - q.offset).astype(np.int8).reshape(graph.tensors[node.outputs[0]].shape)


def _mean(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    q = ort.mean_quant(graph, node)
    acc = args[0].astype(np.int64).sum(axis=(1, 2)) + q.bias
    out = requantize(acc, np.array([q.scale], dtype=np.float32), q.output_zero_point)
    return out.reshape(graph.tensors[node.outputs[0]].shape)


def _average_pool2d(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    """QLinearAveragePool: float32 window sums in row order (no pairwise summation)."""
    op: ir.AveragePool2D = node.op
    q = ort.average_pool_quant(graph, node)
    real = q.table[args[0].astype(np.int64) + 128]                 # (1, H, W, C) float32
    _, height, width, _ = real.shape
    out_shape = graph.tensors[node.outputs[0]].shape
    out = np.empty(out_shape, dtype=np.int8)
    (kh, kw), (sh, sw), pad = op.kernel, op.stride, op.padding
    for oy in range(out_shape[1]):
        y0 = oy * sh - pad.top
        ys = range(max(y0, 0), min(y0 + kh, height))
        for ox in range(out_shape[2]):
            x0 = ox * sw - pad.left
            xs = range(max(x0, 0), min(x0 + kw, width))
            total = np.zeros(out_shape[3], dtype=np.float32)
            for y in ys:
                for x in xs:
                    total = total + real[0, y, x]
            count = _F32(len(ys) * len(xs))
            value = (total / count) / q.y_scale + _F32(q.stored_zero_point)
            stored = np.clip(np.rint(value), INT8_MIN + q.offset, INT8_MAX + q.offset)
            out[0, oy, ox] = (stored - q.offset).astype(np.int8)
    return out


def _dequantized_activation(graph: ir.Graph, node: ir.Node,
                            args: list[np.ndarray]) -> np.ndarray:
    """DequantizeLinear -> HardSigmoid / HardSwish -> QuantizeLinear, code by code."""
    return ort.activation_table(graph, node)[args[0].astype(np.int64) + 128]


def eigen_sum(row: np.ndarray, misalignment: int) -> np.float32:
    """A float32 row summed in Eigen's order (see ort.EigenSumOrder)."""
    order = ort.eigen_sum_order(row.size, misalignment)
    if order.packets == 0:
        total = row[0]
        for value in row[1:]:
            total = _F32(total + value)
        return total
    p, head = ort.EIGEN_PACKET, order.head
    packets = row[head:head + order.packets * p].reshape(order.packets, p)
    r0 = packets[0].copy()
    if order.packets > 1:
        r1 = packets[1].copy()
        pairs = order.packets // 2
        for k in range(1, pairs):
            r0 = (r0 + packets[2 * k]).astype(np.float32)
            r1 = (r1 + packets[2 * k + 1]).astype(np.float32)
        r0 = (r0 + r1).astype(np.float32)
        if order.packets % 2:
            r0 = (r0 + packets[-1]).astype(np.float32)
    total = _F32(_F32(r0[0] + r0[2]) + _F32(r0[1] + r0[3]))
    for value in np.concatenate([row[:head], row[head + order.packets * p:]]):
        total = _F32(total + value)
    return total


def _dequantized_mean(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    """DequantizeLinear -> ReduceMean (H, W) -> QuantizeLinear in onnxruntime's float32."""
    q = ort.dequantized_mean_quant(graph, node)
    real = q.table[args[0].astype(np.int64) + 128]               # (1, H, W, C) float32
    rows = real.reshape(q.count, -1).T                             # NCHW rows
    means = np.array([eigen_sum(row, c * q.count) / _F32(q.count)
                      for c, row in enumerate(rows)], dtype=np.float32)
    out = quantize_linear(means, q.y_scale, q.output_zero_point)
    return out.reshape(graph.tensors[node.outputs[0]].shape)


def _quantize(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    if graph.tensors[node.inputs[0]].dtype != "float32":
        raise ValueError(f"{node.name}: onnxruntime QuantizeLinear here takes float input")
    scale, zero_point = ort.quantize_params(graph, node)
    return quantize_linear(args[0], scale, zero_point)


KERNELS: dict[type, Kernel] = {
    ir.Conv2D: _conv2d,
    ir.DepthwiseConv2D: _depthwise_conv2d,
    ir.FullyConnected: _fully_connected,
    ir.Add: _add,
    ir.Mul: _mul,
    ir.Mean: _mean,
    ir.AveragePool2D: _average_pool2d,
    ir.Quantize: _quantize,
    ir.DequantizedActivation: _dequantized_activation,
    ir.DequantizedMean: _dequantized_mean,
}
