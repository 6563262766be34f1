"""The layers of int8 ONNX models: QLinear* ops and their QDQ groups, as IR nodes.

A mixin of ``onnx_quantized._QuantizedConverter`` (which owns tensors, quantisation
parameters and the Q/DQ bookkeeping these methods call); split out so that each file holds
one responsibility. Each layer has an ``_emit_*`` that both formats share, a QOperator
handler reading the parameters from the node, and a QDQ handler reading them from the
DequantizeLinear inputs and the closing QuantizeLinear.
"""

from __future__ import annotations

import numpy as np

from mbgen import ir
from mbgen.errors import UserError
from mbgen.frontends.onnx_layout import _layout_for, _Layout, _OnnxNode, _Order, _pair

ORT = ir.Requantization.ONNXRUNTIME


class QuantizedLayers:
    """Conv (incl. depthwise), fully connected (QGemm, QLinearMatMul), add, mul, pools."""

    # ------------------------------------------------------------------ convolutions

    def _emit_conv(self, node: _OnnxNode, x: str, layout: _Layout, weight: np.ndarray,
                   w_scale: np.ndarray, w_zp: np.ndarray, bias: np.ndarray | None,
                   x_scale: float, out_name: str, out_scale: float, out_zp: int) -> None:
        out_ch, in_per_group, kh, kw, in_ch, group, stride, dilation, padding = \
            self._conv_geometry(node, layout, weight)
        if group == 1 and in_per_group == in_ch:
            quant = self._weight(node, weight, w_scale, w_zp, out_ch, 0, "weight")
            op: ir.OpAttrs = ir.Conv2D(stride, padding, dilation, requantization=ORT)
            w = self._int_const(f"{node.label}_weight", weight.transpose(0, 2, 3, 1), "int8",
                                quant)
        elif group == in_ch and in_per_group == 1 and out_ch % in_ch == 0:
            quant = self._weight(node, weight, w_scale, w_zp, out_ch, 3, "weight")
            op = ir.DepthwiseConv2D(stride, padding, out_ch // in_ch, dilation,
                                    requantization=ORT)
            w = self._int_const(f"{node.label}_weight", weight.transpose(1, 2, 3, 0), "int8",
                                quant)
        else:
            raise UserError(f"ONNX {node.op_type} {node.where()} has group={group} with "
                            f"{in_ch} input channels; mbgen supports group=1 and "
                            "group=channels (depthwise) only")
        inputs = [x, w] + self._bias(node, bias, out_ch, x_scale, quant)
        # onnx's shape inference stops at com.microsoft ops: the size comes from the window.
        n, _, in_h, in_w = layout.onnx_shape
        out_hw = [(size + lo + hi - (k - 1) * d - 1) // s + 1 for size, lo, hi, k, d, s in
                  ((in_h, padding.top, padding.bottom, kh, dilation[0], stride[0]),
                   (in_w, padding.left, padding.right, kw, dilation[1], stride[1]))]
        if min(out_hw) < 1:
            raise UserError(f"ONNX {node.op_type} {node.where()}: the window is larger than "
                            "the padded input")
        out = self._int8_activation(out_name, _layout_for((n, out_ch, *out_hw)), out_scale,
                                    out_zp)
        self.nodes.append(ir.Node(self._unique_node_name(node.label), op, inputs, [out]))

    def _qlinear_conv(self, node: _OnnxNode) -> None:
        x_scale, x_zp = self._scale_zp(node, 1, "input")
        x = self._int8_input(node, 0, x_scale, x_zp)
        layout = self.layouts[node.inputs[0]]
        weight = np.asarray(self._constant(node, 3, "weight"))
        w_scale = np.asarray(self._constant(node, 4, "weight scale"))
        w_zp = self._zero_point(node, 5, "weight")
        y_scale, y_zp = self._scale_zp(node, 6, "output")
        bias = self._optional_constant(node, 8, "bias")
        self._emit_conv(node, x, layout, weight, w_scale, w_zp, bias, x_scale,
                        node.proto.output[0], y_scale, y_zp)

    def _qdq_conv(self, node: _OnnxNode) -> None:
        x = self._dq_input(node, 0)
        w = self._dq_input(node, 1)
        b = self._dq_input(node, 2) if len(node.inputs) > 2 and node.inputs[2] else None
        if x.tensor is None or w.data is None or (b is not None and b.data is None):
            raise UserError(f"ONNX Conv {node.where()}: expected a dequantised activation, "
                            "constant weights and a constant bias")
        _check_channel_axis(node, w, 0)
        out, y_scale, y_zp = self._qdq_output(node)
        self._emit_conv(node, x.tensor, self.layouts[node.inputs[0]], w.data, w.scale,
                        w.zero_point, None if b is None else b.data, float(x.scale[0]), out,
                        y_scale, y_zp)

    # ------------------------------------------------------------------ fully connected

    def _emit_fc(self, node: _OnnxNode, x: str, weight_oi: np.ndarray, w_scale: np.ndarray,
                 w_zp: np.ndarray, bias: np.ndarray | None, x_scale: float, out_name: str,
                 out_scale: float, out_zp: int) -> None:
        layout = self.layouts[node.inputs[0]]
        if len(layout.onnx_shape) != 2 or not layout.same_order_as_onnx:
            raise UserError(f"ONNX {node.op_type} {node.where()} needs a (1, N) input, got "
                            f"{layout.onnx_shape}")
        out_features = weight_oi.shape[0]
        quant = self._weight(node, weight_oi, w_scale, w_zp, out_features, 0, "weight")
        w = self._int_const(f"{node.label}_weight", weight_oi, "int8", quant)
        if bias is not None and bias.ndim > 1:
            bias = bias.reshape(-1)
        inputs = [x, w] + self._bias(node, bias, out_features, x_scale, quant)
        layout_out = _Layout(_Order.PLAIN, (1, out_features))
        out = self._int8_activation(out_name, layout_out, out_scale, out_zp)
        self.nodes.append(ir.Node(self._unique_node_name(node.label),
                                  ir.FullyConnected(requantization=ORT), inputs, [out]))

    def _gemm_weight(self, node: _OnnxNode, b: np.ndarray) -> np.ndarray:
        attrs = node.attrs
        if int(attrs.get("transA", 0)) or float(attrs.get("alpha", 1.0)) != 1.0 \
                or float(attrs.get("beta", 1.0)) != 1.0:
            raise UserError(f"ONNX {node.op_type} {node.where()}: only transA=0, alpha=1 and "
                            "beta=1 are supported")
        return b if int(attrs.get("transB", 0)) else b.T

    def _qgemm(self, node: _OnnxNode) -> None:
        x_scale, x_zp = self._scale_zp(node, 1, "input")
        x = self._int8_input(node, 0, x_scale, x_zp)
        if len(node.inputs) < 9 or not node.inputs[7]:
            raise UserError(f"ONNX QGemm {node.where()} has a float output; mbgen needs int8")
        weight = self._gemm_weight(node, np.asarray(self._constant(node, 3, "weight")))
        w_scale = np.asarray(self._constant(node, 4, "weight scale"))
        w_zp = self._zero_point(node, 5, "weight")
        bias = self._optional_constant(node, 6, "bias")
        y_scale, y_zp = self._scale_zp(node, 7, "output")
        self._emit_fc(node, x, weight, w_scale, w_zp, bias, x_scale, node.proto.output[0],
                      y_scale, y_zp)

    def _qlinear_matmul(self, node: _OnnxNode) -> None:
        x_scale, x_zp = self._scale_zp(node, 1, "input")
        x = self._int8_input(node, 0, x_scale, x_zp)
        weight = np.asarray(self._constant(node, 3, "weight")).T
        w_scale = np.asarray(self._constant(node, 4, "weight scale"))
        w_zp = self._zero_point(node, 5, "weight")
        y_scale, y_zp = self._scale_zp(node, 6, "output")
        self._emit_fc(node, x, weight, w_scale, w_zp, None, x_scale, node.proto.output[0],
                      y_scale, y_zp)

    def _qdq_fc(self, node: _OnnxNode) -> None:
        x = self._dq_input(node, 0)
        w = self._dq_input(node, 1)
        b = self._dq_input(node, 2) if len(node.inputs) > 2 and node.inputs[2] else None
        if x.tensor is None or w.data is None or (b is not None and b.data is None):
            raise UserError(f"ONNX {node.op_type} {node.where()}: expected a dequantised "
                            "activation, constant weights and a constant bias")
        weight = self._gemm_weight(node, w.data) if node.op_type == "Gemm" else w.data.T
        transposed = node.op_type == "Gemm" and int(node.attrs.get("transB", 0))
        _check_channel_axis(node, w, 0 if transposed else 1)  # the output-feature axis
        out, y_scale, y_zp = self._qdq_output(node)
        self._emit_fc(node, x.tensor, weight, w.scale, w.zero_point,
                      None if b is None else b.data, float(x.scale[0]), out, y_scale, y_zp)

    # ------------------------------------------------------------------ elementwise, pooling

    def _emit_binary(self, node: _OnnxNode, a: str, b: str, values: tuple[str, str],
                     out_name: str, scale: float, zp: int) -> None:
        """Add (same shapes) or Mul (same shapes, or one side (1, C, 1, 1) as in
        squeeze-excite; the product commutes, so the broadcast side becomes b)."""
        la, lb = self.layouts[values[0]], self.layouts[values[1]]
        is_mul = node.op_type in ("QLinearMul", "Mul")
        if is_mul and la.onnx_shape != lb.onnx_shape and _is_channel_vector(la, lb):
            a, b, la, lb = b, a, lb, la
        if la.onnx_shape != lb.onnx_shape and not (is_mul and _is_channel_vector(lb, la)):
            raise UserError(f"ONNX {node.op_type} {node.where()}: broadcasting "
                            f"{la.onnx_shape} with {lb.onnx_shape} is not supported")
        out = self._int8_activation(out_name, la, scale, zp)
        arithmetic = self._storage_arithmetic
        op: ir.OpAttrs = ir.Mul(requantization=arithmetic) if is_mul \
            else ir.Add(requantization=arithmetic)
        self.nodes.append(ir.Node(self._unique_node_name(node.label), op, [a, b], [out]))

    def _qlinear_binary(self, node: _OnnxNode) -> None:
        """QLinearAdd / QLinearMul (com.microsoft): A, scale, zp, B, scale, zp, C scale, zp."""
        a_scale, a_zp = self._scale_zp(node, 1, "input A")
        b_scale, b_zp = self._scale_zp(node, 4, "input B")
        y_scale, y_zp = self._scale_zp(node, 6, "output")
        self._emit_binary(node, self._int8_input(node, 0, a_scale, a_zp),
                          self._int8_input(node, 3, b_scale, b_zp),
                          (node.inputs[0], node.inputs[3]), node.proto.output[0], y_scale, y_zp)

    def _qdq_binary(self, node: _OnnxNode) -> None:
        a, b = self._dq_input(node, 0), self._dq_input(node, 1)
        if a.tensor is None or b.tensor is None:
            raise UserError(f"ONNX {node.op_type} {node.where()}: a constant operand is not "
                            "supported")
        out, y_scale, y_zp = self._qdq_output(node)
        self._emit_binary(node, a.tensor, b.tensor, (node.inputs[0], node.inputs[1]), out,
                          y_scale, y_zp)

    def _emit_global_pool(self, node: _OnnxNode, x: str, out_name: str, scale: float,
                          zp: int) -> None:
        if int(node.attrs.get("channels_last", 0)):
            raise UserError(f"ONNX {node.op_type} {node.where()}: channels_last is not "
                            "supported")
        layout = self.layouts[node.inputs[0]]
        if layout.order is not _Order.NHWC:
            raise UserError(f"ONNX {node.op_type} {node.where()} needs an NCHW input")
        n, c, _, _ = layout.onnx_shape
        out = self._int8_activation(out_name, _layout_for((n, c, 1, 1)), scale, zp)
        self.nodes.append(ir.Node(self._unique_node_name(node.label),
                                  ir.Mean((1, 2), True, requantization=ORT), [x], [out]))

    def _qlinear_global_pool(self, node: _OnnxNode) -> None:
        x_scale, x_zp = self._scale_zp(node, 1, "input")
        y_scale, y_zp = self._scale_zp(node, 3, "output")
        self._emit_global_pool(node, self._int8_input(node, 0, x_scale, x_zp),
                               node.proto.output[0], y_scale, y_zp)

    def _qdq_global_pool(self, node: _OnnxNode) -> None:
        x = self._dq_input(node, 0)
        out, y_scale, y_zp = self._qdq_output(node)
        self._emit_global_pool(node, x.tensor, out, y_scale, y_zp)

    def _emit_average_pool(self, node: _OnnxNode, x: str, out_name: str, scale: float,
                           zp: int) -> None:
        attrs = node.attrs
        for name in ("channels_last", "count_include_pad", "ceil_mode"):
            if int(attrs.get(name, 0)):
                raise UserError(f"ONNX {node.op_type} {node.where()}: {name}=1 is not "
                                "supported")
        if any(d != 1 for d in attrs.get("dilations", (1, 1))):
            raise UserError(f"ONNX {node.op_type} {node.where()}: dilated pooling is not "
                            "supported")
        layout = self.layouts[node.inputs[0]]
        if layout.order is not _Order.NHWC:
            raise UserError(f"ONNX {node.op_type} {node.where()} needs an NCHW input")
        n, c, h, w = layout.onnx_shape
        kernel = _pair(attrs.get("kernel_shape", ()), node)
        stride = _pair(attrs.get("strides", (1, 1)), node)
        padding = self._window_padding(node, (h, w), kernel, stride, (1, 1))
        if kernel == (h, w) and padding == ir.Padding():
            # onnxruntime runs this as its global average pool (integer sum, float scale)
            out = self._int8_activation(out_name, _layout_for((n, c, 1, 1)), scale, zp)
            self.nodes.append(ir.Node(self._unique_node_name(node.label),
                                      ir.Mean((1, 2), True, requantization=ORT), [x], [out]))
            return
        if max(padding.top, padding.bottom) >= kernel[0] or \
                max(padding.left, padding.right) >= kernel[1]:
            raise UserError(f"ONNX {node.op_type} {node.where()}: padding as large as the "
                            "window leaves windows with no pixel")
        out_h = (h + padding.top + padding.bottom - kernel[0]) // stride[0] + 1
        out_w = (w + padding.left + padding.right - kernel[1]) // stride[1] + 1
        out = self._int8_activation(out_name, _layout_for((n, c, out_h, out_w)), scale, zp)
        op = ir.AveragePool2D(kernel, stride, padding, requantization=self._storage_arithmetic)
        self.nodes.append(ir.Node(self._unique_node_name(node.label), op, [x], [out]))

    def _qlinear_average_pool(self, node: _OnnxNode) -> None:
        x_scale, x_zp = self._scale_zp(node, 1, "input")
        y_scale, y_zp = self._scale_zp(node, 3, "output")
        self._emit_average_pool(node, self._int8_input(node, 0, x_scale, x_zp),
                                node.proto.output[0], y_scale, y_zp)

    def _qdq_average_pool(self, node: _OnnxNode) -> None:
        x = self._dq_input(node, 0)
        out, y_scale, y_zp = self._qdq_output(node)
        self._emit_average_pool(node, x.tensor, out, y_scale, y_zp)

    # ------------------------------------------------------------------ float activations

    def _qdq_activation(self, node: _OnnxNode) -> None:
        """DequantizeLinear -> HardSigmoid / HardSwish / Sigmoid -> QuantizeLinear (both
        formats: onnxruntime runs the chain in float32, or fuses a Sigmoid into
        QLinearSigmoid, whose table holds the same float32 results)."""
        x = self._dq_input(node, 0)
        if x.tensor is None:
            raise UserError(f"ONNX {node.op_type} {node.where()} of a constant is not "
                            "supported")
        out, y_scale, y_zp = self._qdq_output(node)
        if node.op_type == "HardSigmoid":
            alpha = float(np.float32(node.attrs.get("alpha", 0.2)))
            beta = float(np.float32(node.attrs.get("beta", 0.5)))
            op = ir.DequantizedActivation("HardSigmoid", alpha, beta)
        else:
            op = ir.DequantizedActivation(node.op_type)
        name = self._int8_activation(out, self.layouts[node.inputs[0]], y_scale, y_zp)
        self.nodes.append(ir.Node(self._unique_node_name(node.label), op, [x.tensor], [name]))

    def _qlinear_sigmoid(self, node: _OnnxNode) -> None:
        """com.microsoft QLinearSigmoid (X, X_scale, X_zp, Y_scale, Y_zp): onnxruntime looks
        the result up in a table of MLAS's float32 logistic of the 256 dequantised codes."""
        if len(node.inputs) not in (4, 5):
            raise UserError(f"ONNX QLinearSigmoid {node.where()} has {len(node.inputs)} inputs; "
                            "it takes X, X_scale, X_zero_point, Y_scale, Y_zero_point")
        x_scale, x_zp = self._scale_zp(node, 1, "input")
        x = self._int8_input(node, 0, x_scale, x_zp)
        y_scale, y_zp = self._scale_zp(node, 3, "output")
        name = self._int8_activation(node.proto.output[0], self.layouts[node.inputs[0]],
                                     y_scale, y_zp)
        self.nodes.append(ir.Node(self._unique_node_name(node.label),
                                  ir.DequantizedActivation("Sigmoid"), [x], [name]))

    def _qdq_reduce_mean(self, node: _OnnxNode) -> None:
        """DequantizeLinear -> ReduceMean over H and W -> QuantizeLinear (float32 in
        onnxruntime, both formats)."""
        x = self._dq_input(node, 0)
        layout = self.layouts[node.inputs[0]]
        if x.tensor is None or layout.order is not _Order.NHWC:
            raise UserError(f"ONNX ReduceMean {node.where()} needs an NCHW activation")
        if len(node.inputs) > 1 and node.inputs[1]:
            axes = self._constant(node, 1, "axes").reshape(-1).tolist()
        else:
            axes = list(node.attrs.get("axes", ()))
        if sorted(int(a) % 4 for a in axes) != [2, 3]:
            raise UserError(f"ONNX ReduceMean {node.where()} over axes {axes}; in int8 models "
                            "mbgen takes the mean over H and W (axes 2, 3)")
        keep = bool(int(node.attrs.get("keepdims", 1)))
        out, y_scale, y_zp = self._qdq_output(node)
        n, c, _, _ = layout.onnx_shape
        name = self._int8_activation(out, _layout_for((n, c, 1, 1) if keep else (n, c)),
                                     y_scale, y_zp)
        self.nodes.append(ir.Node(self._unique_node_name(node.label),
                                  ir.DequantizedMean(keep), [x.tensor], [name]))


def _is_channel_vector(small: _Layout, big: _Layout) -> bool:
    """True when ``small`` is (1, C, 1, 1) and ``big`` is (1, C, H, W)."""
    return (small.order is _Order.NHWC and big.order is _Order.NHWC
            and small.onnx_shape == (1, big.onnx_shape[1], 1, 1))


def _check_channel_axis(node: _OnnxNode, weight, axis: int) -> None:
    """Per-channel weight scales must run along the output channels."""
    if weight.scale.size > 1 and weight.axis % weight.data.ndim != axis:
        raise UserError(f"ONNX {node.op_type} {node.where()}: per-channel weight scales along "
                        f"axis {weight.axis}; mbgen needs them per output channel (axis {axis})")
