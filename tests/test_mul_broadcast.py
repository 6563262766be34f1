"""int8 MUL with TFLite broadcasting, against TFLM: squeeze-excite scales (either operand
order), spatial (1,H,W,1) gates, both operands broadcasting, constant scalars, per-channel
and per-column constants, and flat vectors.

Per seed and case, a one-input graph (random shapes, scales and zero points, random
constants) is written as a .tflite by our writer and run in TFLM; the numpy reference and the
generated C (portable kernel, host) must equal TFLM bit for bit, and so must the graph the
TFLite frontend reads back from the file.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers_c import build_folder, run
from mbgen import codegen, ir
from mbgen.codegen.lower_broadcast import broadcast_strides
from mbgen.reference import run_int8

pytest.importorskip("tflite_micro.python.tflite_micro.runtime",
                    reason="the TFLM reference needs the tflite-micro package")
from mbgen.export.tflite_writer import write_tflite  # noqa: E402
from mbgen.frontends.tflite_frontend import load_tflite  # noqa: E402
from mbgen.tflm import run_tflm  # noqa: E402

A = ir.Activation


class Chain:
    """A one-input int8 graph grown op by op with random (TFLite-converter-like) parameters."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.tensors: dict[str, ir.Tensor] = {}
        self.nodes: list[ir.Node] = []

    def scale(self, low: float = 0.01, high: float = 0.1) -> float:
        return float(np.float32(math.exp(self.rng.uniform(math.log(low), math.log(high)))))

    def zp(self) -> int:
        return int(self.rng.integers(-30, 31))

    def _tensor(self, shape, scale, zp, data=None) -> str:
        name = f"t{len(self.tensors)}"
        self.tensors[name] = ir.Tensor(name, tuple(shape), "int8", data,
                                       ir.QuantParams.per_tensor(scale, zp))
        return name

    def input(self, shape) -> str:
        return self._tensor(shape, self.scale(), self.zp())

    def const(self, shape, scale: float | None = None) -> str:
        data = self.rng.integers(-128, 128, size=shape).astype(np.int8)
        return self._tensor(shape, scale or self.scale(), self.zp(), data)

    def _node(self, op: ir.OpAttrs, inputs: list[str], out: str) -> str:
        self.nodes.append(ir.Node(f"n{len(self.nodes)}_{ir.op_name(op)}", op, inputs, [out]))
        return out

    def real(self, name: str) -> np.ndarray:
        """The real values of ``name`` on a fixed probe input (the reference so far)."""
        t = self.tensors[name]
        if t.data is not None:
            q = t.data
        else:
            probe = np.random.default_rng(7).integers(-128, 128, self.tensors["t0"].shape)
            q = run_int8(self.graph("partial", name), probe.astype(np.int8))[name]
        return t.quant.scalar_scale * (q.astype(np.float64) - t.quant.scalar_zero_point)

    def mul(self, a: str, b: str, act: A = A.NONE) -> str:
        """Output quantisation calibrated on the probe: ~200 of the 256 steps in use."""
        product = self.real(a) * self.real(b)
        if act is not A.NONE:
            product = np.clip(product, 0.0, 6.0 if act is A.RELU6 else None)
        low, high = min(product.min(), 0.0), max(product.max(), 0.0)
        scale = float(np.float32((high - low) / self.rng.uniform(180, 230)))
        zp = int(np.clip(round(-128 - low / scale) + self.rng.integers(-8, 9), -128, 127))
        return self._node(ir.Mul(act), [a, b], self._tensor(product.shape, scale, zp))

    def global_pool(self, x: str) -> str:
        t = self.tensors[x]
        _, h, w, c = t.shape
        out = self._tensor((1, 1, 1, c), t.quant.scalar_scale, t.quant.scalar_zero_point)
        return self._node(ir.AveragePool2D((h, w), (1, 1)), [x], out)

    def to_one_channel(self, x: str) -> str:
        """A 1x1 convolution to one channel: a (1, H, W, 1) spatial gate."""
        t = self.tensors[x]
        _, h, w, c = t.shape
        w_scale = self.scale(0.005, 0.02)
        weight = f"t{len(self.tensors)}"
        self.tensors[weight] = ir.Tensor(
            weight, (1, 1, 1, c), "int8",
            self.rng.integers(-127, 128, size=(1, 1, 1, c)).astype(np.int8),
            ir.QuantParams(np.array([w_scale], np.float32), np.zeros(1, np.int32), 0))
        out_scale = math.sqrt(c) * 74 * 73 * t.quant.scalar_scale * w_scale / 40
        return self._node(ir.Conv2D(), [x, weight],
                          self._tensor((1, h, w, 1), out_scale, self.zp()))

    def reshape(self, x: str, shape) -> str:
        t = self.tensors[x]
        out = self._tensor(shape, t.quant.scalar_scale, t.quant.scalar_zero_point)
        return self._node(ir.Reshape(tuple(shape)), [x], out)

    def graph(self, name: str, output: str | None = None) -> ir.Graph:
        g = ir.Graph(name, dict(self.tensors), list(self.nodes), ["t0"],
                     [output or self.nodes[-1].outputs[0]])
        ir.verify(g)
        return g


