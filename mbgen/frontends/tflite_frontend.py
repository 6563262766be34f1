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

Stage 1 lives in ``tflite_parse``; the per-operator handlers of stage 2 in ``tflite_layers``
(graph-shaping and layout ops: ``tflite_graph_ops``, ``tflite_layout_ops``); here the
builder's checks, tensors and dispatch.

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
from pathlib import Path

import numpy as np

from mbgen import ir
from mbgen.errors import UserError
from mbgen.frontends import tflite_graph_ops
from mbgen.frontends import tflite_layout_ops as layout_ops
from mbgen.frontends import tflite_legacy_uint8 as legacy
from mbgen.frontends.tflite_layers import TfliteLayers
from mbgen.frontends.tflite_parse import (_FUSED_ACTIVATION_NAMES, _FUSED_ACTIVATIONS, _INT8,
                                         _INT16, _IR_DTYPES, _MAX_TENSOR_ELEMENTS,
                                         _NUMPY_DTYPES, _SAME, _UINT8, _VALID,
                                         _parse, _RawModel, _RawOperator,
                                         _RawOptions, _RawTensor, _type_name)


# ----------------------------------------------------------------------------- stages


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


def _op_label(builtin: int, custom_code: str | None) -> str:
    if custom_code is not None and builtin == 32:  # CUSTOM
        return f"custom op {custom_code!r}"
    from tflite.utils import BUILTIN_OPCODE2NAME
    return BUILTIN_OPCODE2NAME.get(builtin, f"builtin op {builtin}")


class _GraphBuilder(TfliteLayers):
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
        self.legacy_uint8 = legacy.is_legacy(model.tensors, self.uint8_io)

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
        if t.index in self.folded_data:
            dtype = "float32"
        elif t.type == _UINT8 and self.legacy_uint8:
            dtype = "int8"  # held as uint8 - 128 (tflite_legacy_uint8)
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
        if t.type == _UINT8 and self.legacy_uint8:
            data, quant = legacy.as_int8(data, quant)
        if data is not None:
            data = np.array(data, dtype=dtype)  # own, writable copy
        self.tensors[name] = ir.Tensor(name, tuple(t.shape), dtype, data, quant)
        return name

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
        if self.legacy_uint8:
            graph.nodes = legacy.legacy_nodes(graph, self.label)
            graph.metadata["legacy_uint8"] = "input and output are int8 = uint8 - 128"
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
        if t.dtype != "int8" or self.legacy_uint8:  # legacy uint8 weights keep a zero point
            return
        q = t.quant
        self.expect(bool(np.all(q.zero_point == 0)), f"int8 weights {w!r} must have zero point 0")
        self.expect(q.axis is None or q.axis == axis,
                    f"weights {w!r} are quantised along axis {q.axis}, expected {axis}")


def _expected_options(builtin: int) -> int | None:
    """The BuiltinOptions type of the operators whose options we read."""
    from tflite import BuiltinOperator as B
    from tflite import BuiltinOptions as O
    return {B.CONV_2D: O.Conv2DOptions, B.DEPTHWISE_CONV_2D: O.DepthwiseConv2DOptions,
            B.FULLY_CONNECTED: O.FullyConnectedOptions, B.ADD: O.AddOptions,
            B.MUL: O.MulOptions, B.AVERAGE_POOL_2D: O.Pool2DOptions,
            B.MEAN: O.ReducerOptions, B.SOFTMAX: O.SoftmaxOptions,
            **tflite_graph_ops.OPTIONS}.get(builtin)
