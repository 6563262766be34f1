"""The constants of TFLite's legacy uint8 kernels (``ir.Requantization.TFLITE_UINT8``), as
LiteRT's reference kernels compute them from the stored parameters.

The IR holds uint8 data as int8 (value and zero point minus 128), weights included, so every
difference ``q - zero_point`` is unchanged. Convolutions accumulate
``bias + sum((x - x_zp) * (w - w_zp))`` over the taps inside the image and requantise with
one multiplier (GetQuantizedConvolutionMultipler: the float32 product ``x_scale * w_scale``
divided by ``y_scale`` in double, then QuantizeMultiplier), rounding as TFLite's
MultiplyByQuantizedMultiplier. The average pool rounds the uint8 window sum half up:
``(sum + count / 2) / count``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mbgen import ir
from mbgen.quantize.multiplier import quantize_multiplier
from mbgen.quantize.params import activation_range

MIN_SHIFT, MAX_SHIFT = -31, 30


@dataclass(frozen=True)
class LegacyConvQuant:
    input_zero_point: int       # the IR's (uint8 - 128)
    weight_zero_point: int      # the IR's (uint8 - 128)
    output_zero_point: int
    multiplier: int
    shift: int                  # TFLite sign convention: > 0 is a left shift
    act_min: int
    act_max: int


def _per_tensor(graph: ir.Graph, name: str, node: ir.Node) -> tuple[float, int]:
    q = graph.tensors[name].quant
    if q is None or q.scale.size != 1:
        raise ValueError(f"{node.name}: uint8 tensor {name!r} needs one scale and zero point")
    scale = np.float32(q.scale[0])
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"{node.name}: tensor {name!r} has a scale that is not a positive "
                         "finite number")
    return float(scale), int(q.zero_point[0])


def conv_quant(graph: ir.Graph, node: ir.Node) -> LegacyConvQuant:
    """Conv2D and DepthwiseConv2D with uint8 weights (one scale and zero point)."""
    x_scale, x_zp = _per_tensor(graph, node.inputs[0], node)
    w_scale, w_zp = _per_tensor(graph, node.inputs[1], node)
    y_scale, y_zp = _per_tensor(graph, node.outputs[0], node)
    with np.errstate(over="ignore", under="ignore"):
        product = float(np.float32(x_scale) * np.float32(w_scale))
    real = product / y_scale
    if not (np.isfinite(real) and real > 0):
        raise ValueError(f"{node.name}: x_scale * w_scale / y_scale is not a positive finite "
                         "number")
    multiplier, shift = quantize_multiplier(real)
    if not MIN_SHIFT <= shift <= MAX_SHIFT:
        raise ValueError(f"{node.name}: requantisation shift {shift} outside "
                         f"[{MIN_SHIFT}, {MAX_SHIFT}] (a scale is absurd)")
    act_min, act_max = activation_range(node.op.activation, graph.tensors[node.outputs[0]].quant)
    return LegacyConvQuant(x_zp, w_zp, y_zp, multiplier, shift, act_min, act_max)


def average_pool_range(graph: ir.Graph, node: ir.Node) -> tuple[int, int]:
    """The clamp of a uint8 average pool (IR values); input and output share parameters."""
    x, y = graph.tensors[node.inputs[0]].quant, graph.tensors[node.outputs[0]].quant
    if x is None or y is None or not (np.array_equal(x.scale, y.scale)
                                      and np.array_equal(x.zero_point, y.zero_point)):
        raise ValueError(f"{node.name}: a uint8 average pool keeps its input's scale and "
                         "zero point")
    return activation_range(node.op.activation, y)
