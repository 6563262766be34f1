"""TFLite operators that move values around the network, as converter-made files use them
(TinyNeuralNetwork, TF2 post-training quantisation), and the uint8 interface of TF2 files.

Each ``convert_*(b)`` maps the operator ``b.op`` onto IR nodes through ``b``, the
``_GraphBuilder`` of ``tflite_frontend`` (its checks, tensors and messages; not imported here,
as that module imports this one):

* TRANSPOSE: any permutation of a rank <= 4 tensor becomes ``ir.Transpose``. A leading
  NCHW -> NHWC transpose of the graph input stays a real Transpose: the C API then takes the
  input in the file's own (NCHW) layout, as TFLM does.
* PAD / PADV2: spatial padding with the zero point stays ``ir.Pad`` (the form every kernel
  set has); any other dimension or PADV2's constant becomes ``ir.PadND`` with the stored
  int8 value TFLM writes (PAD: the output zero point; PADV2: the constant, which TFLM requires
  to share the output's scale and zero point).
* uint8 tensors are accepted only as the interface TF2 converters make: a graph input read
  only by QUANTIZE uint8 -> int8, and a graph output written by QUANTIZE int8 -> uint8.
  Those QUANTIZE nodes stay in the graph; the C API then takes and returns uint8.
"""

from __future__ import annotations

import numpy as np

from mbgen import ir

_UINT8, _INT8 = 3, 9
_QUANTIZE = 114  # BuiltinOperator.QUANTIZE
MAX_RANK = 4


def uint8_interface(model) -> frozenset[int]:
    """Indices of the uint8 tensors that are the interface of an int8 model (see above)."""
    allowed = set()
    for index in model.inputs:
        readers = [op for op in model.operators if index in op.inputs]
        if (0 <= index < len(model.tensors) and model.tensors[index].type == _UINT8 and readers
                and all(op.builtin == _QUANTIZE and len(op.outputs) == 1
                        and _type_of(model, op.outputs[0]) == _INT8 for op in readers)):
            allowed.add(index)
    for index in model.outputs:
        writers = [op for op in model.operators if index in op.outputs]
        if (0 <= index < len(model.tensors) and model.tensors[index].type == _UINT8
                and len(writers) == 1 and writers[0].builtin == _QUANTIZE
                and len(writers[0].inputs) == 1
                and _type_of(model, writers[0].inputs[0]) == _INT8
                and not any(index in op.inputs for op in model.operators)):
            allowed.add(index)
    return frozenset(allowed)


def _type_of(model, index: int) -> int | None:
    return model.tensors[index].type if 0 <= index < len(model.tensors) else None


def convert_transpose(b) -> None:
    ix, iperm = b.inputs(2, 2)
    x, out = b.tensor(ix, const=False), b.output()
    shape = b.shape(x)
    rank = len(shape)
    b.expect(1 <= rank <= MAX_RANK, f"TRANSPOSE of a rank-{rank} tensor (mbgen: rank <= 4)")
    perm = tuple(int(p) for p in b.attribute(iperm, "perm").reshape(-1))
    b.expect(sorted(perm) == list(range(rank)),
             f"perm {list(perm)} is not a permutation of the {rank} dimensions")
    expected = tuple(shape[p] for p in perm)
    b.expect(b.shape(out) == expected,
             f"output shape {b.shape(out)} does not match the expected {expected}")
    b.same_quant(x, out)
    b.add_node(ir.Transpose(perm), [x], [out])


def convert_pad(b) -> None:
    """PAD (2 inputs) and PADV2 (3 inputs: the constant value)."""
    ix, ipads, ivalue = b.inputs(2, 3)
    x, out = b.tensor(ix, const=False), b.output()
    shape = b.shape(x)
    rank = len(shape)
    b.expect(1 <= rank <= MAX_RANK, f"PAD of a rank-{rank} tensor (TFLM: rank <= 4)")
    pads = b.attribute(ipads, "paddings")
    b.expect(pads.shape == (rank, 2), f"paddings must be ({rank}, 2), not {pads.shape}")
    b.expect(bool(np.all(pads >= 0)), "negative padding")
    pairs = tuple((int(p[0]), int(p[1])) for p in pads)
    expected = tuple(n + before + after for n, (before, after) in zip(shape, pairs))
    b.expect(b.shape(out) == expected,
             f"output shape {b.shape(out)} does not match the expected {expected}")
    b.same_quant(x, out)
    result = b.tensors[out]
    zero_point = result.quant.scalar_zero_point if result.quant is not None else 0
    value = zero_point if ivalue < 0 else _pad_constant(b, ivalue, x, out)
    spatial = rank == 4 and pairs[0] == (0, 0) and pairs[3] == (0, 0)
    if spatial and value == zero_point:
        b.add_node(ir.Pad(ir.Padding(pairs[1][0], pairs[1][1], pairs[2][0], pairs[2][1])),
                   [x], [out])
        return
    b.expect(result.dtype == "int8", "only spatial zero padding is supported in float models")
    b.add_node(ir.PadND(pairs, value), [x], [out])


def _pad_constant(b, index: int, x: str, out: str) -> int:
    """PADV2's value: an int8 scalar constant in the output's quantisation (as TFLM checks)."""
    raw = b.raw(index)
    data = b.const_data(raw)
    name = b.tname(index)
    b.expect(data is not None and data.size == 1,
             f"constant_values {name!r} must be a constant scalar")
    b.expect(raw.type == _INT8 and b.tensors[x].dtype == "int8",
             f"constant_values {name!r} must be int8 like the input")
    q, qo = b.quant_params(raw), b.tensors[out].quant
    b.expect(np.array_equal(q.scale, qo.scale) and np.array_equal(q.zero_point, qo.zero_point),
             f"constant_values {name!r} must share the output's scale and zero point")
    return int(np.asarray(data).reshape(-1)[0])
