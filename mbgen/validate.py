"""The last gate before code generation: an int8 graph every kernel set can run as TFLM does.

``check_int8_graph`` runs once on every int8 graph (whatever frontend it came from, see
``compiler.prepare``). For each node it

* checks the contracts the kernels rely on: dtypes of activations, weights and biases, bias
  length, windows (kernel, stride, dilation >= 1), depth multiplier against the channel counts,
  and the output shape a conv/pool window gives;
* derives the constants TFLM's Prepare derives (``mbgen.quantize.params``), so what TFLM would
  refuse we refuse, and checks every requantisation multiplier and shift is one the C handles:
  a Q31 multiplier in [0, 2**31) and a shift in [-31, 30] (TFLite's MultiplyByQuantizedMultiplier
  range; a larger left shift is undefined behaviour in C and in TFLM alike).

A breach is the model's fault: ``UserError``, one line, naming the layer or tensor.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from mbgen import ir
from mbgen.errors import UserError
from mbgen.quantize import params, params_graph_ops

MIN_SHIFT, MAX_SHIFT = -31, 30
MAX_MULTIPLIER = (1 << 31) - 1

_CONV_LIKE = (ir.Conv2D, ir.DepthwiseConv2D, ir.FullyConnected)
_WINDOWED = (ir.Conv2D, ir.DepthwiseConv2D, ir.AveragePool2D, ir.MaxPool2D)


def _activation_quant(graph: ir.Graph, node: ir.Node):
    if node.op.activation is ir.Activation.RELU:
        return params.relu_quant(graph, node)
    if node.op.activation is ir.Activation.RELU6:
        return params.relu6_quant(graph, node)
    return None


def _quantize_quant(graph: ir.Graph, node: ir.Node):
    if graph.tensors[node.inputs[0]].dtype == "float32":
        return None  # float -> int8: a division by the scale, no integer constants
    return params.requantize_quant(graph, node)


# The Prepare of each int8 op: the constants its kernels read (None: it has none).
_PREPARE: dict[type, Callable] = {
    ir.Conv2D: params.conv_quant,
    ir.DepthwiseConv2D: params.conv_quant,
    ir.FullyConnected: params.conv_quant,
    ir.Add: params.add_quant,
    ir.Mul: params.mul_quant,
    ir.AveragePool2D: params.pool_quant,
    ir.MaxPool2D: params.pool_quant,
    ir.Mean: params.mean_quant,
    ir.Softmax: params.softmax_quant,
    ir.HardSwish: params.hardswish_quant,
    ir.Logistic: params.logistic_quant,
    ir.Quantize: _quantize_quant,
    ir.ActivationOp: _activation_quant,
    ir.Concatenation: params_graph_ops.check_concat_quant,
}


def check_int8_graph(graph: ir.Graph) -> None:
    """Raise ``UserError`` naming the first layer or tensor no kernel set may compute."""
    for name in graph.inputs + graph.outputs:
        role = "input" if name in graph.inputs else "output"
        if graph.tensors[name].is_const:
            raise UserError(f"the model's {role} {name!r} is a constant, not computed")
    if set(graph.inputs) & set(graph.outputs):
        raise UserError(f"tensor {sorted(set(graph.inputs) & set(graph.outputs))[0]!r} is both "
                        "an input and an output of the model")
    for node in graph.nodes:
        check_node(graph, node)


def check_node(graph: ir.Graph, node: ir.Node) -> None:
    def fail(message: str) -> UserError:
        return UserError(f"layer {node.name!r} ({ir.op_name(node.op)}): {message}")

    try:
        with np.errstate(all="ignore"):  # an absurd scale overflows float32: refused, not warned
            record = _checked_prepare(graph, node)
    except (ValueError, AssertionError, ZeroDivisionError, OverflowError) as exc:
        raise fail(_one_line(exc, node)) from None
    if record is not None:
        _check_requantisation(record, fail)


def _checked_prepare(graph: ir.Graph, node: ir.Node):
    """The node's contracts (ValueError on a breach), then its Prepare record or None."""
    _check_activation_types(graph, node)
    if isinstance(node.op, _CONV_LIKE):
        _check_conv_like(graph, node)
    if isinstance(node.op, _WINDOWED):
        _check_window(graph, node)
    if isinstance(node.op, ir.Softmax) and not (np.isfinite(node.op.beta) and node.op.beta > 0):
        raise ValueError(f"softmax beta {node.op.beta} must be positive and finite")
    if not ir.uses_tflite_int8_arithmetic(node.op):
        # Float32 requantisation (int8 ONNX) or legacy uint8 TFLite: no TFLM Prepare constants
        # to derive; their scales were checked when the file was read
        # (frontends/onnx_quantized*.py, quantize/uint8_params.py).
        return None
    prepare = _PREPARE.get(type(node.op))
    return prepare(graph, node) if prepare is not None else None


def _one_line(exc: Exception, node: ir.Node) -> str:
    if isinstance(exc, OverflowError):  # float("inf") met int(): a ratio overflowed float32
        return "the ratio of its scales is not finite (a scale is absurd)"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.removeprefix(f"{node.name}: ")


def _check_requantisation(record, fail) -> None:
    """Every Q31 multiplier and every shift of a params record is in the kernels' range."""
    for f in dataclasses.fields(record):
        values = np.asarray(getattr(record, f.name), dtype=np.int64).reshape(-1)
        if not values.size:
            continue
        name = f.name
        if name.endswith(("multiplier", "multipliers")):
            if values.min() < 0 or values.max() > MAX_MULTIPLIER:
                raise fail(f"requantisation {name} {int(values.max())} outside [0, 2**31)")
        elif name.endswith(("shift", "shifts")) and name != "left_shift":
            low, high = int(values.min()), int(values.max())
            if low < MIN_SHIFT or high > MAX_SHIFT:
                bad = high if high > MAX_SHIFT else low
                raise fail(f"the ratio of its scales needs a requantisation shift of {bad}, "
                           f"outside [{MIN_SHIFT}, {MAX_SHIFT}] (a scale is absurd)")