def _squeeze_excite(c: Chain, x: str, h: int, w: int, ch: int) -> str:
    return c.mul(c.global_pool(x), x)                      # the broadcast scale first


def _squeeze_excite_second(c: Chain, x: str, h: int, w: int, ch: int) -> str:
    return c.mul(x, c.global_pool(x))


def _spatial_gate(c: Chain, x: str, h: int, w: int, ch: int) -> str:
    return c.mul(x, c.to_one_channel(x))                   # (1, H, W, 1)


def _both_broadcast(c: Chain, x: str, h: int, w: int, ch: int) -> str:
    return c.mul(c.to_one_channel(x), c.global_pool(x))    # (1,H,W,1) * (1,1,1,C)


def _scalar_relu6(c: Chain, x: str, h: int, w: int, ch: int) -> str:
    # scaled so that the products span about [-9, 9]: ReLU6 clips some, not all
    return c.mul(x, c.const((1,), float(9 / 120 / np.abs(c.real(x)).max())), A.RELU6)


def _channel_const_first(c: Chain, x: str, h: int, w: int, ch: int) -> str:
    return c.mul(c.const((ch,)), x)


def _column_const_relu(c: Chain, x: str, h: int, w: int, ch: int) -> str:
    return c.mul(x, c.const((1, 1, w, 1)), A.RELU)


def _same_shape_const(c: Chain, x: str, h: int, w: int, ch: int) -> str:
    return c.mul(x, c.const((1, h, w, ch)))


def _flat_vector(c: Chain, x: str, h: int, w: int, ch: int) -> str:
    return c.mul(c.reshape(x, (1, h * w * ch)), c.const((h * w * ch,)))


CASES = [_squeeze_excite, _squeeze_excite_second, _spatial_gate, _both_broadcast,
         _scalar_relu6, _channel_const_first, _column_const_relu, _same_shape_const,
         _flat_vector]


def mul_graph(case, seed: int) -> ir.Graph:
    c = Chain(seed)
    h, w, ch = (int(v) for v in c.rng.integers(2, 8, size=3))
    case(c, c.input((1, h, w, ch)), h, w, ch)
    return c.graph(case.__name__.strip("_"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_broadcast_mul_c_equals_reference_equals_tflm(seed, tmp_path):
    for case in CASES:
        graph = mul_graph(case, seed)
        folder = tmp_path / graph.name
        folder.mkdir()
        path = write_tflite(graph, folder / "mul.tflite")
        codegen.generate(graph, folder / "c")
        exe = build_folder(folder / "c")
        rng = np.random.default_rng(100 + seed)
        shape = graph.tensors["t0"].shape
        inputs = [rng.integers(-128, 128, size=shape).astype(np.int8),
                  rng.choice(np.array([-128, 127], np.int8), size=shape)]
        reread = load_tflite(path)
        for i, x in enumerate(inputs):
            where = f"{graph.name}, seed {seed}, input {i}"
            tflm = run_tflm(path, x).ravel()
            np.testing.assert_array_equal(run_int8(graph, x)[graph.outputs[0]].ravel(), tflm,
                                          err_msg=f"{where}: numpy != TFLM")
            np.testing.assert_array_equal(np.frombuffer(run(exe, x.tobytes()), np.int8), tflm,
                                          err_msg=f"{where}: C != TFLM")
            np.testing.assert_array_equal(run_int8(reread, x)[reread.outputs[0]].ravel(), tflm,
                                          err_msg=f"{where}: re-read .tflite != TFLM")
            if i == 0:
                assert len(np.unique(tflm)) > 8, f"{where}: degenerate, output too uniform"


@pytest.mark.parametrize("shape, dims, strides", [
    ((1, 1, 1, 8), (1, 4, 5, 8), (0, 0, 0, 1)),
    ((8,), (1, 4, 5, 8), (0, 0, 0, 1)),
    ((1, 4, 5, 1), (1, 4, 5, 8), (0, 5, 1, 0)),
    ((1,), (1, 4, 5, 8), (0, 0, 0, 0)),
    ((1, 4, 5, 8), (1, 4, 5, 8), (0, 40, 8, 1)),
    ((5, 1), (1, 4, 5, 8), (0, 0, 1, 0)),
    ((3, 8), (1, 4, 5, 8), None),
])
def test_broadcast_strides(shape, dims, strides):
    assert broadcast_strides(shape, dims) == strides
