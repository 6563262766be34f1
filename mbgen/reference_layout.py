"""Reference kernels of the ops that only move int8 values around (TFLite TRANSPOSE, PAD and
PADV2 on any dimension): no arithmetic, so nothing here depends on the fixed-point helpers.

Written from the TFLite op definitions: TRANSPOSE gives ``out[i0..ik] = x[...]`` with
``out.shape[i] == x.shape[perm[i]]``; PAD / PADV2 surround each dimension with
``pads[d] = (before, after)`` copies of one stored value (the output zero point for PAD, the
constant operand for PADV2). TFLM copies the stored bytes in both, whatever the scales say.
Registered in ``mbgen.reference``'s dispatch table.
"""

from __future__ import annotations

import numpy as np

from mbgen import ir


def transpose(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    op: ir.Transpose = node.op
    return np.ascontiguousarray(np.transpose(args[0], op.perm))


def pad_nd(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    op: ir.PadND = node.op
    x = args[0]
    return np.pad(x, op.pads, constant_values=np.array(op.value, dtype=x.dtype))


KERNELS = {ir.Transpose: transpose, ir.PadND: pad_nd}