def _check_activation_types(graph: ir.Graph, node: ir.Node) -> None:
    """The kernels read and write int8 activations; uint8 lives only in the caller's buffers,
    converted by a QUANTIZE (a uint8 interface); float edges were stripped before."""
    for name in node.inputs + node.outputs:
        t = graph.tensors[name]
        if t.is_const or t.dtype == "int8":
            continue
        edge = name in graph.inputs if name in node.inputs else name in graph.outputs
        if not (t.dtype == "uint8" and edge and isinstance(node.op, ir.Quantize)):
            raise ValueError(f"tensor {name!r} is {t.dtype}: only int8 activations (uint8 "
                             "through a QUANTIZE at the model's input or output) are supported")


def _check_conv_like(graph: ir.Graph, node: ir.Node) -> None:
    x, w = graph.tensors[node.inputs[0]], graph.tensors[node.inputs[1]]
    out = graph.tensors[node.outputs[0]]
    if (x.dtype, w.dtype, out.dtype) != ("int8", "int8", "int8"):
        raise ValueError(f"input {x.name!r}, weights {w.name!r} and output {out.name!r} must be "
                         f"int8, not {x.dtype}, {w.dtype} and {out.dtype}")
    if not w.is_const:
        raise ValueError(f"weights {w.name!r} must be a constant")
    # legacy uint8 TFLite weights (held as uint8 - 128) keep their zero point
    legacy = ir.requantization_of(node.op) is ir.Requantization.TFLITE_UINT8
    if w.quant is None or (np.any(w.quant.zero_point != 0) and not legacy):
        raise ValueError(f"int8 weights {w.name!r} must have zero point 0")
    channels = w.shape[3] if isinstance(node.op, ir.DepthwiseConv2D) else w.shape[0]
    if isinstance(node.op, ir.DepthwiseConv2D):
        in_c = x.shape[-1]
        if channels != in_c * node.op.depth_multiplier or out.shape[-1] != channels:
            raise ValueError(f"depth multiplier {node.op.depth_multiplier} contradicts "
                             f"{in_c} input, {channels} weight and {out.shape[-1]} output "
                             "channels")
    elif isinstance(node.op, ir.Conv2D) and (w.shape[3] != x.shape[-1]
                                             or out.shape[-1] != channels):
        raise ValueError(f"weights {w.name!r} {w.shape} do not fit input {x.shape} and "
                         f"output {out.shape}")
    bias = np.zeros(channels, np.int64)
    if len(node.inputs) > 2 and node.inputs[2]:
        b = graph.tensors[node.inputs[2]]
        if b.dtype != "int32" or not b.is_const or b.shape != (channels,):
            raise ValueError(f"bias {b.name!r} must be {channels} int32 constants, not "
                             f"{b.dtype} {b.shape}")
        bias = b.data.astype(np.int64)
    _check_accumulator(w, bias, channels, isinstance(node.op, ir.DepthwiseConv2D),
                       int(w.quant.zero_point[0]) if legacy else 0)


def _check_accumulator(w: ir.Tensor, bias: np.ndarray, channels: int, depthwise: bool,
                       weight_zero_point: int = 0) -> None:
    """The int32 accumulator cannot overflow in any summation order: the kernels start from
    bias + input_offset * sum(w) and add x * w, TFLM from bias adding (x + offset) * w; with
    |x| <= 128 and |offset| <= 128 both stay within |bias| + 256 * sum(|w|) of zero."""
    magnitudes = np.abs(w.data.astype(np.int64) - weight_zero_point)
    per_channel = (magnitudes.reshape(-1, channels).sum(axis=0) if depthwise
                   else magnitudes.reshape(channels, -1).sum(axis=1))
    bound = np.abs(bias) + 256 * per_channel
    if bound.max() > (1 << 31) - 1:
        c = int(bound.argmax())
        raise ValueError(f"output channel {c}: bias {int(bias[c])} plus its weights can "
                         "overflow the int32 accumulator")


def _check_window(graph: ir.Graph, node: ir.Node) -> None:
    op = node.op
    x, out = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
    if isinstance(op, (ir.AveragePool2D, ir.MaxPool2D)):
        kernel, dilation = op.kernel, (1, 1)
    else:
        kernel, dilation = graph.tensors[node.inputs[1]].shape[1:3], op.dilation
    if min(*kernel, *op.stride, *dilation) < 1:
        raise ValueError(f"kernel {tuple(kernel)}, stride {op.stride} and dilation {dilation} "
                         "must be >= 1")
    if len(x.shape) != 4 or len(out.shape) != 4:
        raise ValueError(f"input {x.shape} and output {out.shape} must be NHWC")
    pad = op.padding
    sizes = []
    for size, before, after, k, s, d in ((x.shape[1], pad.top, pad.bottom, kernel[0],
                                          op.stride[0], dilation[0]),
                                         (x.shape[2], pad.left, pad.right, kernel[1],
                                          op.stride[1], dilation[1])):
        sizes.append((size + before + after - (k - 1) * d - 1) // s + 1)
    if min(sizes) < 1 or tuple(out.shape[1:3]) != tuple(sizes):
        raise ValueError(f"output {out.shape} does not match its window over input {x.shape} "
                         f"(expected {tuple(sizes)} pixels)")
