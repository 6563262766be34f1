"""Post-training int8 quantisation of a float graph, following TFLite's converter.

What the TFLite MLIR converter does for full-integer post-training quantisation, and so do we
(``tensorflow/compiler/mlir/.../quantization_utils.cc``, ``FakeQuantSupport.cc`` and
``quantization_driver.cc``, read for the semantics):

* **Activations**: int8 per tensor. The calibration range [rmin, rmax] (min/max over every
  value seen, or percentiles) is widened to include 0; a range narrower than 1e-6 is widened
  to at least +-5e-7 (``ExpandVerySmallRange``). Then, in double precision, ``scale =
  (rmax - rmin) / 255`` and the zero point is ``-128 - rmin / scale`` or ``127 - rmax /
  scale``, whichever adds the smaller rounding error, rounded half away from zero and clamped
  to [-128, 127] (``getNudgedScaleAndZeroPoint``; the scale itself is not nudged). The scale
  is stored as float32.
* **Weights**: symmetric int8 in [-127, 127], zero point 0, per output channel for Conv2D
  (axis 0) and DepthwiseConv2D (axis 3), per tensor for FullyConnected. ``scale = max|w| /
  127``; an all-zero (or < 5e-7) channel gets ``max|w| = 5e-7`` so its scale stays positive
  and finite. Values are ``round(w / scale)`` (half away from zero) with the stored float32
  scale, clamped to [-127, 127].
* **Bias**: int32, zero point 0, ``scale = float32(input_scale * weight_scale[c])``. When a
  bias would exceed ``(2**31 - 1) // 2`` quanta, TFLite raises that channel's scale to
  ``|bias| / ((2**31 - 1) // 2)`` and the weight scale to ``bias_scale / input_scale``;
  we do the same (this also keeps tiny zero-channel scales from overflowing the bias).
* **Fixed output quantisation**: AveragePool2D, MaxPool2D, Mean, Reshape, Pad, Transpose and
  StridedSlice output the input's quantisation (the int8 kernels require it); Softmax and
  Logistic output scale 1/256 and zero point -128.
* **Concatenation** (the converter's same-scale constraint; TFLM refuses anything else): the
  output is calibrated, and every input takes the output's parameters. Where an input comes
  (through same-quantisation ops) from a calibrated producer, that producer is quantised with
  the concatenation's range; otherwise an int8 -> int8 Quantize is inserted before it.
* Every other activation (fused ReLU/ReLU6 outputs included: the float interpreter applies the
  activation) is calibrated from its own observed values.

The result keeps the float graph's structure; its input and output tensors become int8.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

from mbgen import ir
from mbgen.errors import UserError
from mbgen.float_interp import run_float
from mbgen.quantize.multiplier import round_half_away

QMIN, QMAX = -128, 127
WEIGHT_QMAX = 127                    # weights use the narrow range [-127, 127]
NEAR_ZERO_RANGE = 1e-6               # TFLite's kNearZeroTolerance
BIAS_QUANTA_LIMIT = (2**31 - 1) // 2  # TFLite's kBiasMax: headroom left for the accumulator
FIXED_UNIT_INTERVAL = ir.QuantParams.per_tensor(1.0 / 256.0, -128)  # softmax, logistic

_SAME_AS_INPUT = (ir.AveragePool2D, ir.Mean, ir.Reshape, ir.Pad, ir.MaxPool2D,
                  ir.StridedSlice, ir.Transpose)
_FIXED_OUTPUT = (ir.Softmax, ir.Logistic)
_CALIBRATED = (ir.Conv2D, ir.DepthwiseConv2D, ir.FullyConnected, ir.Add, ir.Mul,
               ir.ActivationOp, ir.HardSwish, ir.Concatenation)
_CONV_LIKE = (ir.Conv2D, ir.DepthwiseConv2D, ir.FullyConnected)
_WEIGHT_AXIS = {ir.Conv2D: 0, ir.DepthwiseConv2D: 3, ir.FullyConnected: None}


class TensorRange(NamedTuple):
    """A real-valued range of one tensor (the per-layer range report)."""

    tensor: str
    min: float
    max: float


# ----------------------------------------------------------------------------- parameters


def activation_quant(rmin: float, rmax: float) -> ir.QuantParams:
    """Asymmetric int8 parameters for values in [rmin, rmax], as TFLite's converter picks them."""
    rmin, rmax = min(float(rmin), 0.0), max(float(rmax), 0.0)
    if not (math.isfinite(rmin) and math.isfinite(rmax)):
        raise UserError(f"calibration range [{rmin}, {rmax}] is not finite")
    if rmax - rmin <= NEAR_ZERO_RANGE:
        rmin, rmax = min(rmin, -NEAR_ZERO_RANGE / 2), max(rmax, NEAR_ZERO_RANGE / 2)
    scale = (rmax - rmin) / (QMAX - QMIN)
    from_min, from_min_error = QMIN - rmin / scale, abs(QMIN) + abs(rmin / scale)
    from_max, from_max_error = QMAX - rmax / scale, abs(QMAX) + abs(rmax / scale)
    zero_point = from_min if from_min_error < from_max_error else from_max
    zero_point = min(max(round_half_away(zero_point), QMIN), QMAX)
    return ir.QuantParams.per_tensor(float(np.float32(scale)), zero_point)


