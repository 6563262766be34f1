"""Stage 2 of the TFLite frontend, per operator: conv, depthwise, fully connected, add, mul,
average pool, mean, reshape, softmax, the unary ops and dequantize as IR nodes. A mixin of
``tflite_frontend._GraphBuilder``, which owns the checks, tensors and messages these call."""

from __future__ import annotations

import math

import numpy as np

from mbgen import ir
from mbgen.frontends.tflite_parse import _FLOAT16, _FLOAT32, _INT32, _INT64


class TfliteLayers:
    """The operator handlers ``_GraphBuilder.convert`` dispatches to."""

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
