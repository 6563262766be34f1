"""Semantic mutations of a .tflite file for the fuzz in ``test_semantic_fuzz``.

Each mutation edits one meaningful field of the model through the flatbuffer schema's object
API (``ModelT``) and says what it did: a scale, zero point, shape or rank, stride, dilation,
activation or padding enum, depth multiplier, pool window, softmax beta, RESHAPE shape, tensor
type, quantised dimension, scale count, an operator's wiring or code, the subgraph's inputs or
outputs, or a buffer (length, index, extreme values). ``option_sweep`` sets every option field
of every operator to each of a few other values, systematically.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import pytest

schema = pytest.importorskip("tflite_micro.tensorflow.lite.micro.python.schema_py_generated",
                             reason="the mutations need the tflite-micro package's schema")

from test_tflite_graph_ops import _packed  # noqa: E402  (ModelT -> .tflite bytes)

_SWAPPABLE_OPCODES = (1, 3, 4, 9, 14, 17, 22, 25, 40, 114, 117)  # AVG_POOL, CONV, DW, FC,
# LOGISTIC, MAX_POOL, RESHAPE, SOFTMAX, MEAN, QUANTIZE, HARD_SWISH


# ----------------------------------------------------------------------------- mutations


def _operators_with(m, *fields: str) -> list:
    return [op for op in m.subgraphs[0].operators
            if op.builtinOptions is not None and all(hasattr(op.builtinOptions, f)
                                                     for f in fields)]


def _pick(rng, items):
    return items[int(rng.integers(len(items)))]


def _set_option(m, rng, fields: tuple[str, ...], values: tuple) -> str:
    ops = _operators_with(m, fields[0])
    op = _pick(rng, ops)
    field = _pick(rng, fields)
    old = getattr(op.builtinOptions, field)
    value = _pick(rng, [v for v in values if v != old] or list(values))
    setattr(op.builtinOptions, field, type(old)(value))
    return f"op {m.subgraphs[0].operators.index(op)} {field} {old} -> {value}"


def _quantized_tensor(m, rng):
    tensors = [t for t in m.subgraphs[0].tensors
               if t.quantization is not None and t.quantization.scale is not None]
    return _pick(rng, tensors)


def mutate_scale(m, rng) -> str:
    t = _quantized_tensor(m, rng)
    scale = np.array(t.quantization.scale, np.float32)
    i = int(rng.integers(scale.size))
    old = float(scale[i])
    scale[i] = _pick(rng, [1e30, 1e-30, 0.0, -old, np.nan, np.inf, old * 2, old / 2, old * 1e3,
                           old * 1e-3, old * 1e6, old * 1e-6, 3.0e38, 1e-12, 1.0])
    t.quantization.scale = scale
    return f"{t.name!r} scale[{i}] {old:g} -> {scale[i]:g}"


def mutate_zero_point(m, rng) -> str:
    t = _quantized_tensor(m, rng)
    zp = np.array(t.quantization.zeroPoint, np.int64)
    i = int(rng.integers(zp.size))
    old = int(zp[i])
    zp[i] = _pick(rng, [-128, 127, 128, -129, 255, 1000, old + 1, old - 5, 1 << 40])
    t.quantization.zeroPoint = zp
    return f"{t.name!r} zero_point[{i}] {old} -> {zp[i]}"


def mutate_shape(m, rng) -> str:
    t = _pick(rng, m.subgraphs[0].tensors)
    shape = np.array(t.shape, np.int32)
    if shape.size == 0:
        t.shape = np.array([1], np.int32)
        return f"{t.name!r} shape () -> (1,)"
    i = int(rng.integers(shape.size))
    old = int(shape[i])
    shape[i] = _pick(rng, [old + 1, old - 1, 0, -1, old * 2, 1, max(old // 2, 1), 1 << 16])
    t.shape = shape
    return f"{t.name!r} shape[{i}] {old} -> {shape[i]}"


def mutate_rank(m, rng) -> str:
    t = _pick(rng, m.subgraphs[0].tensors)
    old = tuple(int(d) for d in t.shape)
    t.shape = np.array(old[1:] if old and rng.random() < 0.5 else (1,) + old, np.int32)
    return f"{t.name!r} shape {old} -> {tuple(t.shape)}"


def mutate_stride(m, rng) -> str:
    return _set_option(m, rng, ("strideH", "strideW"), (0, -1, 1, 2, 3, 7, 1 << 20))


def mutate_dilation(m, rng) -> str:
    return _set_option(m, rng, ("dilationHFactor", "dilationWFactor"), (0, -1, 1, 2, 3, 50))


def mutate_activation(m, rng) -> str:
    return _set_option(m, rng, ("fusedActivationFunction",), (0, 1, 2, 3, 4, 5, 6, 100))


def mutate_padding(m, rng) -> str:
    return _set_option(m, rng, ("padding",), (0, 1, 2, 7))


def mutate_depth_multiplier(m, rng) -> str:
    return _set_option(m, rng, ("depthMultiplier",), (0, 1, 2, 4, 8, 16, -1))


def mutate_pool_window(m, rng) -> str:
    return _set_option(m, rng, ("filterHeight", "filterWidth"), (0, -1, 1, 2, 4, 6, 100))


def mutate_beta(m, rng) -> str:
    return _set_option(m, rng, ("beta",), (0.0, -1.0, 2.0, 1e-6, 1e30, float("nan")))


def mutate_reshape(m, rng) -> str:
    op = _pick(rng, _operators_with(m, "newShape"))
    old = tuple(int(v) for v in op.builtinOptions.newShape)
    op.builtinOptions.newShape = np.array(
        _pick(rng, [(2, 1), (1, 1, 2), (-1,), (1, 3), (0, 2)]), np.int32)
    return f"reshape newShape {old} -> {tuple(op.builtinOptions.newShape)}"


def mutate_type(m, rng) -> str:
    t = _pick(rng, m.subgraphs[0].tensors)
    old = t.type
    t.type = _pick(rng, [v for v in (0, 2, 3, 4, 7, 9) if v != old])
    return f"{t.name!r} type {old} -> {t.type}"


def mutate_quantized_dimension(m, rng) -> str:
    t = _quantized_tensor(m, rng)
    old = t.quantization.quantizedDimension
    t.quantization.quantizedDimension = _pick(rng, [v for v in (0, 1, 2, 3, 5) if v != old])
    return f"{t.name!r} quantized_dimension {old} -> {t.quantization.quantizedDimension}"


def mutate_scale_count(m, rng) -> str:
    t = _quantized_tensor(m, rng)
    q = t.quantization
    n = len(q.scale)
    keep = _pick(rng, [max(n - 1, 0), n + 1, 1, 2 * n])
    q.scale = np.resize(np.array(q.scale, np.float32), keep)
    q.zeroPoint = np.resize(np.array(q.zeroPoint, np.int64), keep)
    return f"{t.name!r} {n} -> {keep} scales"


def mutate_wiring(m, rng) -> str:
    sg = m.subgraphs[0]
    index = int(rng.integers(len(sg.operators)))
    op = sg.operators[index]
    kind = int(rng.integers(6))
    count = len(sg.tensors)
    if kind == 0:    # an input from another tensor, or an absent / out-of-range index
        slot = int(rng.integers(len(op.inputs)))
        new = _pick(rng, [int(rng.integers(count)), -1, count, 1 << 20])
        old, op.inputs = op.inputs[slot], np.array(op.inputs, np.int32)
        op.inputs[slot] = new
        return f"op {index} input {slot}: {old} -> {new}"
    if kind == 1:    # the output is another tensor
        new = _pick(rng, [int(rng.integers(count)), count])
        old, op.outputs = op.outputs[0], np.array([new], np.int32)
        return f"op {index} output {old} -> {new}"
    if kind == 2:    # inputs dropped or added
        ins = list(op.inputs)
        ins = ins[:-1] if ins and rng.random() < 0.5 else ins + [int(rng.integers(count))]
        op.inputs = np.array(ins, np.int32)
        return f"op {index} inputs -> {ins}"
    if kind == 3:    # two inputs swapped
        if len(op.inputs) < 2:
            return mutate_wiring(m, rng)
        op.inputs = np.array(op.inputs[::-1], np.int32)
        return f"op {index} inputs reversed"
    if kind == 4:    # another operator code
        codes = m.operatorCodes
        old = op.opcodeIndex
        op.opcodeIndex = _pick(rng, [i for i in range(len(codes)) if i != old] + [len(codes)])
        return f"op {index} opcode index {old} -> {op.opcodeIndex}"
    other = int(rng.integers(len(sg.operators)))  # two operators run in the other order
    sg.operators[index], sg.operators[other] = sg.operators[other], sg.operators[index]
    return f"ops {index} and {other} swapped"


def mutate_opcode(m, rng) -> str:
    code = _pick(rng, m.operatorCodes)
    old = max(code.builtinCode, code.deprecatedBuiltinCode)
    new = _pick(rng, [c for c in _SWAPPABLE_OPCODES if c != old])
    code.builtinCode, code.deprecatedBuiltinCode = new, min(new, 127)
    return f"operator code {old} -> {new}"


def mutate_graph_io(m, rng) -> str:
    sg = m.subgraphs[0]
    which = _pick(rng, ["inputs", "outputs"])
    new = _pick(rng, [int(rng.integers(len(sg.tensors))), len(sg.tensors), -1])
    setattr(sg, which, np.array([new], np.int32))
    return f"subgraph {which} -> [{new}]"


def mutate_buffer(m, rng) -> str:
    sg = m.subgraphs[0]
    t = _pick(rng, [t for t in sg.tensors if m.buffers[t.buffer].data is not None])
    buf = m.buffers[t.buffer]
    kind = int(rng.integers(3))
    if kind == 0:    # data shorter or longer than the shape
        n = len(buf.data)
        new = _pick(rng, [n - 1, n + 1, n - 4, n + 4, n // 2, 1])
        buf.data = np.resize(np.array(buf.data, np.uint8), max(new, 1))
        return f"{t.name!r} buffer {n} -> {len(buf.data)} bytes"
    if kind == 1:    # another buffer, or the empty one (the constant becomes an activation)
        old = t.buffer
        t.buffer = _pick(rng, [0, int(rng.integers(len(m.buffers))), len(m.buffers)])
        return f"{t.name!r} buffer index {old} -> {t.buffer}"
    data = np.array(buf.data, np.uint8)  # extreme constant values (weights, biases)
    data[int(rng.integers(data.size))::max(data.size // 7, 1)] = _pick(rng, [0x7F, 0x80, 0xFF])
    buf.data = data
    return f"{t.name!r} constant bytes set to extremes"


# (mutation, weight): mostly the small, meaningful edits of a model's numbers.
MUTATIONS: tuple[tuple[Callable, int], ...] = (
    (mutate_scale, 6), (mutate_zero_point, 4), (mutate_shape, 4), (mutate_rank, 1),
    (mutate_stride, 3), (mutate_dilation, 3), (mutate_activation, 3), (mutate_padding, 1),
    (mutate_depth_multiplier, 2), (mutate_pool_window, 2), (mutate_beta, 1),
    (mutate_reshape, 1), (mutate_type, 1), (mutate_quantized_dimension, 1),
    (mutate_scale_count, 1), (mutate_wiring, 3), (mutate_opcode, 1), (mutate_graph_io, 1),
    (mutate_buffer, 3),
)


def mutants(model: bytes, count: int, seed: int) -> list[tuple[str, bytes]]:
    base = schema.ModelT.InitFromPackedBuf(model, 0)
    rng = np.random.default_rng(seed)
    funcs = [f for f, _ in MUTATIONS]
    weights = np.array([w for _, w in MUTATIONS], np.float64)
    out = []
    while len(out) < count:
        m = copy.deepcopy(base)
        mutation = funcs[int(rng.choice(len(funcs), p=weights / weights.sum()))]
        what = f"{mutation.__name__.removeprefix('mutate_')}: {mutation(m, rng)}"
        out.append((what, _packed(m)))
    return out


# Every option field of every operator set to each of a few other legal-looking values.
_OPTION_VALUES = {"strideH": (2, 3), "strideW": (2, 4), "dilationHFactor": (2, 3),
                  "dilationWFactor": (2,), "padding": (0, 1),
                  "fusedActivationFunction": (0, 1, 2, 3), "depthMultiplier": (2,),
                  "filterHeight": (1, 2, 5), "filterWidth": (1, 4),
                  "axis": (0, 1, 2, -1), "keepNumDims": (1,), "keepDims": (0, 1),
                  "beta": (0.5, 3.0)}


def option_sweep(model: bytes) -> list[tuple[str, bytes]]:
    base = schema.ModelT.InitFromPackedBuf(model, 0)
    out = []
    for i, op in enumerate(base.subgraphs[0].operators):
        for field, values in _OPTION_VALUES.items():
            old = getattr(op.builtinOptions, field, None)
            for value in values if old is not None else ():
                if value != old:
                    m = copy.deepcopy(base)
                    setattr(m.subgraphs[0].operators[i].builtinOptions, field, type(old)(value))
                    out.append((f"op {i} {field} {old} -> {value}", _packed(m)))
    return out
