"""numpy reference of TFLite's legacy uint8 kernels (LiteRT's reference kernels).

``mbgen.reference.run_int8`` calls these for nodes whose ``requantization`` is
``TFLITE_UINT8`` (uint8 data held as int8 = uint8 - 128; see ``quantize/uint8_params``).
Written from the semantics of TFLite's reference_ops::Conv / DepthwiseConv / AveragePool for
uint8; it shares no code with the C kernels.
"""

from __future__ import annotations

import numpy as np

from mbgen import ir
from mbgen.quantize import uint8_params
from mbgen.reference import (Kernel, _bias, _clamp_int8, _const, _pad_spatial, _windows,
                             multiply_by_quantized_multiplier, wrap_int32)


def _requantize(acc: np.ndarray, q: uint8_params.LegacyConvQuant) -> np.ndarray:
    scaled = multiply_by_quantized_multiplier(wrap_int32(acc), q.multiplier, q.shift)
    return _clamp_int8(scaled + q.output_zero_point, q.act_min, q.act_max)


def _conv2d(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    op: ir.Conv2D = node.op
    q = uint8_params.conv_quant(graph, node)
    weight = _const(graph, node.inputs[1]).astype(np.int64) - q.weight_zero_point
    out_c, kh, kw, in_c = weight.shape
    # taps outside the image are skipped: with x - x_zp = 0 there, they add nothing
    x = _pad_spatial(args[0].astype(np.int64) - q.input_zero_point, op.padding, 0)
    windows = _windows(x, (kh, kw), op.stride, op.dilation)
    columns = windows.reshape(-1, kh * kw * in_c)
    acc = (columns @ weight.reshape(out_c, -1).T).reshape(windows.shape[:3] + (out_c,))
    return _requantize(acc + _bias(graph, node, out_c), q)


def _depthwise_conv2d(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    op: ir.DepthwiseConv2D = node.op
    q = uint8_params.conv_quant(graph, node)
    weight = _const(graph, node.inputs[1])[0].astype(np.int64) - q.weight_zero_point
    kh, kw, out_c = weight.shape
    x = np.repeat(args[0].astype(np.int64) - q.input_zero_point, op.depth_multiplier, axis=3)
    x = _pad_spatial(x, op.padding, 0)
    windows = _windows(x, (kh, kw), op.stride, op.dilation)         # N, OH, OW, KH, KW, C
    acc = np.einsum("nhwijc,ijc->nhwc", windows, weight)
    return _requantize(acc + _bias(graph, node, out_c), q)


def _average_pool2d(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    """uint8 sums of the pixels inside the image, (sum + count / 2) / count."""
    op: ir.AveragePool2D = node.op
    act_min, act_max = uint8_params.average_pool_range(graph, node)
    stored = _pad_spatial(args[0].astype(np.int64) + 128, op.padding, 0)
    ones = _pad_spatial(np.ones((1,) + args[0].shape[1:3] + (1,), dtype=np.int64),
                        op.padding, 0)
    sums = _windows(stored, op.kernel, op.stride, (1, 1)).sum(axis=(3, 4))
    counts = _windows(ones, op.kernel, op.stride, (1, 1)).sum(axis=(3, 4))
    averages = (sums + counts // 2) // counts - 128
    return _clamp_int8(averages, act_min, act_max)


KERNELS: dict[type, Kernel] = {
    ir.Conv2D: _conv2d,
    ir.DepthwiseConv2D: _depthwise_conv2d,
    ir.AveragePool2D: _average_pool2d,
}
