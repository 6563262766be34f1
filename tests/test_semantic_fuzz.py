"""Semantic fuzz: meaningful mutations of real int8 .tflite files are refused or exact.

Unlike ``test_fuzz_model_files`` (damaged bytes), every mutant here is a well-formed flatbuffer
with one meaningful field changed through the schema's object API: a shape, scale, zero point,
stride, dilation, pool window, activation or padding enum, depth multiplier, softmax beta,
tensor type, quantised dimension, an operator's wiring (inputs, outputs, operator code) or a
buffer's length. Each mutant goes through the pipeline the CLI runs (``compiler.prepare`` then
``compiler.emit`` for the host) and must either

* be refused with a ``UserError`` of one line (the CLI's exit 2), or
* compile to C that runs clean under ``-fsanitize=address,undefined -fno-sanitize-recover``
  and gives TFLM's bytes on two inputs wherever TFLM (``tflite_micro``) runs the mutant.

TFLM runs in a child process, so a mutant that crashes TFLM cannot take pytest with it.
Mutants the fuzz once caught being miscompiled are kept in ``REGRESSIONS``.
"""

from __future__ import annotations

import concurrent.futures
import copy
import hashlib
import multiprocessing
import os
import shutil
import subprocess
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from conftest import SHARED_DIR
from mbgen.errors import UserError

schema = pytest.importorskip("tflite_micro.tensorflow.lite.micro.python.schema_py_generated",
                             reason="the TFLM referee needs the tflite-micro package")
pytest.importorskip("tflite_micro.python.tflite_micro.runtime")

from test_tflite_graph_ops import _packed  # noqa: E402  (ModelT -> .tflite bytes)

PERSON = SHARED_DIR / "models" / "person_detect.tflite"
SEED = 20261202
SANITIZE = ("-std=c99", "-O1", "-Wall", "-Wextra", "-Werror", "-fno-omit-frame-pointer",
            "-fsanitize=address,undefined", "-fno-sanitize-recover=all")
RUN_ENV = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}

# TFLite BuiltinOperator codes the mutations swap between.
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


# ----------------------------------------------------------------------------- the referee


def _tflm_outputs(data: bytes, inputs: list[np.ndarray]):
    """In the child: TFLM's output for each input, or the reason it refused the model."""
    from mbgen.errors import RunFailure
    from mbgen.tflm import run_tflm
    try:
        return [run_tflm(data, x).reshape(-1) for x in inputs]
    except (RunFailure, UserError) as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - the wrapper itself fails on some mutants
        return f"the TFLM wrapper failed: {type(exc).__name__}"


class TflmReferee:
    """TFLM in one long-lived child process, restarted when a mutant crashes or hangs it."""

    def __init__(self):
        self.pool = None

    def run(self, data: bytes, inputs: list[np.ndarray]):
        """List of outputs; a string when TFLM refuses; None when TFLM crashed or hung."""
        if self.pool is None:
            self.pool = concurrent.futures.ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("fork"))
        try:
            return self.pool.submit(_tflm_outputs, data, inputs).result(timeout=60)
        except (concurrent.futures.process.BrokenProcessPool,
                concurrent.futures.TimeoutError):
            self.close()
            return None

    def close(self):
        if self.pool is not None:
            for process in list(getattr(self.pool, "_processes", {}).values()):
                process.kill()
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None


# ----------------------------------------------------------------------------- our side


class SanitizedBuilder:
    """Host builds under ASan+UBSan; objects cached by their source and headers' content (most
    mutants change model.c only)."""

    def __init__(self, cache: Path):
        self.cache = cache
        cache.mkdir(parents=True, exist_ok=True)
        self.cc = shutil.which("gcc") or shutil.which("cc")

    def build(self, folder: Path) -> tuple[Path | None, str]:
        headers = b"".join(p.read_bytes() for p in sorted(folder.glob("*.h")))
        objects = []
        for source in sorted(folder.glob("*.c")):
            key = hashlib.sha256(headers + source.read_bytes()).hexdigest()[:24]
            obj = self.cache / f"{key}.o"
            if not obj.exists():
                proc = subprocess.run([self.cc, *SANITIZE, "-I", str(folder), "-c", str(source),
                                       "-o", str(obj)], capture_output=True, text=True)
                if proc.returncode != 0:
                    return None, f"{source.name}: {proc.stderr.strip()[:600]}"
            objects.append(str(obj))
        exe = folder / "prog"
        proc = subprocess.run([self.cc, "-fsanitize=address,undefined", *objects, "-o",
                               str(exe)], capture_output=True, text=True)
        if proc.returncode != 0:
            return None, f"link: {proc.stderr.strip()[:600]}"
        return exe, ""


