"""The float ONNX ops as IR nodes: convolutions, batch norm, activations, elementwise ops,
pools, pads, reshapes and the classifier. A mixin of ``onnx_frontend._Converter``, which owns
the tensors, layouts and node bookkeeping these methods call."""

from __future__ import annotations

import numpy as np

from mbgen import ir
from mbgen.errors import UserError
from mbgen.frontends.hard_sigmoid import hard_sigmoid_layers
from mbgen.frontends.onnx_layout import _Layout, _layout_for, _OnnxNode, _Order, _pair
from mbgen.frontends.onnx_model import _ints

_INF = 3.0e38        # |bound| beyond this is 'no bound' (Clip's defaults are +-FLT_MAX)
_HARD_SIGMOID_ALPHA = 1.0 / 6.0   # torch's hardsigmoid: relu6(x + 3) / 6
_HARD_SIGMOID_BETA = 0.5


class FloatLayers:
    """The per-op handlers of the float converter (``_CONVERTERS`` maps op types to them)."""

    def _conv(self, node: _OnnxNode) -> None:
        x, layout = self._spatial_input(node)
        weight = self._constant(node, 1, "weight")
        bias = self._optional_constant(node, 2, "bias")
        out_ch, in_per_group, kh, kw, in_ch, group, stride, dilation, padding = \
            self._conv_geometry(node, layout, weight)
        inputs = [x]
        if group == 1:
            op: ir.OpAttrs = ir.Conv2D(stride, padding, dilation)
            inputs.append(self._const(node.inputs[1], weight.transpose(0, 2, 3, 1)))  # OHWI
        elif group == in_ch and in_per_group == 1 and out_ch % in_ch == 0:
            op = ir.DepthwiseConv2D(stride, padding, out_ch // in_ch, dilation)
            # output channel c*m + j reads input channel c in both ONNX and TFLite
            inputs.append(self._const(node.inputs[1], weight.transpose(1, 2, 3, 0)))  # 1HWC
        else:
            raise UserError(f"ONNX Conv {node.where()} has group={group} with {in_ch} input "
                            "channels; mbgen supports group=1 (convolution) and group=channels "
                            "(depthwise) only")
        if bias is not None:
            inputs.append(self._const(node.inputs[2], bias.reshape(out_ch)))
        self._emit(node, op, inputs, node.proto.output[0], self._output_layout(node))

    def _batch_norm(self, node: _OnnxNode) -> None:
        x, _ = self._spatial_input(node)
        attrs = node.attrs
        if int(attrs.get("training_mode", 0)) != 0:
            raise UserError(f"ONNX BatchNormalization {node.where()} is in training mode")
        params = [self._const(node.inputs[i], self._constant(node, i, what).reshape(-1))
                  for i, what in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance"))]
        eps = float(np.float32(attrs.get("epsilon", 1e-5)))
        self._emit(node, ir.BatchNorm(eps), [x] + params, node.proto.output[0],
                   self._output_layout(node))

    # ------------------------------------------------------------------ activations

    def _unary(self, node: _OnnxNode, op: ir.OpAttrs) -> None:
        x, layout = self._input(node, 0)
        self._emit(node, op, [x], node.proto.output[0], layout)

    def _relu(self, node: _OnnxNode) -> None:
        self._unary(node, ir.ActivationOp(ir.Activation.RELU))

    def _clip(self, node: _OnnxNode) -> None:
        attrs = node.attrs
        if self.opset < 11:
            low, high = float(attrs.get("min", -np.inf)), float(attrs.get("max", np.inf))
        else:
            low_arr = self._optional_constant(node, 1, "min bound")
            high_arr = self._optional_constant(node, 2, "max bound")
            low = float(low_arr.reshape(-1)[0]) if low_arr is not None else -np.inf
            high = float(high_arr.reshape(-1)[0]) if high_arr is not None else np.inf
        low = -np.inf if low <= -_INF else low
        high = np.inf if high >= _INF else high
        if low == 0.0 and high == 6.0:
            self._unary(node, ir.ActivationOp(ir.Activation.RELU6))
        elif low == 0.0 and high == np.inf:
            self._unary(node, ir.ActivationOp(ir.Activation.RELU))
        elif low == -np.inf and high == np.inf:
            self._unary(node, ir.Identity("Clip"))
        else:
            raise UserError(f"ONNX Clip {node.where()} clamps to [{low:g}, {high:g}]; mbgen "
                            "supports [0, 6] (ReLU6) and [0, inf) (ReLU) only")

    def _hard_sigmoid(self, node: _OnnxNode) -> None:
        """clamp(alpha * x + beta, 0, 1) as two 1x1 depthwise layers (see hard_sigmoid.py)."""
        x, layout = self._input(node, 0)
        attrs = node.attrs
        out = self._activation(node.proto.output[0], layout)
        tensors, nodes = hard_sigmoid_layers(
            self._unique_node_name(node.label), self.tensors[x], out,
            float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5)))
        for tensor in tensors:
            if tensor.name != out:
                if tensor.name in self.tensors:
                    raise ir.GraphError(f"tensor {tensor.name!r} defined twice")
                self.tensors[tensor.name] = tensor
        self.node_names.update(n.name for n in nodes)
        self.nodes.extend(nodes)

    def _mul(self, node: _OnnxNode) -> None:
        x_value = self.hard_swish_of.get(node.label)
        if x_value is not None:
            x, layout = self._input(node, node.inputs.index(x_value))
            self._emit(node, ir.HardSwish(), [x], node.proto.output[0], layout)
            return
        self._binary(node, ir.Mul(), allow_channel_broadcast=True)

    def _add(self, node: _OnnxNode) -> None:
        self._binary(node, ir.Add(), allow_channel_broadcast=False)

    def _binary(self, node: _OnnxNode, op: ir.OpAttrs, allow_channel_broadcast: bool) -> None:
        for value in node.inputs[:2]:
            if value in self.constants:
                # The IR could carry it, but the float interpreter and most kernels cannot;
                # MobileNets never need it, so say so plainly instead of failing later.
                raise UserError(f"ONNX {node.op_type} {node.where()} with the constant operand "
                                f"{value!r} is unsupported; mbgen supports {node.op_type} of "
                                "two activations")
        (a, la), (b, lb) = self._input(node, 0), self._input(node, 1)
        if la == lb:
            self._emit(node, op, [a, b], node.proto.output[0], la)
            return
        if allow_channel_broadcast and la.order is _Order.NHWC and lb.order is _Order.NHWC:
            # squeeze-excite: (1,C,H,W) * (1,C,1,1); the IR wants the broadcast operand second
            big, small = (la, lb) if lb.onnx_shape[2:] == (1, 1) else (lb, la)
            if small.onnx_shape == big.onnx_shape[:2] + (1, 1):
                names = [a, b] if big is la else [b, a]
                self._emit(node, op, names, node.proto.output[0], big)
                return
        raise UserError(f"ONNX {node.op_type} {node.where()} broadcasts {la.onnx_shape} with "
                        f"{lb.onnx_shape}; mbgen supports equal shapes"
                        + (" and per-channel (1,C,1,1) scales" if allow_channel_broadcast else ""))

    # ------------------------------------------------------------------ pooling

    def _global_average_pool(self, node: _OnnxNode) -> None:
        x, _ = self._spatial_input(node)
        self._emit(node, ir.Mean((1, 2), True), [x], node.proto.output[0],
                   self._output_layout(node))

    def _reduce_mean(self, node: _OnnxNode) -> None:
        x, layout = self._spatial_input(node)
        attrs = node.attrs
        if "axes" in attrs:
            axes = _ints(attrs["axes"])
        else:
            axes_arr = self._optional_constant(node, 1, "axes")
            axes = _ints(axes_arr.reshape(-1)) if axes_arr is not None else ()
        if sorted(a % 4 for a in axes) != [2, 3]:
            raise UserError(f"ONNX ReduceMean {node.where()} over axes {axes}; mbgen supports "
                            "the spatial mean (axes 2 and 3 of NCHW) only")
        keep = bool(attrs.get("keepdims", 1))
        self._emit(node, ir.Mean((1, 2), keep), [x], node.proto.output[0],
                   self._output_layout(node))

    def _average_pool(self, node: _OnnxNode) -> None:
        x, layout = self._spatial_input(node)
        attrs = node.attrs
        kernel = _pair(attrs["kernel_shape"], node)
        stride = _pair(attrs.get("strides", (1, 1)), node)
        if _pair(attrs.get("dilations", (1, 1)), node) != (1, 1):
            raise UserError(f"ONNX AveragePool {node.where()} is dilated; mbgen does not "
                            "support that")
        padding = self._window_padding(node, layout.onnx_shape[2:], kernel, stride, (1, 1))
        out_layout = self._output_layout(node)
        h, w = layout.onnx_shape[2:]
        floor_hw = ((h + padding.top + padding.bottom - kernel[0]) // stride[0] + 1,
                    (w + padding.left + padding.right - kernel[1]) // stride[1] + 1)
        if floor_hw != out_layout.onnx_shape[2:]:
            raise UserError(f"ONNX AveragePool {node.where()} with ceil_mode adds partial "
                            "windows; mbgen supports floor-mode pooling only")
        if padding != ir.Padding() and int(attrs.get("count_include_pad", 0)):
            # The IR's pooling (TFLite's) leaves padded pixels out of the divisor; counting
            # them, as this node asks, is the same as pooling an explicitly zero-padded input.
            n, c, h, w = layout.onnx_shape
            padded = _Layout(_Order.NHWC, (n, c, h + padding.top + padding.bottom,
                                           w + padding.left + padding.right))
            pad_output = f"{node.proto.output[0]}_padded"
            pad_name = self._activation(pad_output, padded)
            self.nodes.append(ir.Node(self._unique_node_name(f"{node.label}_pad"),
                                      ir.Pad(padding), [x], [pad_name]))
            x, padding = pad_name, ir.Padding()
        self._emit(node, ir.AveragePool2D(kernel, stride, padding), [x],
                   node.proto.output[0], out_layout)

    def _pad(self, node: _OnnxNode) -> None:
        x, layout = self._spatial_input(node)
        attrs = node.attrs
        mode = attrs.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        if mode != "constant":
            raise UserError(f"ONNX Pad {node.where()} uses mode {mode!r}; mbgen supports "
                            "constant (zero) padding only")
        if self.opset < 11:
            pads = _ints(attrs.get("pads", ()))
            value = float(attrs.get("value", 0.0))
        else:
            pads = _ints(self._constant(node, 1, "pads").reshape(-1))
            fill = self._optional_constant(node, 2, "constant value")
            value = float(fill.reshape(-1)[0]) if fill is not None and fill.size else 0.0
            axes_arr = self._optional_constant(node, 3, "axes")
            if axes_arr is not None:  # opset 18: pads only for the listed axes
                full = [0] * 8
                axes = [int(a) % 4 for a in axes_arr.reshape(-1)]
                for i, axis in enumerate(axes):
                    full[axis], full[axis + 4] = pads[i], pads[i + len(axes)]
                pads = tuple(full)
        if value != 0.0:
            raise UserError(f"ONNX Pad {node.where()} pads with {value:g}; mbgen pads with "
                            "zeros only")
        if len(pads) != 8 or min(pads) < 0 or any(pads[i] for i in (0, 1, 4, 5)):
            raise UserError(f"ONNX Pad {node.where()} has pads {pads}; mbgen supports "
                            "non-negative padding of H and W only")
        padding = ir.Padding(top=pads[2], bottom=pads[6], left=pads[3], right=pads[7])
        self._emit(node, ir.Pad(padding), [x], node.proto.output[0], self._output_layout(node))

    # ------------------------------------------------------------------ shapes

    def _reshape_like(self, node: _OnnxNode) -> None:
        """Reshape, Flatten, Squeeze, Unsqueeze: only the output shape matters."""
        x, layout = self._input(node, 0)
        out_shape = self._shape(node.proto.output[0], node)
        if node.op_type == "Reshape" and node.inputs[1] not in self.constants:
            raise UserError(f"ONNX Reshape {node.where()}: the target shape must be constant")
        if layout.order is _Order.CHW_FLAT and out_shape == (1,) + layout.chw:
            out_layout = _layout_for(out_shape)   # un-flattening: back to NHWC as it was
        elif layout.order is _Order.CHW_FLAT:
            if out_shape != layout.onnx_shape:
                raise UserError(f"ONNX {node.op_type} {node.where()} reshapes a flattened "
                                f"NCHW tensor to {out_shape}; mbgen cannot express that in NHWC")
            out_layout = layout
        elif layout.same_order_as_onnx:
            out_layout = _layout_for(out_shape)
            if not out_layout.same_order_as_onnx:
                raise UserError(f"ONNX {node.op_type} {node.where()} makes the NCHW shape "
                                f"{out_shape} from {layout.onnx_shape}; mbgen cannot express "
                                "that in NHWC")
        elif len(out_shape) == 2 and out_shape[0] == 1:
            _, c, h, w = layout.onnx_shape
            out_layout = _Layout(_Order.CHW_FLAT, out_shape, (c, h, w))
        else:
            raise UserError(f"ONNX {node.op_type} {node.where()} reshapes the NCHW tensor "
                            f"{layout.onnx_shape} to {out_shape}; mbgen supports flattening "
                            "to (1, N) only")
        self._emit(node, ir.Reshape(out_layout.ir_shape), [x], node.proto.output[0], out_layout)

    def _identity(self, node: _OnnxNode) -> None:
        if node.op_type == "Dropout" and len(node.inputs) > 2 and node.inputs[2]:
            training = self._constant(node, 2, "training_mode")
            if bool(training.reshape(-1)[0]):
                raise UserError(f"ONNX Dropout {node.where()} is in training mode")
        self._unary(node, ir.Identity(node.op_type))

    # ------------------------------------------------------------------ classifier

    def _fc_weight(self, node: _OnnxNode, weight_oi: np.ndarray, layout: _Layout) -> np.ndarray:
        """Permute FC weight columns when the input vector was flattened from NHWC."""
        if layout.order is not _Order.CHW_FLAT:
            return weight_oi
        c, h, w = layout.chw
        out_ch = weight_oi.shape[0]
        return weight_oi.reshape(out_ch, c, h, w).transpose(0, 2, 3, 1).reshape(out_ch, -1)

    def _vector_input(self, node: _OnnxNode) -> tuple[str, _Layout]:
        x, layout = self._input(node, 0)
        if len(layout.onnx_shape) != 2 or layout.onnx_shape[0] != 1:
            raise UserError(f"ONNX {node.op_type} {node.where()} reads shape "
                            f"{layout.onnx_shape}; mbgen supports (1, N) inputs only "
                            "(add a Flatten)")
        return x, layout

    def _emit_fully_connected(self, node: _OnnxNode, x: str, layout: _Layout,
                              weight_oi: np.ndarray, weight_name: str,
                              bias: np.ndarray | None, bias_name: str, output: str) -> None:
        if weight_oi.shape[1] != layout.onnx_shape[1]:
            raise UserError(f"ONNX {node.op_type} {node.where()}: weight {weight_oi.shape} "
                            f"does not match input {layout.onnx_shape}")
        inputs = [x, self._const(weight_name, self._fc_weight(node, weight_oi, layout))]
        if bias is not None:
            out_ch = weight_oi.shape[0]
            inputs.append(self._const(bias_name,
                                      np.broadcast_to(bias, (1, out_ch)).reshape(out_ch)))
        out_shape = self._shape(output, node)
        self._emit(node, ir.FullyConnected(), inputs, output, _Layout(_Order.PLAIN, out_shape))

    def _gemm(self, node: _OnnxNode) -> None:
        x, layout = self._vector_input(node)
        attrs = node.attrs
        if int(attrs.get("transA", 0)):
            raise UserError(f"ONNX Gemm {node.where()} has transA=1; mbgen supports "
                            "activations as (1, N) rows only")
        weight = self._constant(node, 1, "weight (B)").astype(np.float32)
        if weight.ndim != 2:
            raise UserError(f"ONNX Gemm {node.where()}: weight must be 2-D")
        weight_oi = weight if int(attrs.get("transB", 0)) else weight.T
        alpha = float(attrs.get("alpha", 1.0))
        beta = float(attrs.get("beta", 1.0))
        if alpha != 1.0:
            weight_oi = weight_oi * np.float32(alpha)
        bias = self._optional_constant(node, 2, "bias (C)")
        if bias is not None:
            bias = bias.astype(np.float32)
            if bias.size not in (1, weight_oi.shape[0]):
                raise UserError(f"ONNX Gemm {node.where()}: bias shape {bias.shape} is not "
                                "per output")
            if beta != 1.0:
                bias = bias * np.float32(beta)
        bias_name = node.inputs[2] if bias is not None else ""
        self._emit_fully_connected(node, x, layout, weight_oi, node.inputs[1], bias, bias_name,
                                   node.proto.output[0])

    def _matmul(self, node: _OnnxNode) -> None:
        x, layout = self._vector_input(node)
        weight = self._constant(node, 1, "weight").astype(np.float32)
        if weight.ndim != 2:
            raise UserError(f"ONNX MatMul {node.where()}: weight must be 2-D")
        output, bias, bias_name = node.proto.output[0], None, ""
        add = self.bias_add_of.get(node.label)
        if add is not None:
            bias_name = [v for v in add.inputs if v != output][0]
            bias = self.constants[bias_name].astype(np.float32)
            output = add.proto.output[0]
        self._emit_fully_connected(node, x, layout, weight.T, node.inputs[1], bias, bias_name,
                                   output)

    def _softmax(self, node: _OnnxNode) -> None:
        x, layout = self._input(node, 0)
        rank = len(layout.onnx_shape)
        axis = int(node.attrs.get("axis", 1 if self.opset < 13 else -1)) % rank
        if rank != 2 or axis != 1:
            raise UserError(f"ONNX Softmax {node.where()} over axis {axis} of shape "
                            f"{layout.onnx_shape}; mbgen supports the last axis of (1, N)")
        self._emit(node, ir.Softmax(1.0), [x], node.proto.output[0], layout)
