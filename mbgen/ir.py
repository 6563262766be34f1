"""The typed graph every mbgen stage reads and writes.

Conventions (every frontend produces them, every later stage relies on them):

* Activations are NHWC with batch 1: images are ``(1, H, W, C)``, flat vectors ``(1, N)``.
* Weights use TFLite layouts: conv ``(O, KH, KW, I)``, depthwise ``(1, KH, KW, C*multiplier)``,
  fully connected ``(O, I)``. Bias is ``(O,)``.
* A float graph has float32 tensors and no quantisation. An int8 graph has int8 activations
  with per-tensor ``QuantParams``, int8 weights with per-channel (conv: axis 0, depthwise:
  axis 3) or per-tensor (fully connected) scales and zero point 0, int32 bias with zero
  point 0 and scale ``input_scale * weight_scale``.
* Scales are float32 (TFLite stores float32; the requantisation constants are derived from
  exactly those values).
* ``Graph.nodes`` is in execution (topological) order. Tensors are named; a tensor with
  ``data`` is a constant (flash), any other is an activation (arena).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Union

import numpy as np


class Requantization(enum.Enum):
    """How an int8 op turns its int32 (or rescaled) value into the output's int8.

    TFLITE: Q31 multiplier and shift, rounding half away from zero (TFLite, TFLM, CMSIS-NN).
    ONNXRUNTIME: float32 scale, rounding half to even, as onnxruntime's CPU provider (MLAS)
    runs QLinearConv, QGemm, QLinearAdd, QLinearGlobalAveragePool and QuantizeLinear.
    ONNXRUNTIME_UINT8: the same on uint8 storage. The IR keeps such tensors as int8 (value
    and zero point minus 128), which changes nothing for ops that work on ``q - zero_point``;
    an op whose float arithmetic sees the stored values (QLinearAdd) adds 128 back.
    TFLITE_UINT8: TFLite's legacy uint8 kernels (LiteRT's reference kernels; TFLM has none),
    uint8 held as int8 the same way: weights keep their zero point (``w - weight_zp``), one
    per-tensor multiplier from the float32 product of the scales, and an average pool that
    rounds its uint8 sums half up.
    Every kernel set that only knows TFLite's int8 arithmetic must decline all three.
    """

    TFLITE = "tflite"
    ONNXRUNTIME = "onnxruntime"
    ONNXRUNTIME_UINT8 = "onnxruntime-uint8"
    TFLITE_UINT8 = "tflite-uint8"


class Activation(enum.Enum):
    """Activation fused into the op that produces a tensor."""

    NONE = "none"
    RELU = "relu"
    RELU6 = "relu6"


@dataclass(frozen=True)
class Padding:
    """Explicit zero padding in pixels. TF 'SAME' may be asymmetric (more bottom/right)."""

    top: int = 0
    bottom: int = 0
    left: int = 0
    right: int = 0

    @staticmethod
    def same(in_h: int, in_w: int, k_h: int, k_w: int, s_h: int, s_w: int,
             d_h: int = 1, d_w: int = 1) -> "Padding":
        """TensorFlow 'SAME' padding: output = ceil(in / stride), extra pixel bottom/right."""
        def split(size: int, k: int, s: int, d: int) -> tuple[int, int]:
            eff_k = (k - 1) * d + 1
            out = -(-size // s)
            total = max((out - 1) * s + eff_k - size, 0)
            return total // 2, total - total // 2
        top, bottom = split(in_h, k_h, s_h, d_h)
        left, right = split(in_w, k_w, s_w, d_w)
        return Padding(top, bottom, left, right)


# ----------------------------------------------------------------------------- op attributes
# One frozen dataclass per op. Node.inputs lists tensor names in the order given here.


@dataclass(frozen=True)
class Conv2D:
    """inputs: x (1,H,W,I), weight (O,KH,KW,I), bias (O,) optional."""

    stride: tuple[int, int] = (1, 1)
    padding: Padding = Padding()
    dilation: tuple[int, int] = (1, 1)
    activation: Activation = Activation.NONE
    requantization: Requantization = Requantization.TFLITE


@dataclass(frozen=True)
class DepthwiseConv2D:
    """inputs: x (1,H,W,C), weight (1,KH,KW,C*depth_multiplier), bias (C*m,) optional."""

    stride: tuple[int, int] = (1, 1)
    padding: Padding = Padding()
    depth_multiplier: int = 1
    dilation: tuple[int, int] = (1, 1)
    activation: Activation = Activation.NONE
    requantization: Requantization = Requantization.TFLITE


@dataclass(frozen=True)
class FullyConnected:
    """inputs: x (1,I), weight (O,I), bias (O,) optional. Output (1,O)."""

    activation: Activation = Activation.NONE
    requantization: Requantization = Requantization.TFLITE


@dataclass(frozen=True)
class Add:
    """inputs: a, b of the same shape (residual connection), or broadcast against each other
    as numpy and TFLite do (rank <= 4; a constant such as hard sigmoid's 3 from .tflite)."""

    activation: Activation = Activation.NONE
    requantization: Requantization = Requantization.TFLITE


@dataclass(frozen=True)
class Mul:
    """inputs: a, b, broadcast against each other as numpy and TFLite do (rank <= 4; a
    squeeze-excite scale (1,1,1,C) times (1,H,W,C)); either may be a constant."""

    activation: Activation = Activation.NONE
    requantization: Requantization = Requantization.TFLITE


@dataclass(frozen=True)
class AveragePool2D:
    """inputs: x. Padded pixels are excluded from the divisor (TFLite semantics)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: Padding = Padding()
    activation: Activation = Activation.NONE
    requantization: Requantization = Requantization.TFLITE


@dataclass(frozen=True)
class Mean:
    """inputs: x. Mean over ``axes`` of an NHWC tensor (global average pool is axes (1, 2))."""

    axes: tuple[int, ...] = (1, 2)
    keep_dims: bool = True
    requantization: Requantization = Requantization.TFLITE


@dataclass(frozen=True)
class Reshape:
    """inputs: x. Row-major reshape to ``shape`` (the output tensor's shape)."""

    shape: tuple[int, ...]


@dataclass(frozen=True)
class Pad:
    """inputs: x. Zero (float) / zero-point (int8) padding of the spatial dims of NHWC."""

    padding: Padding


@dataclass(frozen=True)
class Softmax:
    """inputs: x (1,N). int8 output has scale 1/256 and zero point -128."""

    beta: float = 1.0


@dataclass(frozen=True)
class ActivationOp:
    """A standalone ReLU / ReLU6 (before fusion, or when nothing precedes it to fuse into)."""

    activation: Activation


@dataclass(frozen=True)
class HardSwish:
    """inputs: x."""


@dataclass(frozen=True)
class Logistic:
    """inputs: x (sigmoid)."""


@dataclass(frozen=True)
class BatchNorm:
    """Float graphs only, removed by folding. inputs: x, gamma, beta, running_mean, running_var."""

    eps: float


@dataclass(frozen=True)
class Identity:
    """inputs: x. Dropout and friends in eval mode; removed by passes."""

    source: str = "Identity"


@dataclass(frozen=True)
class Quantize:
    """inputs: x. float->int8, or int8->int8 requantisation (TFLite QUANTIZE)."""

    requantization: Requantization = Requantization.TFLITE


@dataclass(frozen=True)
class Dequantize:
    """inputs: x. int8->float."""


@dataclass(frozen=True)
class Concatenation:
    """inputs: x1..xN (N >= 1), equal shapes except along ``axis`` (non-negative).

    No fused activation: TFLM refuses one on CONCATENATION."""

    axis: int


@dataclass(frozen=True)
class MaxPool2D:
    """inputs: x. Padded pixels never win (the window is clipped to the image, as TFLite)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: Padding = Padding()
    activation: Activation = Activation.NONE


@dataclass(frozen=True)
class StridedSlice:
    """inputs: x. out[i] = x[begin + i * strides] per dimension, same rank as x.

    Normalised: ``begin`` in range, ``strides`` >= 1, the output tensor's shape gives the
    counts. TFLite's SPLIT / SPLIT_V become one StridedSlice per output."""

    begin: tuple[int, ...]
    strides: tuple[int, ...]


@dataclass(frozen=True)
class Transpose:
    """inputs: x (rank <= 4). out.shape[i] == x.shape[perm[i]] (TFLite TRANSPOSE)."""

    perm: tuple[int, ...]


@dataclass(frozen=True)
class PadND:
    """inputs: x (rank <= 4). Pads every dim by ``pads[d] = (before, after)`` with ``value``:
    the stored int8 value (TFLite PAD: the output zero point, PADV2: its constant operand).
    ``ir.Pad`` stays the spatial zero-point case every frontend emits."""

    pads: tuple[tuple[int, int], ...]
    value: int


@dataclass(frozen=True)
class DequantizedActivation:
    """inputs: x. int8 ONNX only: an activation onnxruntime computes in float32 between a
    DequantizeLinear and a QuantizeLinear. ``function`` "HardSigmoid" is
    max(0, min(1, alpha * x + beta)); "HardSwish" is x * HardSigmoid(x) (alpha 1/6, beta 0.5);
    "Sigmoid" is onnxruntime's logistic (also com.microsoft QLinearSigmoid, whose kernel
    builds the same table); "Identity" is x (a requantisation to the output's parameters).
    The kernels look the int8 result up in a 256-entry table (quantize/onnxruntime_params)."""

    function: str
    alpha: float = 1.0 / 6.0
    beta: float = 0.5
    requantization: Requantization = Requantization.ONNXRUNTIME


@dataclass(frozen=True)
class DequantizedMean:
    """inputs: x (1,H,W,C). int8 ONNX only: a ReduceMean over H and W that onnxruntime
    computes in float32 between a DequantizeLinear and a QuantizeLinear (each channel's
    NCHW row summed in Eigen's order, divided by H*W, quantised)."""

    keep_dims: bool = True
    requantization: Requantization = Requantization.ONNXRUNTIME


@dataclass(frozen=True, eq=False)
class StreamedStage:
    """A chain of Conv2D / DepthwiseConv2D nodes computed in row bands (mbgen.streaming):
    only the chain's input and its last output exist whole; each tensor in between lives in
    a window of rows in the stage's scratch. Made just before lowering, never seen by the
    references or the exporters. inputs: x, then the inner nodes' constants; outputs: the
    last inner node's output. ``nodes`` read ``tensors`` (the intermediates) and the
    graph's constants."""

    nodes: tuple[Node, ...]
    tensors: tuple[Tensor, ...]
    band_rows: int          # output rows of the last layer per call
    slack_rows: int         # rows each window holds beyond the minimum (fewer moves)
    chunk_rows: int = 0     # most rows an inner layer computes per call (0: as asked)


OpAttrs = Union[Conv2D, DepthwiseConv2D, FullyConnected, Add, Mul, AveragePool2D, Mean,
                Reshape, Pad, Softmax, ActivationOp, HardSwish, Logistic, BatchNorm,
                Identity, Quantize, Dequantize, Concatenation, MaxPool2D,
                StridedSlice, Transpose, PadND, DequantizedActivation, DequantizedMean,
                StreamedStage]

OP_TYPES: tuple[type, ...] = OpAttrs.__args__  # type: ignore[attr-defined]


def requantization_of(op: OpAttrs) -> Requantization:
    """The op's requantisation arithmetic (TFLITE for ops that have no choice)."""
    return getattr(op, "requantization", Requantization.TFLITE)


def uses_onnxruntime_arithmetic(op: OpAttrs) -> bool:
    """True for ops that requantise as onnxruntime does (float32 scales)."""
    return requantization_of(op) in (Requantization.ONNXRUNTIME,
                                     Requantization.ONNXRUNTIME_UINT8)


def uses_tflite_int8_arithmetic(op: OpAttrs) -> bool:
    """True for ops computed as TFLite's (and TFLM's) int8 kernels compute them: the only
    ones the fixed-point kernel sets (mbgen, cmsis-nn, mve) may take."""
    return requantization_of(op) is Requantization.TFLITE


def op_name(op: OpAttrs) -> str:
    """The op's short name as used in reports ("Conv2D", "Add", ...)."""
    return type(op).__name__


# ----------------------------------------------------------------------------- tensors


@dataclass(frozen=True)
class QuantParams:
    """real = scale * (q - zero_point); per-tensor when ``axis`` is None."""

    scale: np.ndarray        # float32, shape (1,) or (channels,)
    zero_point: np.ndarray   # int32, same shape as scale
    axis: int | None = None  # quantised dimension for per-channel params

    @staticmethod
    def per_tensor(scale: float, zero_point: int) -> "QuantParams":
        return QuantParams(np.array([scale], dtype=np.float32),
                           np.array([zero_point], dtype=np.int32), None)

    @property
    def scalar_scale(self) -> float:
        assert self.scale.size == 1, "per-channel params have no single scale"
        return float(self.scale[0])

    @property
    def scalar_zero_point(self) -> int:
        assert self.zero_point.size == 1, "per-channel params have no single zero point"
        return int(self.zero_point[0])


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str                        # "float32" | "int8" | "int32" | "uint8" (I/O only)
    data: np.ndarray | None = None    # constants only
    quant: QuantParams | None = None

    @property
    def is_const(self) -> bool:
        return self.data is not None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize


@dataclass
class Node:
    name: str
    op: OpAttrs
    inputs: list[str]
    outputs: list[str]


@dataclass
class Graph:
    name: str
    tensors: dict[str, Tensor]
    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]
    metadata: dict[str, str] = field(default_factory=dict)

    def tensor(self, name: str) -> Tensor:
        return self.tensors[name]

    def producer(self, tensor_name: str) -> Node | None:
        for node in self.nodes:
            if tensor_name in node.outputs:
                return node
        return None

    def consumers(self, tensor_name: str) -> list[Node]:
        return [n for n in self.nodes if tensor_name in n.inputs]

    @property
    def is_quantized(self) -> bool:
        # uint8 inputs: int8 models with a uint8 interface (QUANTIZE uint8 -> int8 first)
        return any(self.tensors[n].dtype in ("int8", "uint8") for n in self.inputs)

    def copy(self) -> "Graph":
        """A shallow-structural copy: new dicts/lists/Node objects, shared numpy arrays."""
        return Graph(
            name=self.name,
            tensors={k: Tensor(t.name, t.shape, t.dtype, t.data, t.quant)
                     for k, t in self.tensors.items()},
            nodes=[Node(n.name, n.op, list(n.inputs), list(n.outputs)) for n in self.nodes],
            inputs=list(self.inputs),
            outputs=list(self.outputs),
            metadata=dict(self.metadata),
        )


class GraphError(ValueError):
    """The graph breaks an IR invariant (a bug in a stage, not a user error)."""


def verify(graph: Graph) -> None:
    """Check the invariants every stage may rely on; raise GraphError on the first breach."""
    produced: set[str] = set(graph.inputs)
    names: set[str] = set()
    for name in graph.inputs + graph.outputs:
        if name not in graph.tensors:
            raise GraphError(f"graph input/output {name!r} has no tensor")
    for t in graph.tensors.values():
        if t.is_const:
            produced.add(t.name)
            if tuple(t.data.shape) != tuple(t.shape):
                raise GraphError(f"tensor {t.name}: data shape {t.data.shape} != {t.shape}")
    for node in graph.nodes:
        if node.name in names:
            raise GraphError(f"duplicate node name {node.name!r}")
        names.add(node.name)
        if not isinstance(node.op, OP_TYPES):
            raise GraphError(f"node {node.name}: unknown op attrs {type(node.op).__name__}")
        for name in node.inputs:
            if name not in graph.tensors:
                raise GraphError(f"node {node.name}: input {name!r} has no tensor")
            if name not in produced:
                raise GraphError(f"node {node.name}: input {name!r} used before it is produced")
        for name in node.outputs:
            if name not in graph.tensors:
                raise GraphError(f"node {node.name}: output {name!r} has no tensor")
            if name in produced:
                raise GraphError(f"tensor {name!r} produced twice")
            produced.add(name)
    for name in graph.outputs:
        if name not in produced:
            raise GraphError(f"graph output {name!r} is never produced")
    if graph.is_quantized:
        for node in graph.nodes:
            for name in node.outputs:
                t = graph.tensors[name]
                if t.dtype in ("int8", "uint8") and (t.quant is None or t.quant.scale.size != 1):
                    raise GraphError(f"int8 activation {name!r} needs per-tensor quant params")