def _run_exe(exe: Path, x: np.ndarray, work: Path) -> tuple[np.ndarray | None, str]:
    src, dst = work / "in.bin", work / "out.bin"
    src.write_bytes(x.tobytes())
    dst.unlink(missing_ok=True)
    proc = subprocess.run([str(exe), str(src), str(dst)], capture_output=True, text=True,
                          timeout=60, env=RUN_ENV)
    if proc.returncode != 0:
        return None, f"exit {proc.returncode}: {proc.stderr.strip()[-1500:]}"
    return np.frombuffer(dst.read_bytes(), np.int8), ""


def _inputs(graph, seed: int) -> list[np.ndarray]:
    t = graph.tensors[graph.inputs[0]]
    rng = np.random.default_rng(seed)
    dtype = np.uint8 if t.dtype == "uint8" else np.int8
    info = np.iinfo(dtype)
    return [rng.integers(info.min, info.max + 1, t.shape).astype(dtype),
            rng.choice(np.array([info.min, info.max], dtype), t.shape)]


@dataclass
class FuzzRun:
    """Outcome counts and every failure, for one batch of mutants."""

    counts: Counter
    failures: list[str]
    notes: list[str]     # mutants we compile and TFLM refuses or crashes on


def check_mutants(samples: list[tuple[str, bytes]], work: Path,
                  referee: TflmReferee, builder: SanitizedBuilder) -> FuzzRun:
    from mbgen import compiler
    counts: Counter = Counter()
    failures: list[str] = []
    notes: list[str] = []
    path = work / "mutant.tflite"
    for index, (what, data) in enumerate(samples):
        label = f"mutant {index} ({what})"
        path.write_bytes(data)
        out = work / f"out{index}"
        try:
            prepared = compiler.prepare(str(path), compiler.CompileOptions())
            compiler.emit(prepared, compiler.CompileOptions(target="host", out_dir=out))
        except UserError as exc:
            if "\n" in str(exc) or not str(exc):
                failures.append(f"{label}: message not one line: {exc!r}")
            counts["refused"] += 1
            continue
        except Exception as exc:  # noqa: BLE001 - exactly what the fuzz hunts for
            where = traceback.extract_tb(exc.__traceback__)[-1]
            failures.append(f"{label}: {type(exc).__name__}: {str(exc)[:200]} at "
                            f"{Path(where.filename).name}:{where.lineno}")
            counts["crashed"] += 1
            continue
        exe, error = builder.build(out)
        if exe is None:
            failures.append(f"{label}: sanitizer build failed: {error}")
            counts["build failed"] += 1
            shutil.rmtree(out)
            continue
        inputs = _inputs(prepared.graph, seed=index)
        ours = []
        for x in inputs:
            got, error = _run_exe(exe, x, work)
            if got is None:
                failures.append(f"{label}: the C fails under the sanitizers: {error}")
                break
            ours.append(got)
        shutil.rmtree(out)
        if len(ours) < len(inputs):
            counts["sanitizer report"] += 1
            continue
        theirs = referee.run(data, inputs)
        if theirs is None:
            counts["compiled, TFLM crashed"] += 1
            notes.append(f"{label}: TFLM crashed or hung")
        elif isinstance(theirs, str):
            counts["compiled, TFLM refused"] += 1
            notes.append(f"{label}: TFLM refused: {theirs[:200]}")
        elif all(np.array_equal(a.view(np.uint8), b.view(np.uint8).reshape(-1))
                 for a, b in zip(ours, theirs)):
            counts["compiled, equal to TFLM"] += 1
        else:
            counts["compiled, differs from TFLM"] += 1
            failures.append(f"{label}: differs from TFLM: ours {ours[0][:8]} "
                            f"TFLM {theirs[0][:8]}")
    return FuzzRun(counts, failures, notes)


@pytest.fixture(scope="module")
def referee():
    ref = TflmReferee()
    yield ref
    ref.close()


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("no host C compiler")
    return SanitizedBuilder(tmp_path_factory.mktemp("objects"))


def _person() -> bytes:
    if not PERSON.exists():
        pytest.skip(f"{PERSON} is missing (see MODELS.md)")
    return PERSON.read_bytes()


