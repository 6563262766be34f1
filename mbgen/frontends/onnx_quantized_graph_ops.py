"""Graph-shaping ops of int8 ONNX models (SqueezeNet, ShuffleNetV2): Concat, MaxPool,
Split, Slice and the channel shuffle, on int8 tensors (QOperator) or between
DequantizeLinear and QuantizeLinear (QDQ).

A mixin of ``onnx_quantized._QuantizedConverter``. MaxPool, Split, Slice and the shuffle
move values without arithmetic, so the float converter's translations
(``onnx_graph_ops``) are reused: ``_emit`` gives their output the input's quantisation
parameters, and when the input is a DequantizeLinear output (a float view of int8 data) the
output is one too, so the QuantizeLinear after it reads it as an int8 tensor.

onnxruntime's QLinearConcat copies an input whose scale and zero point equal the output's
and maps any other through a 256-entry table of QuantizeLinear(DequantizeLinear(q)) (as does
a float Concat between DequantizeLinear and QuantizeLinear): such an input gets an
``ir.DequantizedActivation("Identity")`` node first, then an ``ir.Concatenation`` copies.
"""

from __future__ import annotations

import numpy as np

from mbgen import ir
from mbgen.errors import UserError
from mbgen.frontends import onnx_graph_ops
from mbgen.frontends.onnx_layout import _Layout, _layout_for, _OnnxNode


_MOVERS = frozenset({"MaxPool", "Split", "Slice", "Reshape", "Transpose"})


class QuantizedGraphOps:
    """Concat (QLinearConcat and QDQ), and the value-moving ops of onnx_graph_ops."""

    def _graph_op(self, node: _OnnxNode) -> bool:
        """Convert a MaxPool / Split / Slice / channel-shuffle step; False for other ops
        (Concat is this module's; a Reshape that is no 5-D shuffle view is a plain
        reshape, whose shape inference may have stopped at a com.microsoft op)."""
        if node.op_type not in _MOVERS or node.proto.domain not in ("", "ai.onnx"):
            return False
        if node.op_type in ("Reshape", "Transpose") and node.inputs[0] not in self.held_back:
            shape = self.shapes.get(node.proto.output[0])
            if node.op_type == "Transpose" or shape is None or len(shape) != 5:
                return False
        return onnx_graph_ops.convert(self, node)

    def _emit(self, node: _OnnxNode, op: ir.OpAttrs, inputs: list[str], output: str,
              layout: _Layout) -> None:
        """onnx_graph_ops' emitter: an int8 output with the input's parameters."""
        source = self.tensors[inputs[0]]
        if source.dtype != "int8":
            raise UserError(f"ONNX {node.op_type} {node.where()} in an int8 model reads a "
                            "float tensor")
        q = source.quant
        name = self._int8_activation(output, layout, q.scalar_scale, q.scalar_zero_point)
        self.nodes.append(ir.Node(self._unique_node_name(node.label), op, inputs, [name]))
        if self._is_float_view(node.inputs[0]):
            self._note_float_view(output, name)

    def _is_float_view(self, value: str) -> bool:
        """True for a DequantizeLinear output, or a value moved from one (incl. a held-back
        channel-shuffle view of one)."""
        view = self.held_back.get(value)
        return (view.source if view is not None else value) in self.dequantized

    def _note_float_view(self, value: str, name: str) -> None:
        q = self.tensors[name].quant
        self.dequantized[value] = self._dequantized_view(name, q.scalar_scale,
                                                         q.scalar_zero_point)

    # ------------------------------------------------------------------ concat

    def _requantized(self, node: _OnnxNode, x: str, scale: float, zero_point: int) -> str:
        """``x`` itself when it has these parameters, else x through onnxruntime's
        DequantizeLinear -> QuantizeLinear table."""
        q = self.tensors[x].quant
        if np.float32(q.scalar_scale) == np.float32(scale) and \
                q.scalar_zero_point == zero_point:
            return x
        name = self._unique_tensor_name(f"{x}/requantized")
        self.tensors[name] = ir.Tensor(name, self.tensors[x].shape, "int8",
                                       quant=ir.QuantParams.per_tensor(scale, zero_point))
        self.nodes.append(ir.Node(self._unique_node_name(f"{node.label}/requantize"),
                                  ir.DequantizedActivation("Identity"), [x], [name]))
        return name

    def _emit_concat(self, node: _OnnxNode, values: list[str], tensors: list[str],
                     out_name: str, scale: float, zero_point: int) -> None:
        if "axis" not in node.attrs:
            raise UserError(f"ONNX {node.op_type} {node.where()} has no axis")
        layouts = [self.layouts[v] for v in values]
        rank = len(layouts[0].onnx_shape)
        if any(lay.order is not layouts[0].order for lay in layouts):
            raise UserError(f"ONNX {node.op_type} {node.where()} joins tensors of different "
                            "ranks")
        onnx_axis = int(node.attrs["axis"]) % max(rank, 1)
        axis = onnx_graph_ops._ir_axis(self, node, layouts[0], onnx_axis)
        shape = list(layouts[0].onnx_shape)
        shape[onnx_axis] = sum(lay.onnx_shape[onnx_axis] for lay in layouts)
        inputs = [self._requantized(node, t, scale, zero_point) for t in tensors]
        out = self._int8_activation(out_name, _layout_for(tuple(shape)), scale, zero_point)
        self.nodes.append(ir.Node(self._unique_node_name(node.label),
                                  ir.Concatenation(axis=axis), inputs, [out]))

    def _qlinear_concat(self, node: _OnnxNode) -> None:
        """com.microsoft QLinearConcat: Y_scale, Y_zp, then (X, X_scale, X_zp) per input."""
        if len(node.inputs) < 5 or (len(node.inputs) - 2) % 3:
            raise UserError(f"ONNX QLinearConcat {node.where()} needs (tensor, scale, zero "
                            "point) per input")
        y_scale, y_zp = self._scale_zp(node, 0, "output")
        values, tensors = [], []
        for index in range(2, len(node.inputs), 3):
            scale, zp = self._scale_zp(node, index + 1, f"input {(index - 2) // 3}")
            tensors.append(self._int8_input(node, index, scale, zp))
            values.append(node.inputs[index])
        self._emit_concat(node, values, tensors, node.proto.output[0], y_scale, y_zp)

    def _qdq_concat(self, node: _OnnxNode) -> None:
        views = [self._dq_input(node, i) for i in range(len(node.inputs))]
        if any(v.tensor is None for v in views):
            raise UserError(f"ONNX Concat {node.where()}: a constant operand is not "
                            "supported")
        out, y_scale, y_zp = self._qdq_output(node)
        self._emit_concat(node, list(node.inputs), [v.tensor for v in views], out, y_scale,
                          y_zp)
