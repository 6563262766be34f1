"""Load a ``.tflite`` flatbuffer into an ``ir.Graph``: int8 models as stored, float models as float.

Three stages, so that untrusted bytes are only touched in one place:

1. ``_parse`` reads the flatbuffer with the ``tflite`` package's generated schema bindings into
   plain frozen records (``_RawModel``). Every exception the bindings can raise on corrupt or
   truncated bytes is caught there and becomes one ``UserError``; vector lengths are bounded
   by the file size first, so a mutated length cannot make us loop for hours.
2. ``_GraphBuilder`` checks each operator (tensor kinds, ranks, shapes, output sizes, quant
   params) and maps it onto an IR op. Quantisation parameters are taken exactly as stored
   (float32 scales, zero points, per-channel axis); nothing is re-quantised.
3. ``ir.verify`` checks the result; a breach is the file's fault, so it is a ``UserError`` too.

Choices worth knowing:

* TF 'SAME' padding becomes the explicit (possibly asymmetric) ``ir.Padding.same``.
* TRANSPOSE, PAD / PADV2 and the uint8 interface: see ``tflite_layout_ops``. A spatial PAD
  with the zero point stays an ``ir.Pad`` node; folding it into the following conv when it pads
  with the zero point is a pass's job, not the frontend's.
* FULLY_CONNECTED takes a flat ``(1, I)`` input in the IR; when the file feeds it a tensor of
  another shape (TFLite flattens implicitly) we insert an explicit ``ir.Reshape`` before it,
  and one after it when ``keep_num_dims`` gives a non-flat output.
* DEPTHWISE_CONV_2D's multiplier must equal output / input channels: TFLM computes with the
  option field whatever the shapes say, so a file where they disagree is refused.
* 1-D per-channel tensors (biases) get axis 0 whatever ``quantized_dimension`` says:
  person_detect's depthwise biases carry 3, which TFLM ignores too.
* A DEQUANTIZE of a constant float16 tensor (float16-compressed float models) is folded into a
  float32 constant.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mbgen import ir
from mbgen.errors import UserError
from mbgen.frontends import tflite_graph_ops
from mbgen.frontends import tflite_layout_ops as layout_ops

_TFLITE_IDENTIFIER = b"TFL3"
_MAX_TENSOR_ELEMENTS = 1 << 31  # anything larger cannot be a microcontroller model

# TensorType values of the TFLite schema.
_FLOAT32, _FLOAT16, _INT32, _UINT8, _INT64, _INT16, _INT8 = 0, 1, 2, 3, 4, 7, 9
_NUMPY_DTYPES = {_FLOAT32: np.float32, _FLOAT16: np.float16, _INT32: np.int32,
                 _UINT8: np.uint8, _INT64: np.int64, _INT16: np.int16, _INT8: np.int8}
_IR_DTYPES = {_FLOAT32: "float32", _INT8: "int8", _INT32: "int32"}

# Padding and ActivationFunctionType values of the TFLite schema.
_SAME, _VALID = 0, 1
_FUSED_ACTIVATIONS = {0: ir.Activation.NONE, 1: ir.Activation.RELU, 3: ir.Activation.RELU6}
_FUSED_ACTIVATION_NAMES = {2: "RELU_N1_TO_1", 4: "TANH", 5: "SIGN_BIT"}

LEGACY_UINT8_HINT = ("re-convert it with full-integer int8 quantisation "
                     "(TFLiteConverter with optimizations=[tf.lite.Optimize.DEFAULT], "
                     "a representative dataset and inference_input_type=tf.int8)")


class _Corrupt(Exception):
    """Raised inside ``_parse`` when our own bounds checks find inconsistent bytes."""


# ----------------------------------------------------------------------------- raw records


@dataclass(frozen=True)
class _RawQuant:
    scale: np.ndarray        # float32
    zero_point: np.ndarray   # int64 as stored
    quantized_dimension: int


@dataclass(frozen=True)
class _RawTensor:
    index: int
    name: str
    type: int
    shape: tuple[int, ...]
    buffer: int
    quant: _RawQuant | None
    is_sparse: bool


@dataclass(frozen=True)
class _RawOptions:
    """The builtin-option fields mbgen reads, with the schema's defaults."""

    kind: int = 0  # the BuiltinOptions union type; 0: no options stored
    padding: int = _SAME
    stride_h: int = 1
    stride_w: int = 1
    dilation_h: int = 1
    dilation_w: int = 1
    filter_h: int = 1
    filter_w: int = 1
    activation: int = 0
    beta: float = 0.0
    keep_dims: bool = False
    keep_num_dims: bool = False
    weights_format: int = 0
    axis: int = 0                  # CONCATENATION
    num_splits: int = 0            # SPLIT, SPLIT_V
    slice_masks: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)  # STRIDED_SLICE: begin,
    slice_offset: bool = False     # end, ellipsis, new-axis and shrink-axis masks; offset
    depth_multiplier: int = 1      # DEPTHWISE_CONV_2D


@dataclass(frozen=True)
class _RawOperator:
    index: int
    builtin: int
    custom_code: str | None
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: _RawOptions