def _fuzz(model: bytes, count: int, seed: int, tmp_path: Path, referee, builder,
          label: str = "person_detect") -> FuzzRun:
    result = check_mutants(mutants(model, count, seed), tmp_path, referee, builder)
    print(f"\n{count} mutants of {label} (seed {seed}): {dict(result.counts)}")
    print("\n".join(result.notes))
    assert not result.failures, (f"{len(result.failures)} of {count} mutants failed:\n"
                                 + "\n".join(result.failures[:12]))
    return result


def test_person_detect_mutants_are_refused_or_exact(tmp_path, referee, builder):
    result = _fuzz(_person(), 200, SEED, tmp_path, referee, builder)
    # Both outcomes really happen, and TFLM really referees.
    assert result.counts["refused"] >= 40
    assert result.counts["compiled, equal to TFLM"] >= 40


def _block_model() -> bytes:
    """A small int8 graph, written by our TFLite writer, with the ops person_detect lacks:
    hard-swish, squeeze-excite (mean, logistic, broadcast mul), residual add, max-pool,
    split and concatenation, standalone RELU, requantise, fully connected and softmax."""
    from mbgen import ir
    from mbgen.export.tflite_writer import tflite_bytes
    from test_tflite_graph_ops import OpsBuilder
    a = ir.Activation
    b = OpsBuilder(seed=7, name="fuzz_block")
    x = b.input((1, 10, 10, 3), zero_point=-5)
    y = b.hard_swish(b.conv(x, 8, stride=(2, 2), act=a.NONE))
    d = b.depthwise(y, act=a.RELU)
    gate = b.logistic(b.conv(b.mean(d), 8, k=(1, 1), act=a.NONE))
    y = b.add(b.mul(d, gate), y)
    left, right = b.split(y, [4, 4])
    y = b.concat([b.max_pool(left, (2, 2), (1, 1)), b.requantize_like(
        b.activation_op(right, a.RELU, scale=0.05), left)])
    y = b.fully_connected(b.reshape(y, (1, 200)), 6)
    return tflite_bytes(b.graph(b.softmax(y)))


def test_block_mutants_are_refused_or_exact(tmp_path, referee, builder):
    _fuzz(_block_model(), 120, SEED, tmp_path, referee, builder, "a small block graph")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_more_mutants(seed, tmp_path, referee, builder):
    _fuzz(_person(), 400, seed, tmp_path, referee, builder)
    _fuzz(_block_model(), 400, seed, tmp_path, referee, builder, "a small block graph")


# ----------------------------------------------------------------------------- regressions


def _tensor(m, name: str):
    return next(t for t in m.subgraphs[0].tensors if t.name == name.encode())


def _set_scale(name: str, value: float, index: int = 0) -> Callable:
    def edit(m):
        q = _tensor(m, name).quantization
        q.scale = np.array(q.scale, np.float32)
        q.scale[index] = value
    return edit


def _set_op_option(op_index: int, field: str, value) -> Callable:
    def edit(m):
        setattr(m.subgraphs[0].operators[op_index].builtinOptions, field, value)
    return edit


def _set_type(name: str, type_code: int) -> Callable:
    def edit(m):
        _tensor(m, name).type = type_code
    return edit


_PW3 = "MobilenetV1/MobilenetV1/Conv2d_3_pointwise/Relu6"
_OUT = "MobilenetV1/Predictions/Reshape_1"

# Mutants the fuzz found compiled into C with undefined behaviour, crashing mbgen, or answering
# otherwise than TFLM: (name, edit of the ModelT, the one-line refusal expected).
REGRESSIONS = [
    ("activation_scale_1e-30", _set_scale(_PW3, 1e-30),
     r"Conv2d_3_pointwise/Relu6' \(Conv2D\): relu6 bound 6.0 is 6e\+30 steps.*beyond int32"),
    ("weight_scale_1e30", _set_scale("MobilenetV1/Conv2d_3_pointwise/weights/read", 1e30, 5),
     r"Conv2d_3_pointwise/Relu6' \(Conv2D\): .*requantisation shift of 100, outside"),
    ("weight_scale_3e38", _set_scale("MobilenetV1/Conv2d_5_pointwise/weights/read", 3e38, 3),
     r"requantisation shift of 1\d\d"),
    ("depth_multiplier_contradicts_channels", _set_op_option(17, "depthMultiplier", 4),
     r"operator 17 \(DEPTHWISE_CONV_2D.*depth_multiplier 4 contradicts 128 input"),
    ("depth_multiplier_0", _set_op_option(0, "depthMultiplier", 0),
     r"depth_multiplier 0 contradicts 1 input and 8 output"),
    ("softmax_beta_tiny", _set_op_option(30, "beta", 1e-6), r"\(Softmax\): multiplier"),
    ("softmax_output_scale", _set_scale(_OUT, 1e-12), r"softmax output must have scale 1/256"),
    ("float_bias", _set_type("MobilenetV1/MobilenetV1/Conv2d_10_pointwise/Conv2D_bias", 0),
     r"bias .* must be 128 int32 constants"),
]


