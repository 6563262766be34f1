"""ADD and MUL with a constant operand, as Keras-converted MobileNetV3 .tflite files spell
hard swish: ``x * (relu6(x + 3) * (1/6))`` (ADD of a constant with a fused RELU6, MUL by a
constant, MUL). Files written by our writer in that form (3 seeds: a scalar constant, a
per-channel one, the constant as the first operand), run three ways: TFLM, our numpy
reference and our host C, bit for bit (``three_way``).
"""

from __future__ import annotations

import numpy as np
import pytest

from mbgen import ir

pytest.importorskip("tflite_micro.python.tflite_micro.runtime",
                    reason="TFLM reference needs the tflite-micro package")

from test_tflite_layout_ops import SEEDS, Maker, random_shape, three_way  # noqa: E402
from test_tflm_reference import act  # noqa: E402


def _constant(m: Maker, name: str, value: float, shape: tuple[int, ...]) -> ir.Tensor:
    """``value`` (times a random factor per element near 1) quantised symmetrically."""
    real = value * m.rng.uniform(0.8, 1.2, size=shape)
    scale = float(np.float32(np.max(np.abs(real)) / 127))
    data = np.clip(np.rint(real / scale), -127, 127).astype(np.int8)
    return m.add(ir.Tensor(name, shape, "int8", data, ir.QuantParams.per_tensor(scale, 0)))


def keras_hard_swish_graph(seed: int) -> ir.Graph:
    m = Maker(np.random.default_rng(seed))
    x = m.input(random_shape(m.rng, 4, high=7), scale=m.scale(0.02, 0.06))
    channels = x.shape[3]
    shape = ((1,), (channels,), (1, 1, 1, 1))[seed]
    three = _constant(m, "three", 3.0, shape)
    shifted = act("shifted", x.shape, 6.0 / 255, -128)       # relu6 range
    operands = [three.name, "x"] if seed == 2 else ["x", three.name]
    m.node(ir.Add(activation=ir.Activation.RELU6), operands, shifted)
    sixth = _constant(m, "sixth", 1.0 / 6.0, (1,))
    gate = act("gate", x.shape, 1.0 / 255, -128)
    m.node(ir.Mul(), ["shifted", sixth.name], gate)
    y_scale = x.quant.scalar_scale * m.rng.uniform(0.6, 0.9)
    m.node(ir.Mul(), ["x", "gate"], act("y", x.shape, y_scale, m.zp(20)))
    return m.graph("keras_hard_swish")


@pytest.mark.parametrize("seed", SEEDS)
def test_keras_hard_swish_with_constant_operands(seed, tmp_path):
    model_c = three_way(keras_hard_swish_graph(seed), tmp_path, seed, min_distinct=6)
    assert "add_broadcast_s8(&" in model_c