def _symmetric_scales(weights: np.ndarray, axis: int | None) -> np.ndarray:
    """float32 max|w| / 127 per slice of ``axis`` (whole tensor when None)."""
    magnitude = np.abs(weights.astype(np.float64))
    if axis is None:
        max_abs = np.array([magnitude.max(initial=0.0)])
    else:
        others = tuple(d for d in range(weights.ndim) if d != axis)
        max_abs = magnitude.max(axis=others, initial=0.0)
    max_abs = np.where(2 * max_abs <= NEAR_ZERO_RANGE, NEAR_ZERO_RANGE / 2, max_abs)
    return (2 * max_abs / (2 * WEIGHT_QMAX)).astype(np.float32)


def _quantize_values(values: np.ndarray, scale: np.ndarray, zero_point: int, axis: int | None,
                     qmin: int, qmax: int, dtype: str) -> np.ndarray:
    """round(x / scale) half away from zero, plus zero point, clamped; scale per ``axis``."""
    shape = [1] * values.ndim
    if axis is not None:
        shape[axis] = -1
    scaled = values.astype(np.float64) / scale.astype(np.float64).reshape(shape)
    rounded = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5) + zero_point
    return np.clip(rounded, qmin, qmax).astype(dtype)


# ----------------------------------------------------------------------------- calibration


class _RangeObserver:
    """Running min/max, or the exact (100-P)th/Pth percentiles of all values seen.

    For percentiles it keeps only the values that can still land at or beyond the percentile
    ranks (numpy's 'linear' definition), so memory is about (1 - P/100) of the data.
    """

    def __init__(self, total_count: int, percentile: float | None):
        self.total = total_count
        self.percentile = percentile
        self.low = np.empty(0)   # the smallest values seen (only the min for min/max)
        self.high = np.empty(0)  # the largest values seen
        if percentile is None:
            self.keep_low = self.keep_high = 1
        else:
            self.keep_high = total_count - math.floor(self._rank(percentile))
            self.keep_low = math.ceil(self._rank(100.0 - percentile)) + 1

    def _rank(self, percent: float) -> float:
        return (self.total - 1) * percent / 100.0

    def update(self, values: np.ndarray) -> None:
        flat = values.astype(np.float64).ravel()
        if self.percentile is None:
            self.low = np.append(self.low, flat.min()).min(keepdims=True)
            self.high = np.append(self.high, flat.max()).max(keepdims=True)
            return
        low, high = np.concatenate([self.low, flat]), np.concatenate([self.high, flat])
        if low.size > self.keep_low:
            low = np.partition(low, self.keep_low - 1)[:self.keep_low]
        if high.size > self.keep_high:
            high = np.partition(high, high.size - self.keep_high)[-self.keep_high:]
        self.low, self.high = low, high

    def _value_at(self, rank: float) -> float:
        """Linear interpolation between the sorted values at floor(rank) and ceil(rank)."""
        floor_rank, ceil_rank = math.floor(rank), math.ceil(rank)
        first_high = self.total - self.keep_high
        if floor_rank >= first_high:
            window, offset = np.sort(self.high), first_high
        else:
            window, offset = np.sort(self.low), 0
        below, above = window[floor_rank - offset], window[ceil_rank - offset]
        return float(below + (above - below) * (rank - floor_rank))

    def range(self) -> tuple[float, float]:
        if self.percentile is None:
            return float(self.low[0]), float(self.high[0])
        return (self._value_at(self._rank(100.0 - self.percentile)),
                self._value_at(self._rank(self.percentile)))