def _edited(edit: Callable) -> bytes:
    m = schema.ModelT.InitFromPackedBuf(_person(), 0)
    edit(m)
    return _packed(m)


@pytest.mark.parametrize("name,edit,message", REGRESSIONS, ids=[r[0] for r in REGRESSIONS])
def test_regression_mutants_are_refused_in_one_line(name, edit, message, tmp_path):
    from mbgen import compiler
    path = tmp_path / f"{name}.tflite"
    path.write_bytes(_edited(edit))
    with pytest.raises(UserError, match=message) as caught:
        compiler.prepare(str(path), compiler.CompileOptions())
    assert "\n" not in str(caught.value)


def test_a_constant_as_the_models_output_is_refused(tmp_path):
    """Found on the block graph: a weight tensor named as the subgraph's output compiled to C
    that never wrote the output (TFLM returns the constant)."""
    from mbgen import compiler
    m = schema.ModelT.InitFromPackedBuf(_block_model(), 0)
    sg = m.subgraphs[0]
    weights = next(i for i, t in enumerate(sg.tensors) if m.buffers[t.buffer].data is not None)
    sg.outputs = np.array([weights], np.int32)
    path = tmp_path / "constant_output.tflite"
    path.write_bytes(_packed(m))
    with pytest.raises(UserError, match=r"the model's output '.*' is a constant"):
        compiler.prepare(str(path), compiler.CompileOptions())


def test_fully_connected_bias_scale_tflm_refuses_is_refused(tmp_path):
    """Found on the block graph: TFLM's FULLY_CONNECTED Prepare refuses a bias scale 2% (of the
    output scale) away from input x weight scale; we compiled it."""
    from mbgen import compiler
    m = schema.ModelT.InitFromPackedBuf(_block_model(), 0)
    sg = m.subgraphs[0]
    fc = next(op for op in sg.operators if type(op.builtinOptions).__name__
              == "FullyConnectedOptionsT")
    q = sg.tensors[fc.inputs[2]].quantization
    q.scale = np.array(q.scale, np.float32)
    q.scale[0] = 1.0
    path = tmp_path / "fc_bias_scale.tflite"
    path.write_bytes(_packed(m))
    with pytest.raises(UserError, match=r"\(FullyConnected\): bias scale 1 is not input scale"):
        compiler.prepare(str(path), compiler.CompileOptions())


def test_overflowing_scale_ratio_exits_2_with_one_line_and_no_warning(tmp_path):
    """A standalone RELU whose output scale is the smallest float32: the float32 ratio of the
    scales overflows; numpy's warning once went to stderr before the message."""
    import subprocess
    import sys
    m = schema.ModelT.InitFromPackedBuf(_block_model(), 0)
    sg = m.subgraphs[0]
    relu = next(op for op in sg.operators
                if max(m.operatorCodes[op.opcodeIndex].builtinCode,
                       m.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode) == 19)  # RELU
    sg.tensors[relu.outputs[0]].quantization.scale = np.array([1e-45], np.float32)
    path = tmp_path / "relu_scale.tflite"
    path.write_bytes(_packed(m))
    proc = subprocess.run([sys.executable, "-m", "mbgen.cli", "compile", str(path), "--target",
                           "host", "-o", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "(ActivationOp): the ratio of its scales is not finite" in proc.stderr


def test_absurd_scale_exits_2_with_one_line_from_the_cli(tmp_path):
    import subprocess
    import sys
    path = tmp_path / "absurd.tflite"
    path.write_bytes(_edited(_set_scale(_PW3, 1e-30)))
    proc = subprocess.run([sys.executable, "-m", "mbgen.cli", "compile", str(path), "--target",
                           "host", "-o", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "Conv2d_3_pointwise" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_scale_that_flushes_the_multiplier_to_zero_matches_tflm(tmp_path, referee, builder):
    """A weight scale of 1e-30 makes a channel's Q31 multiplier 0 (TFLite flushes it to 0):
    legal, and exact."""
    data = _edited(_set_scale("MobilenetV1/Conv2d_3_pointwise/weights/read", 1e-30, 5))
    result = check_mutants([("weight scale 1e-30", data)], tmp_path, referee, builder)
    assert not result.failures, result.failures
    assert result.counts == Counter({"compiled, equal to TFLM": 1})
