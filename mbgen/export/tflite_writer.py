"""Write an mbgen graph as a TFLite flatbuffer that TFLM can run.

This is how TFLM becomes an independent reference for graphs mbgen made itself (quantised
zoo models, single-op test graphs, truncated graphs for locating a mismatch): write the graph,
run the file in TFLM, compare with our reference and our C.

The flatbuffer is built with the Object API (``ModelT(...).Pack``) of the schema bindings that
ship in the ``tflite-micro`` wheel; the ``tflite`` package's bindings can only read. Constant
buffers are 16-byte aligned, as TFLite's schema asks (``force_align: 16``).

Mapping (operator versions as TFLite's converter assigns them for int8):

* Conv2D / DepthwiseConv2D: padding that is TF 'SAME' or none becomes SAME / VALID; any other
  explicit padding becomes a PAD operator (padding with the input zero point, i.e. real 0)
  followed by a VALID convolution.
* AveragePool2D needs SAME or VALID: a PAD operator would change the divisor.
* Mean becomes MEAN (axes as an int32 constant), Reshape becomes RESHAPE with its shape
  constant, Pad becomes PAD, ActivationOp becomes RELU / RELU6.
* Concatenation, MaxPool2D and StridedSlice: see ``tflite_graph_ops`` (runs of slices
  that split one tensor become SPLIT / SPLIT_V again).
* Transpose becomes TRANSPOSE (perm as an int32 constant); PadND becomes PAD when it pads
  with the output zero point, else PADV2 with a scalar constant in the output's quantisation.
* uint8 tensors (a uint8 interface: QUANTIZE uint8 -> int8 first, int8 -> uint8 last) are
  written as UINT8.
* BatchNorm and Identity have no TFLite form; run the passes first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mbgen import ir
from mbgen.errors import UserError
from mbgen.export import tflite_graph_ops

_BUFFER_ALIGNMENT = 16
_PLACEHOLDER_FOR_GREATER_OP_CODES = 127  # deprecated_builtin_code for codes above 127
_SCHEMA_VERSION = 3

_TENSOR_TYPES = {"float32": 0, "int32": 2, "uint8": 3, "int8": 9}
_ACTIVATIONS = {ir.Activation.NONE: 0, ir.Activation.RELU: 1, ir.Activation.RELU6: 3}
_SAME, _VALID = 0, 1


def _schema():
    try:
        from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema
    except ImportError:
        raise UserError("writing .tflite files needs the schema of the tflite-micro package: "
                        "pip install tflite-micro") from None
    return schema


def write_tflite(graph: ir.Graph, path: str | Path) -> Path:
    """Write ``graph`` (int8, or float) as a .tflite file at ``path``; return the path."""
    path = Path(path)
    path.write_bytes(tflite_bytes(graph))
    return path


def tflite_bytes(graph: ir.Graph) -> bytes:
    """The .tflite flatbuffer of ``graph``."""
    ir.verify(graph)
    for node in graph.nodes:  # TFLite would run these with its fixed-point arithmetic
        if not ir.uses_tflite_int8_arithmetic(node.op):
            raise UserError(f"cannot write {graph.name!r} as .tflite: layer {node.name!r} "
                            "requantises as onnxruntime or legacy uint8 TFLite does, which "
                            "TFLite's int8 kernels compute differently")
    return _ModelWriter(graph, _schema()).serialize()


@dataclass(frozen=True)
class _OpCode:
    builtin: int
    version: int


class _ModelWriter:
    def __init__(self, graph: ir.Graph, schema):
        self.graph = graph
        self.s = schema
        self.tensors: list = []
        self.tensor_index: dict[str, int] = {}
        self.buffers: list = [schema.BufferT()]  # buffer 0: the empty sentinel by convention
        self.opcodes: dict[_OpCode, int] = {}
        self.operators: list = []
        self.used_names: set[str] = set(graph.tensors)
        self.splits = tflite_graph_ops.find_splits(graph)  # slice runs written as SPLIT
        self.in_splits = {n.name for run in self.splits.values() for n in run.nodes}

    # ---- tensors and buffers

    def fresh_name(self, base: str) -> str:
        name, k = base, 1
        while name in self.used_names:
            name, k = f"{base}_{k}", k + 1
        self.used_names.add(name)
        return name

    def add_buffer(self, data: np.ndarray | None) -> int:
        if data is None:
            return 0
        buffer = _AlignedBuffer(self.s)
        buffer.payload = np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<")).tobytes()
        self.buffers.append(buffer)
        return len(self.buffers) - 1

    def add_tensor(self, name: str, shape: tuple[int, ...], dtype: str,
                   data: np.ndarray | None, quant: ir.QuantParams | None) -> int:
        s = self.s
        if dtype not in _TENSOR_TYPES:
            raise UserError(f"tensor {name!r}: dtype {dtype} cannot be written to TFLite")
        t = s.TensorT()
        t.name = name
        t.shape = np.array(shape, dtype=np.int32)
        t.type = _TENSOR_TYPES[dtype]
        t.buffer = self.add_buffer(None if data is None else np.asarray(data, dtype=dtype))
        if quant is not None:
            q = s.QuantizationParametersT()
            q.scale = np.asarray(quant.scale, dtype=np.float32).reshape(-1)
            q.zeroPoint = np.asarray(quant.zero_point, dtype=np.int64).reshape(-1)
            q.quantizedDimension = int(quant.axis) if quant.axis is not None else 0
            t.quantization = q
        self.tensors.append(t)
        self.tensor_index[name] = len(self.tensors) - 1
        return len(self.tensors) - 1

    def tensor(self, name: str) -> int:
        if name not in self.tensor_index:
            t = self.graph.tensors[name]
            self.add_tensor(t.name, t.shape, t.dtype, t.data, t.quant)
        return self.tensor_index[name]

    def int32_const(self, base: str, values) -> int:
        data = np.asarray(values, dtype=np.int32)
        return self.add_tensor(self.fresh_name(base), data.shape, "int32", data, None)

    def like(self, base: str, source: str, shape: tuple[int, ...]) -> int:
        """A new activation with ``source``'s dtype and quantisation (PAD outputs)."""
        t = self.graph.tensors[source]
        return self.add_tensor(self.fresh_name(base), shape, t.dtype, None, t.quant)

    # ---- operators

    def opcode(self, builtin: int, version: int) -> int:
        key = _OpCode(builtin, version)
        if key not in self.opcodes:
            self.opcodes[key] = len(self.opcodes)
        return self.opcodes[key]

    def emit(self, builtin: int, version: int, inputs: list[int], outputs: list[int],
             options_type: int = 0, options=None) -> None:
        op = self.s.OperatorT()
        op.opcodeIndex = self.opcode(builtin, version)
        op.inputs = np.array(inputs, dtype=np.int32)
        op.outputs = np.array(outputs, dtype=np.int32)
        op.builtinOptionsType = options_type
        op.builtinOptions = options
        self.operators.append(op)

    def is_int8(self, name: str) -> bool:
        return self.graph.tensors[name].dtype == "int8"

    def window_padding(self, node: ir.Node, x: str, k_h: int, k_w: int, stride, dilation,
                       padding: ir.Padding, may_pad: bool) -> tuple[int, int]:
        """(padding code, input tensor index): SAME/VALID, or a PAD op plus VALID."""
        _, in_h, in_w, channels = self.graph.tensors[x].shape
        if padding == ir.Padding():
            return _VALID, self.tensor(x)
        if padding == ir.Padding.same(in_h, in_w, k_h, k_w, *stride, *dilation):
            return _SAME, self.tensor(x)
        if not may_pad:
            raise UserError(f"{node.name}: {ir.op_name(node.op)} padding {padding} is neither "
                            "TF 'SAME' nor 'VALID' and has no TFLite form")
        padded_shape = (1, in_h + padding.top + padding.bottom,
                        in_w + padding.left + padding.right, channels)
        padded = self.like(f"{node.name}/pad", x, padded_shape)
        self.emit_pad(x, padding, padded)
        return _VALID, padded

    def emit_pad(self, x: str, padding: ir.Padding, out_index: int) -> None:
        s = self.s
        pads = [[0, 0], [padding.top, padding.bottom], [padding.left, padding.right], [0, 0]]
        pads_index = self.int32_const(f"{x}/paddings", pads)
        self.emit(s.BuiltinOperator.PAD, 2 if self.is_int8(x) else 1,
                  [self.tensor(x), pads_index], [out_index],
                  s.BuiltinOptions.PadOptions, s.PadOptionsT())

    def emit_pad_nd(self, node: ir.Node, op: ir.PadND, out_index: int) -> None:
        s, x = self.s, node.inputs[0]
        pads_index = self.int32_const(f"{x}/paddings", [list(p) for p in op.pads])
        result = self.graph.tensors[node.outputs[0]]
        operands = [self.tensor(x), pads_index]
        if result.quant is not None and op.value == result.quant.scalar_zero_point:
            self.emit(s.BuiltinOperator.PAD, 2, operands, [out_index],
                      s.BuiltinOptions.PadOptions, s.PadOptionsT())
            return
        value = np.array([op.value], dtype=result.dtype)
        operands.append(self.add_tensor(self.fresh_name(f"{node.name}/constant_values"), (1,),
                                        result.dtype, value, result.quant))
        self.emit(s.BuiltinOperator.PADV2, 2, operands, [out_index],
                  s.BuiltinOptions.PadV2Options, s.PadV2OptionsT())

    def node(self, node: ir.Node) -> None:
        if node.name in self.in_splits:
            if node.name in self.splits:
                tflite_graph_ops.emit_split(self, self.splits[node.name])
            return
        if isinstance(node.op, tflite_graph_ops.GRAPH_OPS):
            tflite_graph_ops.emit(self, node, _ACTIVATIONS[getattr(node.op, "activation",
                                                                   ir.Activation.NONE)])
            return
        s, op = self.s, node.op
        B, O = s.BuiltinOperator, s.BuiltinOptions
        ins, out = node.inputs, self.tensor(node.outputs[0])
        int8 = self.is_int8(ins[0])
        x = ins[0]

        if isinstance(op, (ir.Conv2D, ir.DepthwiseConv2D)):
            w = self.graph.tensors[ins[1]]
            _, k_h, k_w, _ = w.shape
            code, x_index = self.window_padding(node, x, k_h, k_w, op.stride, op.dilation,
                                                op.padding, may_pad=True)
            operands = [x_index] + [self.tensor(n) for n in ins[1:]]
            if len(ins) == 2:
                operands.append(-1)  # no bias
            if isinstance(op, ir.Conv2D):
                opts = s.Conv2DOptionsT()
                builtin, options_type = B.CONV_2D, O.Conv2DOptions
            else:
                opts = s.DepthwiseConv2DOptionsT()
                opts.depthMultiplier = op.depth_multiplier
                builtin, options_type = B.DEPTHWISE_CONV_2D, O.DepthwiseConv2DOptions
            opts.padding = code
            opts.strideH, opts.strideW = op.stride
            opts.dilationHFactor, opts.dilationWFactor = op.dilation
            opts.fusedActivationFunction = _ACTIVATIONS[op.activation]
            version = 3 if int8 else 1
            if not int8 and builtin == B.DEPTHWISE_CONV_2D and max(op.dilation) > 1:
                version = 2
            self.emit(builtin, version, operands, [out], options_type, opts)
        elif isinstance(op, ir.FullyConnected):
            opts = s.FullyConnectedOptionsT()
            opts.fusedActivationFunction = _ACTIVATIONS[op.activation]
            version = 6 if len(ins) == 2 else (4 if int8 else 1)
            self.emit(B.FULLY_CONNECTED, version, [self.tensor(n) for n in ins], [out],
                      O.FullyConnectedOptions, opts)
        elif isinstance(op, ir.Add):
            opts = s.AddOptionsT()
            opts.fusedActivationFunction = _ACTIVATIONS[op.activation]
            self.emit(B.ADD, 2 if int8 else 1, [self.tensor(n) for n in ins], [out],
                      O.AddOptions, opts)
        elif isinstance(op, ir.Mul):
            opts = s.MulOptionsT()
            opts.fusedActivationFunction = _ACTIVATIONS[op.activation]
            self.emit(B.MUL, self.mul_version(node), [self.tensor(n) for n in ins], [out],
                      O.MulOptions, opts)
        elif isinstance(op, ir.AveragePool2D):
            code, x_index = self.window_padding(node, x, *op.kernel, op.stride, (1, 1),
                                                op.padding, may_pad=False)
            opts = s.Pool2DOptionsT()
            opts.padding = code
            opts.strideH, opts.strideW = op.stride
            opts.filterHeight, opts.filterWidth = op.kernel
            opts.fusedActivationFunction = _ACTIVATIONS[op.activation]
            self.emit(B.AVERAGE_POOL_2D, 2 if int8 else 1, [x_index], [out],
                      O.Pool2DOptions, opts)
        elif isinstance(op, ir.Mean):
            axes = self.int32_const(f"{node.name}/axes", list(op.axes))
            opts = s.ReducerOptionsT()
            opts.keepDims = op.keep_dims
            self.emit(B.MEAN, 2 if int8 else 1, [self.tensor(x), axes], [out],
                      O.ReducerOptions, opts)
        elif isinstance(op, ir.Reshape):
            shape = self.int32_const(f"{node.name}/shape", list(op.shape))
            opts = s.ReshapeOptionsT()
            opts.newShape = list(op.shape)
            self.emit(B.RESHAPE, 1, [self.tensor(x), shape], [out], O.ReshapeOptions, opts)
        elif isinstance(op, ir.Pad):
            self.emit_pad(x, op.padding, out)
        elif isinstance(op, ir.Transpose):
            perm = self.int32_const(f"{node.name}/perm", list(op.perm))
            self.emit(B.TRANSPOSE, 2 if int8 else 1, [self.tensor(x), perm], [out],
                      O.TransposeOptions, s.TransposeOptionsT())
        elif isinstance(op, ir.PadND):
            self.emit_pad_nd(node, op, out)
        elif isinstance(op, ir.Softmax):
            opts = s.SoftmaxOptionsT()
            opts.beta = op.beta
            self.emit(B.SOFTMAX, 2 if int8 else 1, [self.tensor(x)], [out],
                      O.SoftmaxOptions, opts)
        elif isinstance(op, ir.ActivationOp):
            if op.activation is ir.Activation.NONE:
                raise UserError(f"{node.name}: an ActivationOp without activation")
            builtin = B.RELU if op.activation is ir.Activation.RELU else B.RELU6
            self.emit(builtin, 2 if int8 else 1, [self.tensor(x)], [out])
        elif isinstance(op, ir.HardSwish):
            self.emit(B.HARD_SWISH, 1, [self.tensor(x)], [out],
                      O.HardSwishOptions, s.HardSwishOptionsT())
        elif isinstance(op, ir.Logistic):
            self.emit(B.LOGISTIC, 2 if int8 else 1, [self.tensor(x)], [out])
        elif isinstance(op, ir.Quantize):
            self.emit(B.QUANTIZE, 1, [self.tensor(x)], [out])
        elif isinstance(op, ir.Dequantize):
            self.emit(B.DEQUANTIZE, 2 if int8 else 1, [self.tensor(x)], [out])
        else:
            raise UserError(f"{node.name}: {ir.op_name(op)} has no TFLite form "
                            "(run mbgen's passes before exporting)")

    def mul_version(self, node: ir.Node) -> int:
        if not self.is_int8(node.inputs[0]):
            return 1
        a, b, out = (self.graph.tensors[n].quant.scalar_scale
                     for n in (node.inputs[0], node.inputs[1], node.outputs[0]))
        return 3 if a * b / out >= 1.0 else 2

    # ---- whole model

    def serialize(self) -> bytes:
        import flatbuffers

        s, graph = self.s, self.graph
        inputs = [self.tensor(n) for n in graph.inputs]
        for node in graph.nodes:
            self.node(node)
        outputs = [self.tensor(n) for n in graph.outputs]

        subgraph = s.SubGraphT()
        subgraph.name = graph.name
        subgraph.tensors = self.tensors
        subgraph.inputs = np.array(inputs, dtype=np.int32)
        subgraph.outputs = np.array(outputs, dtype=np.int32)
        subgraph.operators = self.operators

        codes = []
        for key in sorted(self.opcodes, key=self.opcodes.get):
            code = s.OperatorCodeT()
            code.builtinCode = key.builtin
            code.deprecatedBuiltinCode = min(key.builtin, _PLACEHOLDER_FOR_GREATER_OP_CODES)
            code.version = key.version
            codes.append(code)

        model = s.ModelT()
        model.version = _SCHEMA_VERSION
        model.description = f"mbgen export of {graph.name}"
        model.operatorCodes = codes
        model.subgraphs = [subgraph]
        model.buffers = self.buffers

        builder = flatbuffers.Builder(1024 + sum(len(getattr(b, "payload", b"")) + 32
                                                 for b in self.buffers))
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


class _AlignedBuffer:
    """A ``BufferT`` stand-in whose data vector starts on a 16-byte boundary.

    The generated ``BufferT.Pack`` aligns data only to its element size (1 for bytes);
    ``Builder.Prep`` pads so that the vector's first byte is 16-byte aligned in the file."""

    def __init__(self, schema):
        self.s = schema
        self.payload = b""

    def Pack(self, builder):  # noqa: N802 - the name the generated ModelT.Pack calls
        builder.Prep(_BUFFER_ALIGNMENT, len(self.payload))
        data = builder.CreateByteVector(self.payload)
        self.s.BufferStart(builder)
        self.s.BufferAddData(builder, data)
        return self.s.BufferEnd(builder)
