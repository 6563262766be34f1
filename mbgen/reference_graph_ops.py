"""numpy int8 reference kernels of the graph-shaping ops: CONCATENATION, MAX_POOL_2D and
STRIDED_SLICE (SPLIT / SPLIT_V arrive as one StridedSlice per output).

Written from TFLM's semantics, registered in ``mbgen.reference``'s dispatch table:

* TFLM's int8 CONCATENATION copies the input bytes as they are, never requantising: its
  Prepare refuses any input whose scale or zero point differs from the output's (TFLite's
  converter gives every input the output's parameters). We check the same.
* MAX_POOL_2D takes the maximum over the window clipped to the image (a padded pixel never
  wins), then clamps to the fused activation's range; input and output share quantisation.
* STRIDED_SLICE and SPLIT copy bytes; quantisation parameters are not consulted.
"""

from __future__ import annotations

import numpy as np

from mbgen import ir
from mbgen.quantize import params, params_graph_ops

# Below every int8 value: padded pixels lose every max and an all-padding window clamps
# to the activation minimum, as TFLM's max starting from the lowest int8 does.
_BELOW_INT8 = -1000


def concatenation(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    op: ir.Concatenation = node.op
    params_graph_ops.check_concat_quant(graph, node)
    return np.concatenate(args, axis=op.axis).astype(np.int8)


def window_max(x: np.ndarray, op: ir.MaxPool2D, pad_value) -> np.ndarray:
    """The maximum of every pooling window of NHWC ``x`` padded with ``pad_value``."""
    p = op.padding
    x = np.pad(x, ((0, 0), (p.top, p.bottom), (p.left, p.right), (0, 0)),
               constant_values=pad_value)
    (kh, kw), (sh, sw) = op.kernel, op.stride
    oh = (x.shape[1] - kh) // sh + 1
    ow = (x.shape[2] - kw) // sw + 1
    result = np.full((x.shape[0], oh, ow, x.shape[3]), pad_value, dtype=x.dtype)
    for ky in range(kh):        # one shifted, strided slice of the input per window tap
        for kx in range(kw):
            tap = x[:, ky:ky + (oh - 1) * sh + 1:sh, kx:kx + (ow - 1) * sw + 1:sw, :]
            result = np.maximum(result, tap)
    return result


def max_pool2d(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    q = params.pool_quant(graph, node)
    result = window_max(args[0].astype(np.int64), node.op, _BELOW_INT8)
    return np.clip(result, q.act_min, q.act_max).astype(np.int8)


def slice_of(x: np.ndarray, op: ir.StridedSlice, counts: tuple[int, ...]) -> np.ndarray:
    """x[begin + i * strides] for i below ``counts`` (the output shape), contiguous."""
    index = tuple(slice(b, b + (n - 1) * s + 1, s)
                  for b, s, n in zip(op.begin, op.strides, counts))
    return np.ascontiguousarray(x[index])


def strided_slice(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    return slice_of(args[0], node.op, graph.tensors[node.outputs[0]].shape)


KERNELS = {
    ir.Concatenation: concatenation,
    ir.MaxPool2D: max_pool2d,
    ir.StridedSlice: strided_slice,
}