def _check_float_graph(graph: ir.Graph) -> None:
    if graph.is_quantized:
        raise UserError(f"model {graph.name!r} is already int8; quantise only float models")
    if len(graph.inputs) != 1:
        raise UserError(f"model {graph.name!r} has {len(graph.inputs)} inputs; "
                        "the quantizer supports single-input models")
    for node in graph.nodes:
        if not isinstance(node.op, _SAME_AS_INPUT + _FIXED_OUTPUT + _CALIBRATED):
            raise UserError(f"cannot quantise op {ir.op_name(node.op)} (node {node.name}); "
                            "run the passes first or remove it from the model")
        if isinstance(node.op, _CONV_LIKE):
            for name in node.inputs[1:]:
                if name and not graph.tensors[name].is_const:
                    raise UserError(f"node {node.name}: {ir.op_name(node.op)} weight/bias "
                                    f"{name!r} is not a constant")


def _calibrated_tensors(graph: ir.Graph) -> list[str]:
    names = list(graph.inputs)
    for node in graph.nodes:
        if isinstance(node.op, _CALIBRATED):
            names.append(node.outputs[0])
    return list(dict.fromkeys(names))


def calibrate(float_graph: ir.Graph, calib_inputs: Sequence[np.ndarray],
              percentile: float | None = None) -> dict[str, tuple[float, float]]:
    """Observed (min, max) of the graph input and of every calibrated activation.

    With ``percentile`` P, the range is the (100-P)th and Pth percentile of all values of that
    tensor over the whole calibration set (numpy's linear interpolation) instead of min/max.
    """
    _check_float_graph(float_graph)
    if percentile is not None and not 50.0 < percentile <= 100.0:
        raise UserError(f"calibration percentile must be in (50, 100], got {percentile}")
    if percentile == 100.0:
        percentile = None
    if len(calib_inputs) == 0:
        raise UserError("calibration needs at least one input")
    input_name = float_graph.inputs[0]
    want = tuple(float_graph.tensors[input_name].shape)
    for i, sample in enumerate(calib_inputs):
        sample = np.asarray(sample)
        if tuple(sample.shape) != want:
            raise UserError(f"calibration input {i} has shape {tuple(sample.shape)}; "
                            f"the model input {input_name!r} is {want}")
        if not np.isfinite(sample).all():
            raise UserError(f"calibration input {i} contains NaN or infinity")
    names = _calibrated_tensors(float_graph)
    observers = {n: _RangeObserver(float_graph.tensors[n].size * len(calib_inputs), percentile)
                 for n in names}
    for sample in calib_inputs:
        values = run_float(float_graph, {input_name: np.asarray(sample, np.float32)},
                           keep_all=True)
        for name in names:
            observers[name].update(values[name])
    return {name: observers[name].range() for name in names}


# ----------------------------------------------------------------------------- the graph


class _Builder:
    """Collects the int8 graph's tensors; a constant that two nodes need quantised differently
    (e.g. a shared bias under two input scales) gets a second, per-node name."""

    def __init__(self, float_graph: ir.Graph):
        self.float_graph = float_graph
        self.tensors: dict[str, ir.Tensor] = {}

    def quant(self, name: str) -> ir.QuantParams:
        qp = self.tensors[name].quant
        assert qp is not None, f"{name} quantised before its producer"
        return qp

    def activation(self, name: str, quant: ir.QuantParams) -> None:
        self.tensors[name] = ir.Tensor(name, self.float_graph.tensors[name].shape, "int8",
                                       None, quant)

    def constant(self, name: str, node: ir.Node, data: np.ndarray,
                 quant: ir.QuantParams) -> str:
        existing = self.tensors.get(name)
        if existing is not None and not (np.array_equal(existing.data, data)
                                         and _same_quant(existing.quant, quant)):
            name = f"{name}@{node.name}"
        self.tensors[name] = ir.Tensor(name, tuple(data.shape), str(data.dtype), data, quant)
        return name


