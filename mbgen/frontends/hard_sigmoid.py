"""Hard sigmoid as two 1x1 depthwise convolutions, the form every later stage already runs.

``hardsigmoid(x) = clamp(alpha * x + beta, 0, 1)`` (PyTorch: alpha 1/6, beta 1/2; ONNX
HardSigmoid: any alpha, beta) has no TFLite builtin. TFLite's converter spells it ADD(3),
RELU6, MUL(1/6); we spell it

    y = relu6(6 * alpha * x + 6 * beta)     depthwise 1x1, per-channel weight and bias, fused RELU6
    out = y * (1/6)                         depthwise 1x1

which stays inside the TFLite int8 spec (so the emitted .tflite runs in TFLM bit-exact with
our C), needs no new kernel in any kernel set, and loses nothing in int8: y's calibrated range
is [0, 6] and out's [0, 1], so the second layer maps the 256 levels onto 256 levels. In
squeeze-excitation the gate is (1, 1, 1, C): a few hundred MACs.

Other ranks (flat (1, N) vectors) are viewed as (1, 1, 1, size) around the two layers.
"""

from __future__ import annotations

import numpy as np

from mbgen import ir

TORCH_ALPHA, TORCH_BETA = 1.0 / 6.0, 0.5


def hard_sigmoid_layers(name: str, x: ir.Tensor, out: str, alpha: float = TORCH_ALPHA,
                        beta: float = TORCH_BETA) -> tuple[list[ir.Tensor], list[ir.Node]]:
    """Float tensors and nodes computing ``out = hardsigmoid(x)``; ``out`` gets x's shape.

    Every new tensor and node name starts with ``name`` (the caller keeps them unique).
    """
    shape = tuple(x.shape)
    image = shape if len(shape) == 4 else (1, 1, 1, int(np.prod(shape)))
    channels = image[-1]
    tensors: list[ir.Tensor] = []
    nodes: list[ir.Node] = []

    def const(suffix: str, value: float) -> str:
        data = np.full(channels, value, dtype=np.float32)
        if suffix.endswith("weight"):
            data = data.reshape(1, 1, 1, channels)
        tensors.append(ir.Tensor(f"{name}.{suffix}", tuple(data.shape), "float32", data))
        return f"{name}.{suffix}"

    def activation(tensor_name: str, tensor_shape: tuple[int, ...]) -> str:
        tensors.append(ir.Tensor(tensor_name, tensor_shape, "float32"))
        return tensor_name

    source = x.name
    if image != shape:
        source = activation(f"{name}.image", image)
        nodes.append(ir.Node(f"{name}.image", ir.Reshape(image), [x.name], [source]))
    scaled = activation(f"{name}.relu6", image)
    nodes.append(ir.Node(scaled, ir.DepthwiseConv2D(activation=ir.Activation.RELU6),
                         [source, const("relu6.weight", 6.0 * alpha),
                          const("relu6.bias", 6.0 * beta)], [scaled]))
    gate = activation(out if image == shape else f"{name}.gate", image)
    nodes.append(ir.Node(name, ir.DepthwiseConv2D(),
                         [scaled, const("weight", 1.0 / 6.0), const("bias", 0.0)], [gate]))
    if image != shape:
        activation(out, shape)
        nodes.append(ir.Node(f"{name}.flat", ir.Reshape(shape), [gate], [out]))
    return tensors, nodes
