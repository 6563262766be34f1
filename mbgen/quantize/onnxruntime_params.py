"""Per-op float32 constants of onnxruntime's int8 kernels (its CPU provider, MLAS).

onnxruntime requantises in float: ``q = saturate(round_half_even(float(acc) * scale) + zp)``.
The constants below are the float32 values its kernels compute from the stored scales, with
the same operations in the same order (each step rounded to float32):

* QLinearConv / QGemm (alpha 1): ``scale[c] = (x_scale * w_scale[c]) / y_scale``.
* QLinearGlobalAveragePool: ``scale = x_scale / (y_scale * float(H * W))`` and the int32
  bias ``-x_zero_point * H * W``; MLAS refuses scales outside [2^-32, 256).
* QLinearAdd (MLAS's AVX2 kernel): ``ratio_a = a_scale / c_scale``, ``ratio_b = b_scale /
  c_scale`` and ``fixed = float(c_zp) - (ratio_a * a_zp + ratio_b * b_zp)``; each output is
  ``fma(a, ratio_a, fma(b, ratio_b, fixed))`` on the stored values (int8 or uint8), so here
  the storage type matters (``storage_offset``).
* QLinearMul: see ``OrtMulQuant``.
* QuantizeLinear: ``x / scale`` (a division), clamp, round half to even, add the zero point.
* QLinearAveragePool (a window smaller than the image; a whole-image window without pads
  runs the global average pool above): float32 sums of dequantised inputs, see
  ``OrtAveragePoolQuant``.
* DequantizeLinear -> HardSigmoid / HardSwish -> QuantizeLinear, which onnxruntime runs in
  float32 (no QLinear kernel exists): ``activation_table`` evaluates the chain for the 256
  codes (checked against onnxruntime for every code in tests/test_onnx_quantized_v3.py);
  QLinearSigmoid's own table likewise (tests/test_onnx_qlinear_sigmoid.py).
* DequantizeLinear -> ReduceMean over H, W -> QuantizeLinear (float32 in onnxruntime):
  ``OrtDequantizedMeanQuant``; the summation order is ``eigen_sum_order``'s.

Both the numpy reference (``mbgen/reference_onnxruntime.py``) and the C lowering
(``mbgen/codegen/lowering_onnxruntime.py``) take their constants from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mbgen import ir
from mbgen.quantize.mlas_logistic import logistic

INT8_MIN, INT8_MAX = -128, 127
_F32 = np.float32
_GAP_SCALE_MIN, _GAP_SCALE_MAX = 2.0 ** -32, 256.0


@dataclass(frozen=True)
class OrtConvQuant:
    """QLinearConv / QGemm: acc = bias + sum((x - input_zero_point) * w), then requantise."""

    input_zero_point: int
    output_zero_point: int
    scales: np.ndarray          # float32, one per output channel or one for all


@dataclass(frozen=True)
class OrtAddQuant:
    """On stored values a, b (int8, or uint8 = int8 + offset):
    c = saturate(round_half_even(fma(a, ratio_a, fma(b, ratio_b, fixed)))) in storage."""

    offset: int                 # 0 for int8 storage, 128 for uint8
    ratio_a: np.float32
    ratio_b: np.float32
    fixed: np.float32


@dataclass(frozen=True)
class OrtMulQuant:
    """QLinearMul (MLAS's SSE2 kernel): p = (a - a_zp) * (b - b_zp) in int32, then
    float32(float32(p) * ratio) + float32(c_zp) (two roundings, no fused multiply-add),
    rounded half to even, saturated to the storage type."""

    a_zero_point: int
    b_zero_point: int
    ratio: np.float32           # (a_scale * b_scale) / c_scale
    stored_zero_point: int      # c_zp as stored (uint8: IR's + 128)
    offset: int


@dataclass(frozen=True)
class OrtMeanQuant:
    count: int
    bias: int                   # -input_zero_point * count
    scale: np.float32
    output_zero_point: int


def _quant(graph: ir.Graph, name: str, node: ir.Node) -> ir.QuantParams:
    q = graph.tensors[name].quant
    if q is None:
        raise ValueError(f"{node.name}: tensor {name!r} has no quantisation parameters")
    scale = np.asarray(q.scale, dtype=np.float32)
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise ValueError(f"{node.name}: tensor {name!r} has a scale that is not a positive "
                         f"finite number")
    return q


def _per_tensor(graph: ir.Graph, name: str, node: ir.Node) -> tuple[np.float32, int]:
    q = _quant(graph, name, node)
    if q.scale.size != 1:
        raise ValueError(f"{node.name}: tensor {name!r} needs per-tensor quantisation")
    return _F32(q.scale[0]), int(q.zero_point[0])


def _check_no_activation(node: ir.Node) -> None:
    if getattr(node.op, "activation", ir.Activation.NONE) is not ir.Activation.NONE:
        raise ValueError(f"{node.name}: onnxruntime int8 ops carry no fused activation")


def conv_quant(graph: ir.Graph, node: ir.Node) -> OrtConvQuant:
    """Conv2D, DepthwiseConv2D and FullyConnected with onnxruntime requantisation."""
    _check_no_activation(node)
    x_scale, x_zp = _per_tensor(graph, node.inputs[0], node)
    y_scale, y_zp = _per_tensor(graph, node.outputs[0], node)
    w = _quant(graph, node.inputs[1], node)
    if np.any(w.zero_point != 0):
        raise ValueError(f"{node.name}: int8 weights need zero point 0")
    with np.errstate(over="ignore", under="ignore"):
        scales = (x_scale * np.asarray(w.scale, dtype=np.float32)) / y_scale
    if not np.all(np.isfinite(scales)) or np.any(scales <= 0):
        raise ValueError(f"{node.name}: requantisation scale x_scale * w_scale / y_scale is "
                         "not a positive finite float32")
    return OrtConvQuant(x_zp, y_zp, scales.astype(np.float32))


def storage_offset(op: ir.OpAttrs) -> int:
    """What to add to the IR's int8 values to get the values onnxruntime stores."""
    return 128 if ir.requantization_of(op) is ir.Requantization.ONNXRUNTIME_UINT8 else 0


def add_quant(graph: ir.Graph, node: ir.Node) -> OrtAddQuant:
    """QLinearAdd; the zero points are those of the storage type (uint8: IR's + 128)."""
    _check_no_activation(node)
    offset = storage_offset(node.op)
    a_scale, a_zp = _per_tensor(graph, node.inputs[0], node)
    b_scale, b_zp = _per_tensor(graph, node.inputs[1], node)
    c_scale, c_zp = _per_tensor(graph, node.outputs[0], node)
    a_zp, b_zp, c_zp = a_zp + offset, b_zp + offset, c_zp + offset
    with np.errstate(over="ignore", under="ignore"):
        ratio_a, ratio_b = a_scale / c_scale, b_scale / c_scale
        # Two float32 products and their float32 sum (no fused multiply-add here).
        fixed = _F32(c_zp) - (ratio_a * _F32(a_zp) + ratio_b * _F32(b_zp))
    if not all(np.isfinite(v) for v in (ratio_a, ratio_b, fixed)):
        raise ValueError(f"{node.name}: add scale ratios are not finite float32 values")
    # The reference and the C compute each float32 fma in double, which is exact (so rounds
    # once, like the fused instruction) when every term is a multiple of the smallest lsb
    # and the magnitudes stay below 2**52 of it.
    grain = min(_lsb(ratio_a), _lsb(ratio_b), _lsb(fixed))
    largest = 256 * (abs(float(ratio_a)) + abs(float(ratio_b))) + abs(float(fixed))
    if largest / grain >= 2.0 ** 52:
        raise ValueError(f"{node.name}: add scale ratios are too far apart to compute "
                         "onnxruntime's fused multiply-adds exactly")
    return OrtAddQuant(offset, _F32(ratio_a), _F32(ratio_b), _F32(fixed))


def _lsb(value: np.float32) -> float:
    """The weight of the lowest mantissa bit of a float32 (inf for 0)."""
    if value == 0:
        return float("inf")
    return float(np.ldexp(1.0, int(np.frexp(np.float64(value))[1]) - 24))


def mul_quant(graph: ir.Graph, node: ir.Node) -> OrtMulQuant:
    _check_no_activation(node)
    a_scale, a_zp = _per_tensor(graph, node.inputs[0], node)
    b_scale, b_zp = _per_tensor(graph, node.inputs[1], node)
    c_scale, c_zp = _per_tensor(graph, node.outputs[0], node)
    with np.errstate(over="ignore", under="ignore"):
        ratio = (a_scale * b_scale) / c_scale
    # |p| <= 255 * 255: the kernels round by adding 1.5 * 2**23, so |p * ratio| < 2**21.
    if not np.isfinite(ratio) or not ratio > 0 or not 65025 * float(ratio) < 2.0 ** 21:
        raise ValueError(f"{node.name}: mul scale ratio a_scale * b_scale / c_scale is "
                         "outside what onnxruntime computes in range")
    offset = storage_offset(node.op)
    return OrtMulQuant(a_zp, b_zp, _F32(ratio), c_zp + offset, offset)


def mean_quant(graph: ir.Graph, node: ir.Node) -> OrtMeanQuant:
    """Global average pool over H and W (QLinearGlobalAveragePool)."""
    x = graph.tensors[node.inputs[0]]
    if len(x.shape) != 4 or tuple(sorted(a % 4 for a in node.op.axes)) != (1, 2):
        raise ValueError(f"{node.name}: onnxruntime's average pool is over H and W only")
    count = int(x.shape[1] * x.shape[2])
    x_scale, x_zp = _per_tensor(graph, node.inputs[0], node)
    y_scale, y_zp = _per_tensor(graph, node.outputs[0], node)
    with np.errstate(over="ignore", under="ignore"):
        scale = x_scale / (y_scale * _F32(count))
    if count >= 1 << 24 or not _GAP_SCALE_MIN <= float(scale) < _GAP_SCALE_MAX:
        raise ValueError(f"{node.name}: average pool scale {float(scale)!r} or size {count} is "
                         "outside what onnxruntime computes")
    return OrtMeanQuant(count, -x_zp * count, _F32(scale), y_zp)


@dataclass(frozen=True)
class OrtAveragePoolQuant:
    """QLinearAveragePool (window smaller than the image): float32 throughout. Each input
    dequantises through ``table`` (``x_scale * float(q - x_zp)`` for the 256 codes, indexed by
    the IR's int8 value + 128); a window sums them in row order, divides by its pixel count,
    divides by ``y_scale``, adds ``y_zp`` (of the storage type), rounds half to even."""

    table: np.ndarray           # float32 (256,)
    y_scale: np.float32
    stored_zero_point: int      # y_zp as stored (uint8: IR's + 128)
    offset: int


def average_pool_quant(graph: ir.Graph, node: ir.Node) -> OrtAveragePoolQuant:
    _check_no_activation(node)
    x_scale, x_zp = _per_tensor(graph, node.inputs[0], node)
    y_scale, y_zp = _per_tensor(graph, node.outputs[0], node)
    codes = np.arange(-128, 128, dtype=np.int64)
    with np.errstate(over="ignore", under="ignore"):
        table = x_scale * (codes - x_zp).astype(np.float32)
        largest = float(np.max(np.abs(table))) / float(y_scale)
    # The kernels round by adding 1.5 * 2**23: |value / y_scale + y_zp| must stay below 2**22.
    if not np.all(np.isfinite(table)) or not largest < 2.0 ** 21:
        raise ValueError(f"{node.name}: average pool scales x_scale / y_scale are outside "
                         "what onnxruntime computes in range")
    offset = storage_offset(node.op)
    return OrtAveragePoolQuant(table.astype(np.float32), _F32(y_scale), y_zp + offset, offset)


def quantize_params(graph: ir.Graph, node: ir.Node) -> tuple[np.float32, int]:
    """QuantizeLinear (float -> int8): the output's scale and zero point."""
    return _per_tensor(graph, node.outputs[0], node)


DEQUANTIZED_FUNCTIONS = ("HardSigmoid", "HardSwish", "Sigmoid", "Identity")


def activation_table(graph: ir.Graph, node: ir.Node) -> np.ndarray:
    """ir.DequantizedActivation as onnxruntime computes it, for the 256 int8 codes (index =
    code + 128): DequantizeLinear ``float32(q - x_zp) * x_scale``; HardSigmoid (Eigen, no
    fused multiply-add) ``max(min(alpha * x + beta, 1), 0)``, HardSwish ``x * that`` with
    alpha 1/6 and beta 0.5 (its ONNX function body), Sigmoid MLAS's logistic
    (``mlas_logistic``: QLinearSigmoid builds its table so), Identity ``x`` (a
    requantisation: a QLinearConcat input's table); then QuantizeLinear. uint8 storage
    changes nothing: every step sees ``q - zero_point``, and the output clamp is shifted
    with the zero point."""
    op: ir.DequantizedActivation = node.op
    if op.function not in DEQUANTIZED_FUNCTIONS:
        raise ValueError(f"{node.name}: no onnxruntime arithmetic for {op.function!r}")
    x_scale, x_zp = _per_tensor(graph, node.inputs[0], node)
    y_scale, y_zp = _per_tensor(graph, node.outputs[0], node)
    codes = np.arange(INT8_MIN, INT8_MAX + 1, dtype=np.int32)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        x = (codes - np.int32(x_zp)).astype(np.float32) * x_scale
        if op.function == "Sigmoid":
            return quantize_linear_int8(logistic(x), y_scale, y_zp)
        hard = np.maximum(np.minimum(_F32(op.alpha) * x + _F32(op.beta), _F32(1)), _F32(0))
        y = {"HardSigmoid": hard, "HardSwish": x * hard, "Identity": x}[op.function]
        return quantize_linear_int8(y, y_scale, y_zp)


def quantize_linear_int8(x: np.ndarray, scale: np.float32, zero_point: int) -> np.ndarray:
    """QuantizeLinear (MLAS): float32 division, clamp to the range less the zero point,
    round half to even, add the zero point."""
    value = np.asarray(x, dtype=np.float32) / _F32(scale)
    value = np.clip(value, _F32(INT8_MIN - zero_point), _F32(INT8_MAX - zero_point))
    return (np.rint(np.nan_to_num(value)).astype(np.int64) + zero_point).astype(np.int8)


# Eigen's vectorised sum of a float32 row as onnxruntime's CPU build runs it (SSE, 4 floats
# a packet, packets aligned to 16 bytes; onnxruntime's buffers are 64-byte aligned, so the
# row of channel c starts c * count floats past an aligned address).
EIGEN_PACKET = 4


@dataclass(frozen=True)
class EigenSumOrder:
    """How Eigen sums ``count`` floats starting ``misalignment`` floats past a packet
    boundary: with no whole packet, left to right. Otherwise two packet accumulators r0 and
    r1 (r1 only when there are two packets or more) add the aligned packets alternately,
    then r0 += r1, then r0 += the odd last packet, then the packet is reduced as
    (r0[0] + r0[2]) + (r0[1] + r0[3]), then the head and then the tail are added one by one."""

    head: int                   # floats before the first aligned packet
    packets: int                # whole aligned packets
    count: int


def eigen_sum_order(count: int, misalignment: int) -> EigenSumOrder:
    head = min((EIGEN_PACKET - misalignment % EIGEN_PACKET) % EIGEN_PACKET, count)
    return EigenSumOrder(head, (count - head) // EIGEN_PACKET, count)


@dataclass(frozen=True)
class OrtDequantizedMeanQuant:
    """Each input dequantises through ``table`` (``float32(q - x_zp) * x_scale`` for the 256
    codes, index = the IR's int8 value + 128); a channel's sum (Eigen's order) is divided by
    the pixel count, then by ``y_scale``, clamped, rounded half to even, plus ``y_zp``."""

    table: np.ndarray           # float32 (256,)
    count: int
    y_scale: np.float32
    output_zero_point: int


def dequantized_mean_quant(graph: ir.Graph, node: ir.Node) -> OrtDequantizedMeanQuant:
    x = graph.tensors[node.inputs[0]]
    if len(x.shape) != 4:
        raise ValueError(f"{node.name}: the mean is over the H and W of an image")
    x_scale, x_zp = _per_tensor(graph, node.inputs[0], node)
    y_scale, y_zp = _per_tensor(graph, node.outputs[0], node)
    codes = np.arange(INT8_MIN, INT8_MAX + 1, dtype=np.int32)
    with np.errstate(over="ignore", under="ignore"):
        table = (codes - np.int32(x_zp)).astype(np.float32) * x_scale
    # Any quotient is clamped to the int8 range before it is rounded; only the dequantised
    # values themselves must be finite.
    if not np.all(np.isfinite(table)):
        raise ValueError(f"{node.name}: x_scale * (q - x_zp) overflows float32")
    return OrtDequantizedMeanQuant(table.astype(np.float32), int(x.shape[1] * x.shape[2]),
                                   _F32(y_scale), y_zp)
