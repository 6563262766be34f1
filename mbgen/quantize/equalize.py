"""Cross-layer equalisation (Nagel et al. 2019) for consecutive conv-like layers, the classic
MobileNet post-training fix: per-channel weight ranges differ by orders of magnitude in a
depthwise layer, which per-channel weight scales absorb but the activations between the layers
(one scale per tensor) do not.

For a pair A -> B where A's output feeds only B, channel c of A's output is divided by
``s_c = sqrt(r_A[c] / r_B[c])`` (A's weights and bias) and B's weights for that input channel
are multiplied by it, so both ranges become ``sqrt(r_A r_B)``.

This preserves the float function only where the activation between the layers commutes with
a positive scale: none or ReLU. ReLU6 does not (``relu6(x / s) * s`` clamps at ``6 s``), and
the int8 kernels can only clamp one range per tensor, so ReLU6 pairs are left as they are
(MobileNet V1's dw -> pw pairs all have ReLU6; V2's linear projection -> expansion pairs and
ReLU pairs are equalised). The result is checked by ``tests/test_calibration_methods.py``:
the float outputs agree to float rounding.
"""

from __future__ import annotations

import numpy as np

from mbgen import ir
from mbgen.quantize.float_rewrites import has_private_bias, set_constant

SCALE_EQUIVARIANT = (ir.Activation.NONE, ir.Activation.RELU)
SWEEPS = 4
_TINY = 1e-12


def _output_ranges(node: ir.Node, weights: np.ndarray) -> np.ndarray:
    """max |w| per output channel of A."""
    if isinstance(node.op, ir.DepthwiseConv2D):
        return np.abs(weights).max(axis=(0, 1, 2))
    return np.abs(weights).reshape(weights.shape[0], -1).max(axis=1)


def _input_ranges(node: ir.Node, weights: np.ndarray) -> np.ndarray:
    """max |w| per input channel of B."""
    if isinstance(node.op, ir.DepthwiseConv2D):
        m = node.op.depth_multiplier
        per_output = np.abs(weights).max(axis=(0, 1, 2))
        return per_output.reshape(-1, m).max(axis=1)
    return np.abs(weights).reshape(-1, weights.shape[-1]).max(axis=0)


def _scale_outputs(node: ir.Node, weights: np.ndarray, s: np.ndarray) -> np.ndarray:
    if isinstance(node.op, ir.DepthwiseConv2D):
        return weights / s[None, None, None, :]
    return weights / s.reshape((-1,) + (1,) * (weights.ndim - 1))


def _scale_inputs(node: ir.Node, weights: np.ndarray, s: np.ndarray) -> np.ndarray:
    if isinstance(node.op, ir.DepthwiseConv2D):
        return weights * np.repeat(s, node.op.depth_multiplier)[None, None, None, :]
    return weights * s


def pairs(graph: ir.Graph) -> list[tuple[ir.Node, ir.Node]]:
    """(A, B) conv/depthwise pairs that equalisation may rescale without changing the function."""
    found = []
    convs = (ir.Conv2D, ir.DepthwiseConv2D)
    for a in graph.nodes:
        if not isinstance(a.op, convs) or a.op.activation not in SCALE_EQUIVARIANT:
            continue
        out = a.outputs[0]
        users = graph.consumers(out)
        if out in graph.outputs or len(users) != 1 or not isinstance(users[0].op, convs):
            continue
        b = users[0]
        if b.inputs[0] != out or len(graph.consumers(a.inputs[1])) != 1 \
                or len(graph.consumers(b.inputs[1])) != 1:
            continue
        if len(a.inputs) > 2 and a.inputs[2] and not has_private_bias(graph, a):
            continue
        found.append((a, b))
    return found


def equalize(graph: ir.Graph) -> tuple[ir.Graph, int]:
    """A copy of the float ``graph`` with every eligible pair equalised; and the pair count."""
    found = pairs(graph)
    result = graph.copy()
    for _ in range(SWEEPS):
        for a, b in found:
            wa = result.tensors[a.inputs[1]].data.astype(np.float64)
            wb = result.tensors[b.inputs[1]].data.astype(np.float64)
            ra, rb = _output_ranges(a, wa), _input_ranges(b, wb)
            s = np.where((ra > _TINY) & (rb > _TINY), np.sqrt(ra / np.maximum(rb, _TINY)), 1.0)
            set_constant(result, a.inputs[1], _scale_outputs(a, wa, s))
            set_constant(result, b.inputs[1], _scale_inputs(b, wb, s))
            if len(a.inputs) > 2 and a.inputs[2]:
                bias = result.tensors[a.inputs[2]].data.astype(np.float64)
                set_constant(result, a.inputs[2], bias / s)
    return result, len(found)