@dataclass(frozen=True)
class _RawModel:
    description: str
    tensors: tuple[_RawTensor, ...]
    operators: tuple[_RawOperator, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    buffers: tuple[bytes, ...]
    subgraph_count: int


# ----------------------------------------------------------------------------- stage 1: parse


def load_tflite(path: str | Path) -> ir.Graph:
    """Read a .tflite file: an int8 model becomes an int8 graph with its stored quantisation,
    a float32 model a float graph. Anything else raises ``UserError`` naming the cause."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the model file ({exc.strerror or exc})") from None
    model = _parse(data, path.name)
    return _GraphBuilder(model, path).build()


def _parse(data: bytes, label: str) -> _RawModel:
    if len(data) < 8 or data[4:8] != _TFLITE_IDENTIFIER:
        raise UserError(f"{label}: not a TFLite model (no 'TFL3' flatbuffer identifier)")
    try:
        import tflite
    except ImportError:
        raise UserError("reading .tflite files needs the 'tflite' package: "
                        "pip install 'tflite>=2.10'") from None
    try:
        return _read_model(tflite, data)
    except UserError:
        raise
    except _Corrupt as exc:
        raise UserError(f"{label}: corrupt TFLite file ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - any failure of the bindings on bad bytes
        # Covers IndexError, struct.error, UnicodeDecodeError, ValueError, TypeError,
        # OverflowError, MemoryError and RecursionError raised by flatbuffers on bad offsets.
        cause = ("an offset points outside the file"
                 if isinstance(exc, (struct.error, IndexError)) else type(exc).__name__)
        raise UserError(f"{label}: corrupt or truncated TFLite file ({cause})") from None


def _bounded(count: int, element_bytes: int, data: bytes, what: str) -> int:
    """A vector of ``count`` elements must fit in the file; else the length field is bad."""
    if count < 0 or count * element_bytes > len(data):
        raise _Corrupt(f"{what} claims {count} entries, more than the file can hold")
    return count


def _int_vector(get_numpy, is_none) -> tuple[int, ...]:
    if is_none():
        return ()
    return tuple(int(v) for v in get_numpy())


def _read_model(tflite, data: bytes) -> _RawModel:
    model = tflite.Model.GetRootAsModel(data, 0)
    subgraph_count = _bounded(model.SubgraphsLength(), 4, data, "subgraph list")
    if subgraph_count == 0:
        raise _Corrupt("the model has no subgraph")
    subgraph = model.Subgraphs(0)
    if subgraph is None:
        raise _Corrupt("subgraph 0 is missing")

    opcode_count = _bounded(model.OperatorCodesLength(), 4, data, "operator-code list")
    opcodes: list[tuple[int, str | None]] = []
    for j in range(opcode_count):
        code = model.OperatorCodes(j)
        builtin = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
        custom = code.CustomCode()
        opcodes.append((builtin, custom.decode("utf-8", "replace") if custom is not None else None))

    buffer_count = _bounded(model.BuffersLength(), 4, data, "buffer list")
    buffers = tuple(_read_buffer(model.Buffers(j), data) for j in range(buffer_count))

    tensor_count = _bounded(subgraph.TensorsLength(), 4, data, "tensor list")
    tensors = tuple(_read_tensor(subgraph.Tensors(j), j, data) for j in range(tensor_count))

    operator_count = _bounded(subgraph.OperatorsLength(), 4, data, "operator list")
    operators = []
    for j in range(operator_count):
        op = subgraph.Operators(j)
        index = int(op.OpcodeIndex())
        if not 0 <= index < len(opcodes):
            raise _Corrupt(f"operator {j} uses operator code {index} of {len(opcodes)}")
        builtin, custom = opcodes[index]
        operators.append(_RawOperator(
            index=j, builtin=builtin, custom_code=custom,
            inputs=_int_vector(op.InputsAsNumpy, op.InputsIsNone),
            outputs=_int_vector(op.OutputsAsNumpy, op.OutputsIsNone),
            options=_read_options(tflite, op)))

    description = model.Description()
    return _RawModel(
        description=description.decode("utf-8", "replace") if description else "",
        tensors=tensors,
        operators=tuple(operators),
        inputs=_int_vector(subgraph.InputsAsNumpy, subgraph.InputsIsNone),
        outputs=_int_vector(subgraph.OutputsAsNumpy, subgraph.OutputsIsNone),
        buffers=buffers,
        subgraph_count=subgraph_count,
    )


def _read_buffer(buffer, data: bytes) -> bytes:
    offset, size = int(buffer.Offset()), int(buffer.Size())
    if offset > 1:  # large models keep buffers after the flatbuffer, addressed by offset
        if size < 0 or offset + size > len(data):
            raise _Corrupt(f"a buffer at offset {offset} (+{size}) lies outside the file")
        return bytes(data[offset:offset + size])
    if buffer.DataIsNone():
        return b""
    _bounded(buffer.DataLength(), 1, data, "buffer")
    return buffer.DataAsNumpy().tobytes()


def _read_tensor(tensor, index: int, data: bytes) -> _RawTensor:
    shape = _int_vector(tensor.ShapeAsNumpy, tensor.ShapeIsNone)
    name = tensor.Name()
    quant = None
    q = tensor.Quantization()
    if q is not None and not q.ScaleIsNone():
        _bounded(q.ScaleLength(), 4, data, "scale vector")
        _bounded(q.ZeroPointLength(), 8, data, "zero-point vector")
        zero_point = (np.zeros(0, np.int64) if q.ZeroPointIsNone()
                      else np.array(q.ZeroPointAsNumpy(), dtype=np.int64))
        quant = _RawQuant(scale=np.array(q.ScaleAsNumpy(), dtype=np.float32),
                          zero_point=zero_point,
                          quantized_dimension=int(q.QuantizedDimension()))
    return _RawTensor(
        index=index,
        name=name.decode("utf-8", "replace") if name else "",
        type=int(tensor.Type()),
        shape=shape,
        buffer=int(tensor.Buffer()),
        quant=quant,
        is_sparse=tensor.Sparsity() is not None,
    )


def _read_options(tflite, op) -> _RawOptions:
    kind = int(op.BuiltinOptionsType())
    table = op.BuiltinOptions()
    if table is None or kind == 0:
        return _RawOptions()
    kinds = tflite.BuiltinOptions

    def view(cls):
        opts = cls()
        opts.Init(table.Bytes, table.Pos)
        return opts

    if kind == kinds.Conv2DOptions:
        o = view(tflite.Conv2DOptions)
        return _RawOptions(kind, o.Padding(), o.StrideH(), o.StrideW(), o.DilationHFactor(),
                           o.DilationWFactor(), activation=o.FusedActivationFunction())
    if kind == kinds.DepthwiseConv2DOptions:
        o = view(tflite.DepthwiseConv2DOptions)
        return _RawOptions(kind, o.Padding(), o.StrideH(), o.StrideW(), o.DilationHFactor(),
                           o.DilationWFactor(), activation=o.FusedActivationFunction(),
                           depth_multiplier=o.DepthMultiplier())
    if kind == kinds.Pool2DOptions:
        o = view(tflite.Pool2DOptions)
        return _RawOptions(kind, o.Padding(), o.StrideH(), o.StrideW(),
                           filter_h=o.FilterHeight(), filter_w=o.FilterWidth(),
                           activation=o.FusedActivationFunction())
    if kind == kinds.FullyConnectedOptions:
        o = view(tflite.FullyConnectedOptions)
        return _RawOptions(kind, activation=o.FusedActivationFunction(),
                           keep_num_dims=bool(o.KeepNumDims()),
                           weights_format=o.WeightsFormat())
    if kind == kinds.AddOptions:
        return _RawOptions(kind, activation=view(tflite.AddOptions).FusedActivationFunction())
    if kind == kinds.MulOptions:
        return _RawOptions(kind, activation=view(tflite.MulOptions).FusedActivationFunction())
    if kind == kinds.SoftmaxOptions:
        return _RawOptions(kind, beta=float(view(tflite.SoftmaxOptions).Beta()))
    if kind == kinds.ReducerOptions:
        return _RawOptions(kind, keep_dims=bool(view(tflite.ReducerOptions).KeepDims()))
    if kind == kinds.ConcatenationOptions:
        o = view(tflite.ConcatenationOptions)
        return _RawOptions(kind, axis=int(o.Axis()), activation=o.FusedActivationFunction())
    if kind in (kinds.SplitOptions, kinds.SplitVOptions):
        o = view(tflite.SplitOptions if kind == kinds.SplitOptions else tflite.SplitVOptions)
        return _RawOptions(kind, num_splits=int(o.NumSplits()))
    if kind == kinds.StridedSliceOptions:
        o = view(tflite.StridedSliceOptions)
        return _RawOptions(kind, slice_masks=(o.BeginMask(), o.EndMask(), o.EllipsisMask(),
                                              o.NewAxisMask(), o.ShrinkAxisMask()),
                           slice_offset=bool(o.Offset()))
    return _RawOptions(kind)


# ----------------------------------------------------------------------------- stage 2: build


def _op_label(builtin: int, custom_code: str | None) -> str:
    if custom_code is not None and builtin == 32:  # CUSTOM
        return f"custom op {custom_code!r}"
    from tflite.utils import BUILTIN_OPCODE2NAME
    return BUILTIN_OPCODE2NAME.get(builtin, f"builtin op {builtin}")


class _GraphBuilder:
    """Turns validated raw records into IR tensors and nodes, one operator at a time."""

    def __init__(self, model: _RawModel, path: Path):
        self.model = model
        self.label = path.name
        self.graph_name = path.stem
        self.ir_names = self._unique_names()
        self.tensors: dict[str, ir.Tensor] = {}
        self.nodes: list[ir.Node] = []
        self.folded_data: dict[int, np.ndarray] = {}  # float16 DEQUANTIZE outputs, as float32
        self.op: _RawOperator | None = None  # the operator being converted (for messages)
        self.uint8_io = layout_ops.uint8_interface(model)  # uint8 input/output QUANTIZEs

    # ---- errors

    def fail(self, message: str) -> UserError:
        if self.op is None:
            return UserError(f"{self.label}: {message}")
        outs = [self.tname(i) for i in self.op.outputs if 0 <= i < len(self.model.tensors)]
        where = f" -> {outs[0]!r}" if outs else ""
        return UserError(f"{self.label}: operator {self.op.index} "
                         f"({_op_label(self.op.builtin, self.op.custom_code)}{where}): {message}")

    def expect(self, condition: bool, message: str) -> None:
        if not condition:
            raise self.fail(message)

    # ---- names and tensors

    def _unique_names(self) -> list[str]:
        names, seen = [], set()
        for t in self.model.tensors:
            name = t.name or f"tensor_{t.index}"
            if name in seen:
                name = f"{name}_{t.index}"
            while name in seen:
                name += "_"
            seen.add(name)
            names.append(name)
        return names

    def tname(self, index: int) -> str:
        return self.ir_names[index]

    def fresh_name(self, base: str) -> str:
        name, k = base, 1
        taken = set(self.ir_names) | set(self.tensors)
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        return name

    def raw(self, index: int) -> _RawTensor:
        self.expect(0 <= index < len(self.model.tensors),
                    f"tensor index {index} out of range (the model has "
                    f"{len(self.model.tensors)} tensors)")
        return self.model.tensors[index]

    def const_data(self, t: _RawTensor) -> np.ndarray | None:
        """The tensor's constant value in its stored dtype, or None for an activation."""
        if t.index in self.folded_data:
            return self.folded_data[t.index]
        if not 0 <= t.buffer < len(self.model.buffers):
            raise self.fail(f"tensor {self.tname(t.index)!r} uses buffer {t.buffer} of "
                            f"{len(self.model.buffers)}")
        raw = self.model.buffers[t.buffer]
        if not raw:
            return None
        dtype = _NUMPY_DTYPES.get(t.type)
        if dtype is None:
            raise self.fail(f"constant tensor {self.tname(t.index)!r} has unsupported type "
                            f"{t.type}")
        count = self.element_count(t)
        if len(raw) != count * np.dtype(dtype).itemsize:
            raise self.fail(f"constant tensor {self.tname(t.index)!r} of shape {t.shape} has "
                            f"{len(raw)} bytes of data")
        return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(
            dtype).reshape(t.shape)

    def element_count(self, t: _RawTensor) -> int:
        if any(d < 0 for d in t.shape):
            raise self.fail(f"tensor {self.tname(t.index)!r} has a negative dimension {t.shape}")
        count = math.prod(t.shape)
        if count > _MAX_TENSOR_ELEMENTS:
            raise self.fail(f"tensor {self.tname(t.index)!r} is implausibly large {t.shape}")
        return count

    def quant_params(self, t: _RawTensor) -> ir.QuantParams:
        q = t.quant
        name = self.tname(t.index)
        if q is None or q.scale.size == 0:
            raise self.fail(f"int8/int32 tensor {name!r} has no quantisation parameters")
        zero_point = q.zero_point if q.zero_point.size else np.zeros(q.scale.size, np.int64)
        if zero_point.size != q.scale.size:
            raise self.fail(f"tensor {name!r} has {q.scale.size} scales but "
                            f"{zero_point.size} zero points")
        if not np.all(np.isfinite(q.scale)) or np.any(q.scale <= 0):
            raise self.fail(f"tensor {name!r} has a non-positive or non-finite scale")
        low, high = {_INT8: (-128, 127), _UINT8: (0, 255)}.get(
            t.type, (-(1 << 31), (1 << 31) - 1))
        if np.any(zero_point < low) or np.any(zero_point > high):
            raise self.fail(f"tensor {name!r} has a zero point outside [{low}, {high}]")
        axis = None
        if q.scale.size > 1:
            # 1-D per-channel tensors (biases) can only be quantised along axis 0, whatever
            # the file says (person_detect's depthwise biases say 3; TFLM ignores it too).
            axis = 0 if len(t.shape) == 1 else q.quantized_dimension
            if not 0 <= axis < len(t.shape) or t.shape[axis] != q.scale.size:
                raise self.fail(f"tensor {name!r} of shape {t.shape} has {q.scale.size} "
                                f"scales along axis {q.quantized_dimension}")
        return ir.QuantParams(scale=q.scale.astype(np.float32),
                              zero_point=zero_point.astype(np.int32), axis=axis)

    def tensor(self, index: int, const: bool | None = None) -> str:
        """Create (once) the IR tensor for a raw tensor index and return its name.

        ``const`` True/False demands a constant / an activation; None accepts either."""
        t = self.raw(index)
        name = self.tname(index)
        if t.is_sparse:
            raise self.fail(f"tensor {name!r} is sparse; sparse tensors are not supported")
        data = self.const_data(t)
        if const is True and data is None:
            raise self.fail(f"tensor {name!r} must be a constant")
        if const is False and data is not None:
            raise self.fail(f"tensor {name!r} must not be a constant")
        if name in self.tensors:
            return name
        if t.type == _UINT8 and t.index not in self.uint8_io:
            raise self.fail(self.legacy_message())
        if t.index in self.folded_data:
            dtype = "float32"
        elif t.type == _UINT8:
            dtype = "uint8"
        elif t.type in _IR_DTYPES:
            dtype = _IR_DTYPES[t.type]
        elif t.type == _INT16:
            raise self.fail(f"tensor {name!r} is int16 (16x8 quantisation); "
                            "mbgen supports int8 models only")
        else:
            raise self.fail(f"tensor {name!r} has unsupported type "
                            f"{_type_name(t.type)}")
        self.element_count(t)
        if dtype == "int32" and data is None:
            raise self.fail(f"int32 activation {name!r} is not supported")
        quant = self.quant_params(t) if dtype != "float32" else None
        if dtype in ("int8", "uint8") and data is None and quant.scale.size != 1:
            raise self.fail(f"int8 activation {name!r} must be quantised per tensor")
        if data is not None:
            data = np.array(data, dtype=dtype)  # own, writable copy
        self.tensors[name] = ir.Tensor(name, tuple(t.shape), dtype, data, quant)
        return name

    def legacy_message(self) -> str:
        return (f"{self.label} is a uint8 (legacy) TFLite model; TFLM and mbgen support int8 "
                f"models only: {LEGACY_UINT8_HINT}")

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    def add_node(self, op: ir.OpAttrs, inputs: list[str], outputs: list[str]) -> None:
        self.nodes.append(ir.Node(self.fresh_node_name(outputs[0]), op, inputs, outputs))

    def fresh_node_name(self, base: str) -> str:
        taken = {n.name for n in self.nodes}
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        return name

    def derived_tensor(self, like: str, base: str, shape: tuple[int, ...]) -> str:
        """A new activation with ``like``'s dtype and quantisation (for inserted reshapes)."""
        src = self.tensors[like]
        name = self.fresh_name(base)
        self.tensors[name] = ir.Tensor(name, shape, src.dtype, None, src.quant)
        return name

    # ---- whole graph

    def build(self) -> ir.Graph:
        model = self.model
        uint8 = [t for t in model.tensors if t.type == _UINT8]
        stray = [t for t in uint8 if t.index not in self.uint8_io]
        if stray and any(t.type == _INT8 for t in model.tensors):
            raise self.fail(f"tensor {self.tname(stray[0].index)!r} is uint8: int8 models with "
                            "a uint8 interface are supported only as a QUANTIZE uint8->int8 "
                            "reading the input and a QUANTIZE int8->uint8 writing the output; "
                            "re-convert with inference_input_type=tf.int8 and "
                            "inference_output_type=tf.int8")
        if stray:
            raise UserError(self.legacy_message())
        for t in model.tensors:  # TFLM's allocator reads every tensor's buffer, used or not
            self.expect(0 <= t.buffer < len(model.buffers), f"tensor {self.tname(t.index)!r} "
                        f"uses buffer {t.buffer} of {len(model.buffers)}")
        self.expect(len(model.inputs) > 0, "the model has no inputs")
        self.expect(len(model.outputs) > 0, "the model has no outputs")
        inputs = [self.tensor(i, const=False) for i in model.inputs]
        for raw_op in model.operators:
            self.op = raw_op
            self.convert(raw_op)
        self.op = None
        outputs = [self.tensor(i) for i in model.outputs]
        self._check_kinds(inputs)
        graph = ir.Graph(
            name=self.graph_name,
            tensors=self.tensors,
            nodes=self.nodes,
            inputs=inputs,
            outputs=outputs,
            metadata={"source_format": "tflite", "description": model.description},
        )
        try:
            ir.verify(graph)
        except ir.GraphError as exc:
            raise UserError(f"{self.label}: malformed model ({exc})") from None
        return graph

    def _check_kinds(self, inputs: list[str]) -> None:
        """A graph is int8 (activations int8, maybe float at the edges) or float, not hybrid."""
        for node in self.nodes:
            if isinstance(node.op, (ir.Conv2D, ir.DepthwiseConv2D, ir.FullyConnected)):
                x, w = self.tensors[node.inputs[0]], self.tensors[node.inputs[1]]
                if x.dtype != w.dtype:
                    raise UserError(
                        f"{self.label}: layer {node.name!r} has {x.dtype} input and {w.dtype} "
                        "weights (a hybrid / dynamic-range model); mbgen needs a full int8 or "
                        "a float32 model")

    # ---- operators

    def convert(self, op: _RawOperator) -> None:
        from tflite import BuiltinOperator as B

        handlers = {
            B.CONV_2D: self.conv2d,
            B.DEPTHWISE_CONV_2D: self.depthwise_conv2d,
            B.FULLY_CONNECTED: self.fully_connected,
            B.ADD: self.add,
            B.MUL: self.mul,
            B.AVERAGE_POOL_2D: self.average_pool,
            B.MEAN: self.mean,
            B.RESHAPE: self.reshape,
            B.SQUEEZE: self.reshape,
            B.SOFTMAX: self.softmax,
            B.PAD: lambda: layout_ops.convert_pad(self),
            B.PADV2: lambda: layout_ops.convert_pad(self),
            B.TRANSPOSE: lambda: layout_ops.convert_transpose(self),
            B.QUANTIZE: lambda: self.unary(ir.Quantize()),
            B.DEQUANTIZE: self.dequantize,
            B.HARD_SWISH: lambda: self.unary(ir.HardSwish()),
            B.LOGISTIC: lambda: self.unary(ir.Logistic()),
            B.RELU: lambda: self.unary(ir.ActivationOp(ir.Activation.RELU)),
            B.RELU6: lambda: self.unary(ir.ActivationOp(ir.Activation.RELU6)),
            **{code: (lambda f=f: f(self)) for code, f in tflite_graph_ops.HANDLERS.items()},
        }
        handler = handlers.get(op.builtin)
        if handler is None:
            raise self.fail("operator not supported by mbgen")
        expected = _expected_options(op.builtin)
        self.expect(op.options.kind in (0, expected) or expected is None,
                    f"builtin options of type {op.options.kind} do not belong to this operator")
        if op.builtin not in tflite_graph_ops.MULTI_OUTPUT:
            self.expect(len(op.outputs) == 1, f"expected 1 output, found {len(op.outputs)}")
        for index in op.inputs + op.outputs:  # also operands a handler ignores (-1: absent)
            if index != -1 or index in op.outputs:
                self.raw(index)
        handler()

    def inputs(self, minimum: int, maximum: int) -> list[int]:
        ins = list(self.op.inputs)
        # Optional inputs are -1; trailing ones may be left out.
        self.expect(minimum <= len(ins) <= maximum,
                    f"expected {minimum}..{maximum} inputs, found {len(ins)}")
        return ins + [-1] * (maximum - len(ins))

    def output(self) -> str:
        return self.tensor(self.op.outputs[0], const=False)

    def activation(self) -> ir.Activation:
        code = self.op.options.activation
        if code in _FUSED_ACTIVATIONS:
            return _FUSED_ACTIVATIONS[code]
        name = _FUSED_ACTIVATION_NAMES.get(code, f"#{code}")
        raise self.fail(f"fused activation {name} is not supported (only RELU and RELU6)")

    def require_options(self) -> _RawOptions:
        opts = self.op.options
        self.expect(opts.kind != 0, "builtin options are missing")
        return opts

    def padding(self, opts: _RawOptions, in_h: int, in_w: int, k_h: int, k_w: int,
                s_h: int, s_w: int, d_h: int, d_w: int) -> ir.Padding:
        if opts.padding == _SAME:
            return ir.Padding.same(in_h, in_w, k_h, k_w, s_h, s_w, d_h, d_w)
        if opts.padding == _VALID:
            return ir.Padding()
        raise self.fail(f"unknown padding type {opts.padding}")

    def windowed(self, x: str, k_h: int, k_w: int, out: str,
                 channels: int) -> tuple[tuple[int, int], tuple[int, int], ir.Padding]:
        """Stride, dilation and explicit padding of a conv/pool; checks the output shape."""
        opts = self.require_options()
        stride = (opts.stride_h, opts.stride_w)
        dilation = (opts.dilation_h, opts.dilation_w)
        self.expect(min(stride) >= 1 and min(dilation) >= 1 and k_h >= 1 and k_w >= 1,
                    f"invalid stride {stride}, dilation {dilation} or kernel {(k_h, k_w)}")
        _, in_h, in_w, _ = self.shape(x)
        pad = self.padding(opts, in_h, in_w, k_h, k_w, *stride, *dilation)
        out_h = (in_h + pad.top + pad.bottom - ((k_h - 1) * dilation[0] + 1)) // stride[0] + 1
        out_w = (in_w + pad.left + pad.right - ((k_w - 1) * dilation[1] + 1)) // stride[1] + 1
        expected = (1, out_h, out_w, channels)
        self.expect(out_h >= 1 and out_w >= 1 and self.shape(out) == expected,
                    f"output shape {self.shape(out)} does not match the expected {expected}")
        return stride, dilation, pad

    def image(self, name: str) -> tuple[int, int, int, int]:
        shape = self.shape(name)
        self.expect(len(shape) == 4 and shape[0] == 1,
                    f"tensor {name!r} must be NHWC with batch 1, not {shape}")
        return shape  # type: ignore[return-value]

    def bias(self, index: int, channels: int) -> list[str]:
        if index < 0:
            return []
        b = self.tensor(index, const=True)
        self.expect(self.shape(b) == (channels,),
                    f"bias {b!r} has shape {self.shape(b)}, expected ({channels},)")
        return [b]

    def check_weights(self, w: str, axis: int) -> None:
        """int8 weights: symmetric, per tensor or per channel along ``axis``."""
        t = self.tensors[w]
        if t.dtype != "int8":
            return
        q = t.quant
        self.expect(bool(np.all(q.zero_point == 0)), f"int8 weights {w!r} must have zero point 0")
        self.expect(q.axis is None or q.axis == axis,
                    f"weights {w!r} are quantised along axis {q.axis}, expected {axis}")

    def conv2d(self) -> None:
        ix, iw, ib = self.inputs(2, 3)
        x, w, out = self.tensor(ix, const=False), self.tensor(iw, const=True), self.output()
        _, _, _, in_c = self.image(x)
        w_shape = self.shape(w)
        self.expect(len(w_shape) == 4, f"weights {w!r} must be OHWI, not {w_shape}")
        o, k_h, k_w, i = w_shape
        self.expect(i == in_c, f"weights {w!r} expect {i} input channels, the input has {in_c} "
                               "(grouped convolution is not supported)")
        self.image(out)
        stride, dilation, pad = self.windowed(x, k_h, k_w, out, o)
        self.check_weights(w, 0)
        self.add_node(ir.Conv2D(stride=stride, padding=pad, dilation=dilation,
                                activation=self.activation()),
                      [x, w] + self.bias(ib, o), [out])

    def depthwise_conv2d(self) -> None:
        ix, iw, ib = self.inputs(2, 3)
        x, w, out = self.tensor(ix, const=False), self.tensor(iw, const=True), self.output()
        _, _, _, in_c = self.image(x)
        w_shape = self.shape(w)
        self.expect(len(w_shape) == 4 and w_shape[0] == 1,
                    f"depthwise weights {w!r} must be 1HWC, not {w_shape}")
        _, k_h, k_w, out_c = w_shape
        self.expect(in_c > 0 and out_c % in_c == 0 and out_c > 0,
                    f"depthwise weights {w!r} have {out_c} channels for {in_c} input channels")
        multiplier = self.require_options().depth_multiplier
        self.expect(multiplier == out_c // in_c,
                    f"depth_multiplier {multiplier} contradicts {in_c} input and {out_c} output "
                    "channels (TFLM computes with the option, not the shapes)")
        self.image(out)
        stride, dilation, pad = self.windowed(x, k_h, k_w, out, out_c)
        self.check_weights(w, 3)
        self.add_node(ir.DepthwiseConv2D(stride=stride, padding=pad,
                                         depth_multiplier=out_c // in_c, dilation=dilation,
                                         activation=self.activation()),
                      [x, w] + self.bias(ib, out_c), [out])

    def fully_connected(self) -> None:
        ix, iw, ib = self.inputs(2, 3)
        x, w, out = self.tensor(ix, const=False), self.tensor(iw, const=True), self.output()
        self.expect(self.op.options.weights_format == 0, "only the default weights format "
                                                         "is supported (not shuffled)")
        w_shape = self.shape(w)
        self.expect(len(w_shape) == 2, f"weights {w!r} must be (O, I), not {w_shape}")
        o, i = w_shape
        self.expect(math.prod(self.shape(x)) == i and self.shape(x)[:1] == (1,),
                    f"input {x!r} of shape {self.shape(x)} is not one row of {i} values")
        self.expect(math.prod(self.shape(out)) == o,
                    f"output shape {self.shape(out)} does not hold {o} values")
        self.check_weights(w, 0)
        activation = self.activation()
        if self.shape(x) != (1, i):  # TFLite flattens implicitly; the IR wants it explicit
            flat = self.derived_tensor(x, f"{x}/flatten", (1, i))
            self.add_node(ir.Reshape((1, i)), [x], [flat])
            x = flat
        result = out
        if self.shape(out) != (1, o):
            result = self.derived_tensor(out, f"{out}/flat", (1, o))
        self.add_node(ir.FullyConnected(activation=activation), [x, w] + self.bias(ib, o),
                      [result])
        if result != out:
            self.add_node(ir.Reshape(self.shape(out)), [result], [out])

    def operands(self) -> tuple[str, str, str]:
        ia, ib = self.inputs(2, 2)
        return self.tensor(ia), self.tensor(ib), self.output()

    def add(self) -> None:
        """ADD, also with broadcasting (Keras' hard sigmoid adds a constant 3)."""
        a, b, out = self.broadcast_operands("+", "ADD")
        self.add_node(ir.Add(activation=self.activation()), [a, b], [out])

    def mul(self) -> None:
        a, b, out = self.broadcast_operands("*", "MUL")
        self.add_node(ir.Mul(activation=self.activation()), [a, b], [out])

    def broadcast_operands(self, sign: str, name: str) -> tuple[str, str, str]:
        a, b, out = self.operands()
        sa, sb, so = self.shape(a), self.shape(b), self.shape(out)
        try:
            broadcast = tuple(np.broadcast_shapes(sa, sb))
        except ValueError:
            broadcast = None
        self.expect(broadcast == tuple(so) and len(so) <= 4,
                    f"shapes {sa} {sign} {sb} -> {so}: {name} operands must broadcast to "
                    "the output (rank 4 or less)")
        self.expect(not (self.tensors[a].is_const and self.tensors[b].is_const),
                    f"{name} of two constants")
        return a, b, out

    def average_pool(self) -> None:
        (ix,) = self.inputs(1, 1)
        x, out = self.tensor(ix, const=False), self.output()
        channels = self.image(x)[3]
        opts = self.require_options()
        stride, _, pad = self.windowed(x, opts.filter_h, opts.filter_w, out, channels)
        self.expect(opts.dilation_h == 1 and opts.dilation_w == 1, "dilated pooling")
        self.same_quant(x, out)
        self.add_node(ir.AveragePool2D(kernel=(opts.filter_h, opts.filter_w), stride=stride,
                                       padding=pad, activation=self.activation()), [x], [out])

    def same_quant(self, x: str, out: str) -> None:
        qx, qo = self.tensors[x].quant, self.tensors[out].quant
        if qx is None and qo is None:
            return
        self.expect(qx is not None and qo is not None
                    and np.array_equal(qx.scale, qo.scale)
                    and np.array_equal(qx.zero_point, qo.zero_point),
                    f"input {x!r} and output {out!r} must share scale and zero point")

    def attribute(self, index: int, what: str) -> np.ndarray:
        """An integer constant operand read as an attribute (never an IR tensor)."""
        t = self.raw(index)
        data = self.const_data(t)
        self.expect(data is not None and t.type in (_INT32, _INT64),
                    f"{what} tensor {self.tname(index)!r} must be an int32/int64 constant")
        return np.asarray(data, dtype=np.int64)

    def mean(self) -> None:
        ix, iaxes = self.inputs(2, 2)
        x, out = self.tensor(ix, const=False), self.output()
        rank = len(self.shape(x))
        axes = self.attribute(iaxes, "axes").reshape(-1)
        self.expect(bool(np.all((axes >= -rank) & (axes < rank))),
                    f"axes {axes.tolist()} out of range for rank {rank}")
        axes_t = tuple(sorted({int(a) % rank for a in axes}))
        keep = self.op.options.keep_dims
        expected = tuple(1 if d in axes_t else n for d, n in enumerate(self.shape(x))
                         if keep or d not in axes_t)
        self.expect(self.shape(out) == expected,
                    f"output shape {self.shape(out)} does not match the expected {expected}")
        self.add_node(ir.Mean(axes=axes_t, keep_dims=keep), [x], [out])

    def reshape(self) -> None:
        ix = self.inputs(1, 2)[0]  # the output tensor's shape is the authority
        x, out = self.tensor(ix, const=False), self.output()
        self.expect(math.prod(self.shape(x)) == math.prod(self.shape(out)),
                    f"cannot reshape {self.shape(x)} to {self.shape(out)}")
        self.same_quant(x, out)
        self.add_node(ir.Reshape(self.shape(out)), [x], [out])

    def softmax(self) -> None:
        (ix,) = self.inputs(1, 1)
        x, out = self.tensor(ix, const=False), self.output()
        beta = self.require_options().beta
        self.expect(math.isfinite(beta) and beta > 0, f"invalid softmax beta {beta}")
        self.expect(self.shape(x) == self.shape(out), "input and output shapes differ")
        self.add_node(ir.Softmax(beta=beta), [x], [out])

    def unary(self, op: ir.OpAttrs) -> None:
        (ix,) = self.inputs(1, 1)
        x, out = self.tensor(ix, const=False), self.output()
        self.expect(self.shape(x) == self.shape(out),
                    f"input shape {self.shape(x)} differs from output shape {self.shape(out)}")
        self.add_node(op, [x], [out])

    def dequantize(self) -> None:
        (ix,) = self.inputs(1, 1)
        src = self.raw(ix)
        if src.type == _FLOAT16:  # float16-compressed weights: fold into a float32 constant
            data = self.const_data(src)
            self.expect(data is not None, "DEQUANTIZE of a float16 activation")
            out = self.raw(self.op.outputs[0])
            self.expect(out.type == _FLOAT32 and out.shape == src.shape,
                        "float16 DEQUANTIZE must give a float32 tensor of the same shape")
            self.folded_data[out.index] = data.astype(np.float32)
            return
        self.unary(ir.Dequantize())


def _expected_options(builtin: int) -> int | None:
    """The BuiltinOptions type of the operators whose options we read."""
    from tflite import BuiltinOperator as B
    from tflite import BuiltinOptions as O
    return {B.CONV_2D: O.Conv2DOptions, B.DEPTHWISE_CONV_2D: O.DepthwiseConv2DOptions,
            B.FULLY_CONNECTED: O.FullyConnectedOptions, B.ADD: O.AddOptions,
            B.MUL: O.MulOptions, B.AVERAGE_POOL_2D: O.Pool2DOptions,
            B.MEAN: O.ReducerOptions, B.SOFTMAX: O.SoftmaxOptions,
            **tflite_graph_ops.OPTIONS}.get(builtin)


def _type_name(code: int) -> str:
    try:
        from tflite import TensorType
        for name, value in vars(TensorType).items():
            if value == code and not name.startswith("_"):
                return name
    except ImportError:
        pass
    return f"#{code}"