def _same_quant(a: ir.QuantParams | None, b: ir.QuantParams | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.axis == b.axis and np.array_equal(a.scale, b.scale)
            and np.array_equal(a.zero_point, b.zero_point))


def _quantize_conv_like(builder: _Builder, node: ir.Node) -> list[str]:
    """Weights (symmetric, per channel or per tensor) and int32 bias of Conv/Depthwise/FC."""
    graph = builder.float_graph
    axis = _WEIGHT_AXIS[type(node.op)]
    weights = graph.tensors[node.inputs[1]].data
    w_scale = _symmetric_scales(weights, axis)
    input_scale = np.float64(builder.quant(node.inputs[0]).scalar_scale)
    has_bias = len(node.inputs) > 2 and bool(node.inputs[2])
    if has_bias:
        bias = graph.tensors[node.inputs[2]].data.astype(np.float64)
        bias_limit = np.abs(bias) if axis is not None else np.array([np.abs(bias).max(initial=0)])
        bias_scale = (input_scale * w_scale.astype(np.float64)).astype(np.float32)
        too_big = bias_limit / bias_scale.astype(np.float64) > BIAS_QUANTA_LIMIT
        if too_big.any():
            raised = (bias_limit / BIAS_QUANTA_LIMIT / input_scale).astype(np.float32)
            w_scale = np.where(too_big, raised, w_scale).astype(np.float32)
    w_quant = ir.QuantParams(w_scale, np.zeros(w_scale.shape, np.int32), axis)
    q_weights = _quantize_values(weights, w_scale, 0, axis, -WEIGHT_QMAX, WEIGHT_QMAX, "int8")
    inputs = [node.inputs[0], builder.constant(node.inputs[1], node, q_weights, w_quant)]
    if has_bias:
        bias_scale = (input_scale * w_scale.astype(np.float64)).astype(np.float32)
        b_axis = 0 if axis is not None else None
        b_quant = ir.QuantParams(bias_scale, np.zeros(bias_scale.shape, np.int32), b_axis)
        q_bias = _quantize_values(bias, bias_scale, 0, b_axis, -2**31, 2**31 - 1, "int32")
        inputs.append(builder.constant(node.inputs[2], node, q_bias, b_quant))
    inputs.extend(node.inputs[len(inputs):])  # an empty optional-bias slot stays as it was
    return inputs


def _quantize_constant_operand(builder: _Builder, node: ir.Node, name: str) -> str:
    """A constant input of Add/Mul: asymmetric per-tensor int8 from its own values."""
    data = builder.float_graph.tensors[name].data.astype(np.float64)
    quant = activation_quant(data.min(initial=0.0), data.max(initial=0.0))
    q = _quantize_values(data, quant.scale, quant.scalar_zero_point, None, QMIN, QMAX, "int8")
    return builder.constant(name, node, q, quant)


