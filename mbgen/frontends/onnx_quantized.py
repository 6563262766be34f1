"""int8 ONNX models (onnxruntime.quantization) to int8 IR graphs with onnxruntime arithmetic.

Both formats that ``quantize_static`` writes are read, with their quantisation parameters
taken as stored:

* **QOperator**: QuantizeLinear, QLinearConv (group 1 or depthwise), QLinearMatMul,
  com.microsoft QGemm / QLinearAdd / QLinearMul / QLinearGlobalAveragePool /
  QLinearAveragePool / QLinearSigmoid, Flatten/Reshape on int8 tensors, DequantizeLinear.
* **QDQ**: float Conv / Gemm / MatMul / Add / Mul / GlobalAveragePool / AveragePool whose
  inputs come from DequantizeLinear and whose output goes to one QuantizeLinear.
  onnxruntime fuses such groups into the QOperator kernels above, so they become the same
  IR ops; Flatten/Reshape between a DequantizeLinear and a QuantizeLinear with equal
  parameters is a reshape.
* **Both**: DequantizeLinear -> HardSigmoid / HardSwish / Sigmoid -> QuantizeLinear, which
  onnxruntime computes in float32, and com.microsoft QLinearSigmoid (a table of the same
  float32 results): ir.DequantizedActivation, a 256-entry table of those results;
  DequantizeLinear -> QuantizeLinear with other parameters likewise;
  DequantizeLinear -> ReduceMean (H, W) -> QuantizeLinear is ir.DequantizedMean.
  QLinearConcat / Concat, MaxPool, Split, Slice and the channel shuffle:
  ``onnx_quantized_graph_ops``.

Every int8 op gets ``requantization=ONNXRUNTIME`` (float32 scales, round half to even; see
``mbgen/quantize/onnxruntime_params.py``). Activations may be int8 or uint8 (quantize_static's
default); uint8 tensors become int8 with value and zero point minus 128, which is exact for
every op here, and the add, mul and average pool, whose float arithmetic sees stored
values, are ``ONNXRUNTIME_UINT8``. Weights must be int8. quantize_dynamic models
(MatMulInteger, ConvInteger) are refused: see ``_refuse_integer_ops``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mbgen import ir
from mbgen.errors import UserError
from mbgen.frontends.onnx_frontend import _Converter
from mbgen.frontends.onnx_layout import _Layout, _layout_for, _OnnxNode
from mbgen.frontends.onnx_model import _reshape_target
from mbgen.frontends.onnx_quantized_graph_ops import QuantizedGraphOps
from mbgen.frontends.onnx_quantized_layers import ORT, QuantizedLayers

QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
                           "QGemm", "QLinearAdd", "QLinearGlobalAveragePool", "MatMulInteger",
                           "QLinearMul", "QLinearAveragePool", "QLinearSigmoid",
                           "QLinearConcat", "ConvInteger", "DynamicQuantizeLinear"})
# What quantize_dynamic writes: integer ops with int32 outputs rescaled in float.
_INTEGER_OPS = ("MatMulInteger", "ConvInteger")
_DOMAINS = ("", "ai.onnx", "com.microsoft")


def is_quantized(model) -> bool:
    """True when the model holds any quantised ONNX op (then this module converts it)."""
    return any(n.op_type in QUANTIZED_OPS and n.domain in _DOMAINS for n in model.graph.node)


@dataclass(frozen=True)
class _Dequantized:
    """A DequantizeLinear output: an int8 activation, or int8/int32 constant data."""

    tensor: str | None               # IR name of the int8 activation, None for constants
    data: np.ndarray | None          # the stored integers of a constant
    scale: np.ndarray                # float32
    zero_point: np.ndarray           # int32
    axis: int


def convert(model, constants: dict[str, np.ndarray], shapes: dict, name: str) -> ir.Graph:
    return _QuantizedConverter(model, constants, shapes, name).convert()


class _QuantizedConverter(QuantizedGraphOps, QuantizedLayers, _Converter):
    """Walks the ONNX nodes in order; QDQ groups are converted at their float op (the layer
    methods live in ``onnx_quantized_layers``, Concat and the value-moving ops in
    ``onnx_quantized_graph_ops``)."""

    def __init__(self, model, constants, shapes, name) -> None:
        super().__init__(model, constants, shapes, name)
        self.dequantized: dict[str, _Dequantized] = {}
        self.float_tensors: set[str] = set()
        self.storage: np.dtype | None = None   # int8 or uint8: how activations are stored

    # ------------------------------------------------------------------ tensors

    def _int8_activation(self, onnx_name: str, layout: _Layout, scale: float,
                         zero_point: int) -> str:
        name = self._unique_tensor_name(onnx_name)
        self.ir_names[onnx_name] = name
        self.layouts[onnx_name] = layout
        self.tensors[name] = ir.Tensor(name, layout.ir_shape, "int8",
                                       quant=ir.QuantParams.per_tensor(scale, zero_point))
        return name

    def _dequantized_view(self, tensor: str, scale: float, zero_point: int) -> _Dequantized:
        """The float view (DequantizeLinear output) of an int8 activation."""
        return _Dequantized(tensor, None, np.array([scale], np.float32),
                            np.array([zero_point], np.int32), 1)

    def _int_const(self, wanted: str, data: np.ndarray, dtype: str,
                   quant: ir.QuantParams) -> str:
        name = self._unique_tensor_name(wanted)
        data = np.ascontiguousarray(data, dtype=dtype)
        self.tensors[name] = ir.Tensor(name, tuple(data.shape), dtype, data, quant)
        return name

    def _scalar_param(self, node: _OnnxNode, index: int, what: str) -> np.ndarray:
        value = np.asarray(self._constant(node, index, what))
        if value.size != 1:
            raise UserError(f"ONNX {node.op_type} {node.where()}: {what} must be one value, "
                            f"got shape {value.shape}")
        return value.reshape(-1)

    def _scale_zp(self, node: _OnnxNode, scale_index: int, what: str) -> tuple[float, int]:
        """An activation's scale and zero point; uint8 zero points come back minus 128
        (the IR holds uint8 tensors as int8, see ir.Requantization.ONNXRUNTIME_UINT8)."""
        scale = self._scalar_param(node, scale_index, f"{what} scale").astype(np.float32)
        index = scale_index + 1
        if index < len(node.inputs) and node.inputs[index]:
            zp = np.asarray(self._constant(node, index, f"{what} zero point"))
        else:
            zp = np.zeros(1, dtype=np.uint8)  # ONNX's default: uint8, zero point 0
        if zp.size != 1:
            raise UserError(f"ONNX {node.op_type} {node.where()}: {what} zero point must be "
                            "one value")
        self._note_storage(node, zp.dtype)
        shift = 128 if zp.dtype == np.uint8 else 0
        return float(scale[0]), int(zp.reshape(-1)[0]) - shift

    def _note_storage(self, node: _OnnxNode, dtype: np.dtype) -> None:
        if dtype not in (np.int8, np.uint8):
            raise UserError(f"ONNX {node.op_type} {node.where()}: activations are {dtype}; "
                            "mbgen reads int8 or uint8 quantised activations")
        if self.storage is None:
            self.storage = np.dtype(dtype)
        elif self.storage != dtype:
            raise UserError(f"ONNX {node.op_type} {node.where()}: the model mixes int8 and "
                            "uint8 activations, which mbgen does not support")

    @property
    def _storage_arithmetic(self) -> ir.Requantization:
        """For ops whose float arithmetic sees the stored values (add, average pool)."""
        return ir.Requantization.ONNXRUNTIME_UINT8 if self.storage == np.uint8 else ORT

    def _zero_point(self, node: _OnnxNode, index: int, what: str) -> np.ndarray:
        """Weight zero points: int8 only."""
        if index >= len(node.inputs) or not node.inputs[index]:
            raise UserError(f"ONNX {node.op_type} {node.where()}: {what} has no zero point "
                            "(uint8 by default); mbgen reads int8 weights only")
        value = np.asarray(self._constant(node, index, f"{what} zero point"))
        if value.dtype != np.int8:
            raise UserError(f"ONNX {node.op_type} {node.where()}: {what} is {value.dtype}; "
                            "mbgen reads int8 weights only (quantize_static with "
                            "weight_type=QInt8)")
        return value.reshape(-1).astype(np.int32)

    def _int8_input(self, node: _OnnxNode, index: int, scale: float, zero_point: int) -> str:
        """An int8 activation read with the given parameters (they must be the tensor's)."""
        name, _ = self._input(node, index)
        tensor = self.tensors[name]
        if tensor.dtype != "int8":
            raise UserError(f"ONNX {node.op_type} {node.where()} reads {node.inputs[index]!r}, "
                            "which is not an int8 tensor")
        q = tensor.quant
        if np.float32(q.scalar_scale) != np.float32(scale) or q.scalar_zero_point != zero_point:
            raise UserError(f"ONNX {node.op_type} {node.where()} reads {node.inputs[index]!r} "
                            "with other quantisation parameters than it was written with")
        return name

    def _weight(self, node: _OnnxNode, data: np.ndarray, scale: np.ndarray,
                zero_point: np.ndarray, channels: int, axis: int, what: str) -> ir.QuantParams:
        if data.dtype != np.int8:
            raise UserError(f"ONNX {node.op_type} {node.where()}: weights are {data.dtype}; "
                            "mbgen reads int8 weights only")
        if np.any(zero_point != 0):
            raise UserError(f"ONNX {node.op_type} {node.where()}: weight zero points must be 0 "
                            "(symmetric int8 weights)")
        scale = np.asarray(scale, dtype=np.float32).reshape(-1)
        if scale.size not in (1, channels):
            raise UserError(f"ONNX {node.op_type} {node.where()}: {scale.size} {what} scales "
                            f"for {channels} output channels")
        return ir.QuantParams(scale, np.zeros(scale.size, dtype=np.int32),
                              axis if scale.size > 1 else None)

    def _bias(self, node: _OnnxNode, data: np.ndarray | None, channels: int, x_scale: float,
              w_quant: ir.QuantParams) -> list[str]:
        if data is None:
            return []
        if data.dtype != np.int32 or data.size != channels:
            raise UserError(f"ONNX {node.op_type} {node.where()}: bias must be {channels} int32 "
                            "values")
        scale = (np.float32(x_scale) * w_quant.scale).astype(np.float32)
        quant = ir.QuantParams(scale, np.zeros(scale.size, dtype=np.int32), w_quant.axis)
        return [self._int_const(f"{node.label}_bias", data.reshape(channels), "int32", quant)]

    # ------------------------------------------------------------------ driver

    def convert(self) -> ir.Graph:
        _refuse_integer_ops(self.onnx_nodes)
        self.float_tensors.add(self._declare_graph_input())
        for node in self.onnx_nodes:
            if node.label not in self.absorbed:
                self._convert_node(node)
        outputs = []
        for out in self.model.graph.output:
            if out.name not in self.layouts:
                raise UserError(f"ONNX model output {out.name!r} is not computed by an op "
                                "mbgen converts (a QDQ group without its QuantizeLinear?)")
            outputs.append(self.ir_names[out.name])
        used = {name for n in self.nodes for name in n.inputs}
        tensors = {k: t for k, t in self.tensors.items() if not t.is_const or k in used}
        metadata = {"source": "onnx", "opset": str(self.opset), "requantization": ORT.value,
                    "producer": f"{self.model.producer_name} {self.model.producer_version}".strip()}
        graph = ir.Graph(self.name, tensors, self.nodes, ["input"], outputs, metadata)
        _check_constants(graph)
        return graph

    def _convert_node(self, node: _OnnxNode) -> None:
        domain = node.proto.domain
        if self._graph_op(node):
            return
        handler = _HANDLERS.get(node.op_type) if domain in _DOMAINS else None
        if handler is None:
            op = node.op_type if domain in ("", "ai.onnx") else f"{domain}.{node.op_type}"
            raise UserError(f"unsupported ONNX op {op!r} in an int8 model (node {node.label!r})")
        self._check_single_output(node)
        handler(self, node)

    # ------------------------------------------------------------------ Q / DQ

    def _quantize_linear(self, node: _OnnxNode) -> None:
        scale, zp = self._scale_zp(node, 1, "output")
        source = node.inputs[0]
        if source in self.held_back:  # a channel shuffle's 5-D view between QDQ pairs
            view = self.held_back[source]
            q = self.tensors[self.ir_names[view.source]].quant
            if np.float32(q.scalar_scale) != np.float32(scale) or q.scalar_zero_point != zp:
                raise UserError(f"ONNX QuantizeLinear {node.where()} requantises a channel "
                                "shuffle, which mbgen does not support")
            self.held_back[node.proto.output[0]] = view
            return
        if source in self.dequantized and self.dequantized[source].tensor is not None:
            # DQ -> Q: nothing to do with the same parameters, else onnxruntime's float
            # round trip (a table)
            x = self._requantized(node, self.dequantized[source].tensor, scale, zp)
            self.ir_names[node.proto.output[0]] = x
            self.layouts[node.proto.output[0]] = self.layouts[source]
            return
        if source not in self.float_tensors:
            raise UserError(f"ONNX QuantizeLinear {node.where()} quantises {source!r}, which "
                            "is not the float model input nor the output of a QDQ group")
        x, layout = self._input(node, 0)
        out = self._int8_activation(node.proto.output[0], layout, scale, zp)
        self.nodes.append(ir.Node(self._unique_node_name(node.label), ir.Quantize(ORT), [x],
                                  [out]))

    def _dequantize_linear(self, node: _OnnxNode) -> None:
        value = node.inputs[0]
        attrs = node.attrs
        if value in self.held_back:  # a channel shuffle's 5-D view between QDQ pairs
            self.held_back[node.proto.output[0]] = self.held_back[value]
            return
        if value in self.constants:
            data = np.asarray(self.constants[value])
            scale = np.asarray(self._constant(node, 1, "scale"), dtype=np.float32).reshape(-1)
            zp = np.zeros(scale.size, dtype=np.int32)
            if len(node.inputs) > 2 and node.inputs[2]:
                zp = np.asarray(self.constants.get(node.inputs[2], 0)).reshape(-1)
                zp = zp.astype(np.int32)
            self.dequantized[node.proto.output[0]] = _Dequantized(
                None, data, scale, zp, int(attrs.get("axis", 1)))
            return
        scale, zp = self._scale_zp(node, 1, "input")
        x = self._int8_input(node, 0, scale, zp)
        out = node.proto.output[0]
        self.dequantized[out] = self._dequantized_view(x, scale, zp)
        # A DequantizeLinear that ends the model (or feeds float ops) is a real op.
        self.ir_names[out] = x
        self.layouts[out] = self.layouts[value]
        if self._feeds_graph_output(out):
            layout = self.layouts[value]
            name = self._unique_tensor_name(out)
            self.tensors[name] = ir.Tensor(name, layout.ir_shape, "float32")
            self.ir_names[out] = name
            self.nodes.append(ir.Node(self._unique_node_name(node.label), ir.Dequantize(),
                                      [x], [name]))

    def _feeds_graph_output(self, value: str) -> bool:
        return value in {o.name for o in self.model.graph.output}

    def _qdq_output(self, node: _OnnxNode) -> tuple[str, float, int]:
        """The QuantizeLinear that closes a QDQ group: its output name, scale and zero point."""
        quantize = self._single_consumer(node.proto.output[0])
        if quantize is None or quantize.op_type != "QuantizeLinear":
            raise UserError(f"ONNX {node.op_type} {node.where()} in an int8 model is not "
                            "followed by exactly one QuantizeLinear; mbgen runs float ops "
                            "only inside DequantizeLinear/QuantizeLinear groups")
        scale, zp = self._scale_zp(quantize, 1, "output")
        self.absorbed.add(quantize.label)
        return quantize.proto.output[0], scale, zp

    def _dq_input(self, node: _OnnxNode, index: int) -> _Dequantized:
        value = node.inputs[index] if index < len(node.inputs) else ""
        if value not in self.dequantized:
            raise UserError(f"ONNX {node.op_type} {node.where()} in an int8 model reads "
                            f"{value!r}, which is not the output of a DequantizeLinear")
        return self.dequantized[value]

    # ------------------------------------------------------------------ views

    def _reshape(self, node: _OnnxNode) -> None:
        """Flatten / Reshape of an int8 tensor (QOperator), or inside DQ -> op -> Q (QDQ)."""
        source = node.inputs[0]
        out_shape = self._reshaped(node)
        if source in self.dequantized:
            dq = self.dequantized[source]
            out, scale, zp = self._qdq_output(node)
            if np.float32(dq.scale[0]) != np.float32(scale) or int(dq.zero_point[0]) != zp:
                raise UserError(f"ONNX {node.op_type} {node.where()} requantises its input; "
                                "mbgen supports reshapes with equal parameters only")
        else:
            out = node.proto.output[0]
        x, layout = self._input(node, 0)
        tensor = self.tensors[x]
        if tensor.dtype != "int8":
            raise UserError(f"ONNX {node.op_type} {node.where()} reshapes a float tensor in "
                            "an int8 model")
        new_layout = _layout_for(out_shape)
        if int(np.prod(out_shape)) != int(np.prod(layout.onnx_shape)):
            raise UserError(f"ONNX {node.op_type} {node.where()}: cannot reshape "
                            f"{layout.onnx_shape} to {out_shape}")
        if not (layout.same_order_as_onnx and new_layout.same_order_as_onnx):
            raise UserError(f"ONNX {node.op_type} {node.where()}: reshaping "
                            f"{layout.onnx_shape} to {out_shape} reorders NCHW data, which "
                            "mbgen does not support in int8 models")
        q = tensor.quant
        name = self._int8_activation(out, new_layout, q.scalar_scale, q.scalar_zero_point)
        self.nodes.append(ir.Node(self._unique_node_name(node.label),
                                  ir.Reshape(new_layout.ir_shape), [x], [name]))

    def _reshaped(self, node: _OnnxNode) -> tuple[int, ...]:
        """The output shape of a Flatten / Reshape (computed: shape inference may have
        stopped at an earlier com.microsoft op)."""
        in_shape = self.layouts[node.inputs[0]].onnx_shape
        if node.op_type == "Flatten":
            axis = int(node.attrs.get("axis", 1)) % max(len(in_shape), 1)
            return (int(np.prod(in_shape[:axis])), int(np.prod(in_shape[axis:])))
        if node.op_type == "Reshape":
            spec = self._constant(node, 1, "shape")
            return _reshape_target(in_shape, spec, bool(node.attrs.get("allowzero", 0)))
        if node.op_type == "Identity":
            return in_shape
        return self._shape(node.proto.output[0], node)


def _refuse_integer_ops(nodes: list[_OnnxNode]) -> None:
    """MatMulInteger / ConvInteger give an int32 result that only float ops (Cast, Mul by
    the scales) turn back into values: no int8 consumer exists, so there is no static int8
    graph to compile. quantize_dynamic writes them after a DynamicQuantizeLinear, whose scale
    is computed from each input at run time."""
    node = next((n for n in nodes if n.op_type in _INTEGER_OPS), None)
    dynamic = any(n.op_type == "DynamicQuantizeLinear" for n in nodes)
    if node is None:
        if not dynamic:
            return
        node = next(n for n in nodes if n.op_type == "DynamicQuantizeLinear")
    why = ("comes from dynamic quantization (quantize_dynamic): its activations are quantised "
           "at run time in float, so this is not a static int8 graph" if dynamic else
           "has an int32 output that only float ops rescale; mbgen compiles static int8 "
           "graphs")
    raise UserError(f"ONNX {node.op_type} {node.where()} {why}; quantise the float model "
                    "with onnxruntime.quantization.quantize_static (QOperator or QDQ) instead")


def _check_constants(graph: ir.Graph) -> None:
    """Refuse, naming the layer, parameters onnxruntime's kernels would not compute with
    (scales that are not positive finite float32s, non-zero weight zero points, ...)."""
    from mbgen.quantize import onnxruntime_params as ort
    checks = {ir.Conv2D: ort.conv_quant, ir.DepthwiseConv2D: ort.conv_quant,
              ir.FullyConnected: ort.conv_quant, ir.Add: ort.add_quant, ir.Mul: ort.mul_quant,
              ir.Mean: ort.mean_quant, ir.Quantize: ort.quantize_params,
              ir.AveragePool2D: ort.average_pool_quant,
              ir.DequantizedActivation: ort.activation_table,
              ir.DequantizedMean: ort.dequantized_mean_quant}
    for node in graph.nodes:
        check = checks.get(type(node.op))
        if check is None:
            continue
        try:
            check(graph, node)
        except ValueError as exc:
            raise UserError(f"ONNX int8 model: {exc}") from None


_HANDLERS = {
    "QuantizeLinear": _QuantizedConverter._quantize_linear,
    "DequantizeLinear": _QuantizedConverter._dequantize_linear,
    "QLinearConv": _QuantizedConverter._qlinear_conv,
    "QGemm": _QuantizedConverter._qgemm,
    "QLinearMatMul": _QuantizedConverter._qlinear_matmul,
    "QLinearAdd": _QuantizedConverter._qlinear_binary,
    "QLinearMul": _QuantizedConverter._qlinear_binary,
    "QLinearGlobalAveragePool": _QuantizedConverter._qlinear_global_pool,
    "QLinearAveragePool": _QuantizedConverter._qlinear_average_pool,
    "AveragePool": _QuantizedConverter._qdq_average_pool,
    "Conv": _QuantizedConverter._qdq_conv,
    "Gemm": _QuantizedConverter._qdq_fc,
    "MatMul": _QuantizedConverter._qdq_fc,
    "Add": _QuantizedConverter._qdq_binary,
    "Mul": _QuantizedConverter._qdq_binary,
    "GlobalAveragePool": _QuantizedConverter._qdq_global_pool,
    "Flatten": _QuantizedConverter._reshape,
    "Reshape": _QuantizedConverter._reshape,
    "Squeeze": _QuantizedConverter._reshape,
    "Unsqueeze": _QuantizedConverter._reshape,
    "Identity": _QuantizedConverter._reshape,
    "HardSigmoid": _QuantizedConverter._qdq_activation,
    "HardSwish": _QuantizedConverter._qdq_activation,
    "Sigmoid": _QuantizedConverter._qdq_activation,
    "QLinearSigmoid": _QuantizedConverter._qlinear_sigmoid,
    "QLinearConcat": _QuantizedConverter._qlinear_concat,
    "Concat": _QuantizedConverter._qdq_concat,
    "ReduceMean": _QuantizedConverter._qdq_reduce_mean,
}
