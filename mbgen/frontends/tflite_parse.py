"""Stage 1 of the TFLite frontend: untrusted flatbuffer bytes to plain frozen records.

``_parse`` reads the flatbuffer with the ``tflite`` package's generated schema bindings into
``_RawModel``. Every exception the bindings can raise on corrupt or truncated bytes is caught
here and becomes one ``UserError``; vector lengths are bounded by the file size first, so a
mutated length cannot make us loop for hours. Also the schema's enum values.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from mbgen import ir
from mbgen.errors import UserError

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


# ----------------------------------------------------------------------------- parse


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


def _type_name(code: int) -> str:
    try:
        from tflite import TensorType
        for name, value in vars(TensorType).items():
            if value == code and not name.startswith("_"):
                return name
    except ImportError:
        pass
    return f"#{code}"