def quantize(float_graph: ir.Graph, calib_inputs: Sequence[np.ndarray],
             percentile: float | None = None,
             ranges: dict[str, tuple[float, float]] | None = None,
             method: str | None = None) -> ir.Graph:
    """The int8 graph of ``float_graph``, calibrated on ``calib_inputs`` (float32 NHWC arrays
    shaped like the model input). ``percentile`` P: clip ranges to the (100-P)th..Pth
    percentile instead of min/max. ``ranges``: ranges already chosen (mbgen.quantize.ranges),
    described by ``method`` in the metadata. The input graph is not modified."""
    ranges = dict(ranges) if ranges is not None else calibrate(float_graph, calib_inputs,
                                                               percentile)
    ranges.update(_concatenation_ranges(float_graph, ranges))
    builder = _Builder(float_graph)
    input_name = float_graph.inputs[0]
    builder.activation(input_name, activation_quant(*ranges[input_name]))
    nodes: list[ir.Node] = []
    for node in float_graph.nodes:
        op, out = node.op, node.outputs[0]
        inputs = list(node.inputs)
        if isinstance(op, _CONV_LIKE):
            inputs = _quantize_conv_like(builder, node)
        elif isinstance(op, (ir.Add, ir.Mul)):
            inputs = [_quantize_constant_operand(builder, node, n)
                      if float_graph.tensors[n].is_const else n for n in node.inputs]
        if isinstance(op, ir.Concatenation):
            builder.activation(out, activation_quant(*ranges[out]))
            inputs = [_requantized_to(builder, nodes, name, out) for name in inputs]
        elif isinstance(op, _SAME_AS_INPUT):
            builder.activation(out, builder.quant(node.inputs[0]))
        elif isinstance(op, _FIXED_OUTPUT):
            builder.activation(out, FIXED_UNIT_INTERVAL)
        else:
            builder.activation(out, activation_quant(*ranges[out]))
        nodes.append(ir.Node(node.name, op, inputs, list(node.outputs)))
    how = method or (f"percentile {percentile:g}" if percentile is not None and percentile < 100
                     else "min/max")
    metadata = dict(float_graph.metadata)
    metadata["calibration"] = f"{how} over {len(calib_inputs)} inputs"
    graph = ir.Graph(float_graph.name, builder.tensors, nodes, [input_name],
                     list(float_graph.outputs), metadata)
    ir.verify(graph)
    return graph


def _concatenation_ranges(graph: ir.Graph, ranges: dict[str, tuple[float, float]]
                          ) -> dict[str, tuple[float, float]]:
    """Calibration ranges to override so that concatenation inputs need no requantising.

    Outermost concatenations first, so that nested ones inherit the outer range. An input
    is followed back through same-quantisation ops to a calibrated producer (or the graph
    input), which takes the concatenation's range unless another one claimed it first.
    """
    overrides: dict[str, tuple[float, float]] = {}
    for node in reversed(graph.nodes):
        if not isinstance(node.op, ir.Concatenation):
            continue
        wanted = overrides.get(node.outputs[0], ranges[node.outputs[0]])
        for name in node.inputs:
            producer = graph.producer(name)
            while producer is not None and isinstance(producer.op, _SAME_AS_INPUT):
                name = producer.inputs[0]
                producer = graph.producer(name)
            free = name in graph.inputs or (producer is not None
                                            and isinstance(producer.op, _CALIBRATED))
            if free and name not in overrides:
                overrides[name] = wanted
    return overrides


def _requantized_to(builder: _Builder, nodes: list[ir.Node], name: str, like: str) -> str:
    """``name``, or an int8 -> int8 Quantize of it to ``like``'s parameters (appended to
    ``nodes``) when they differ."""
    target = builder.quant(like)
    if _same_quant(builder.quant(name), target):
        return name
    requantized = f"{name}/requantized_for_{like}"
    builder.tensors[requantized] = ir.Tensor(requantized, builder.tensors[name].shape, "int8",
                                             None, target)
    nodes.append(ir.Node(requantized, ir.Quantize(), [name], [requantized]))
    return requantized


def describe_ranges(graph: ir.Graph) -> list[TensorRange]:
    """The real range each int8 activation can hold, in execution order (input first).

    ``[scale * (-128 - zp), scale * (127 - zp)]``: the calibrated range after TFLite's
    widening to include 0 and zero-point nudging.
    """
    names = list(graph.inputs) + [n for node in graph.nodes for n in node.outputs]
    ranges = []
    for name in dict.fromkeys(names):
        tensor = graph.tensors[name]
        if tensor.dtype != "int8" or tensor.quant is None:
            continue
        scale, zp = tensor.quant.scalar_scale, tensor.quant.scalar_zero_point
        ranges.append(TensorRange(name, scale * (QMIN - zp), scale * (QMAX - zp)))
    return ranges
