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

Seeds: the shared person_detect.tflite (200 mutants; mobilenet_v1_0.25_128_quant.tflite is a
legacy uint8 file that TFLM refuses whole, see MODELS.md; its LiteRT check is in
test_tflite_legacy_uint8.py) and a small block graph
written by our TFLite writer with the ops person_detect lacks (120 mutants). The counts are
printed (``-s``); the slow variant runs 250 more of each for another seed.

TFLM runs in a child process, so a mutant that crashes TFLM cannot take pytest with it.
Mutants the fuzz once caught being miscompiled are kept as regression tests at the end.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from conftest import SHARED_DIR
from mbgen.errors import UserError

pytest.importorskip("tflite_micro.python.tflite_micro.runtime",
                    reason="the TFLM referee needs the tflite-micro package")

from fuzz_mutations import _packed, mutants, option_sweep, schema  # noqa: E402
from fuzz_referee import FuzzRun, SanitizedBuilder, TflmReferee, check_mutants  # noqa: E402

PERSON = SHARED_DIR / "models" / "person_detect.tflite"
SEED = 20261202


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
          label: str = "person_detect", stream: bool = True) -> FuzzRun:
    result = check_mutants(mutants(model, count, seed), tmp_path, referee, builder, stream)
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


def test_block_option_sweep_is_refused_or_exact(tmp_path, referee, builder):
    samples = option_sweep(_block_model())
    result = check_mutants(samples, tmp_path, referee, builder)
    print(f"\n{len(samples)} option edits of a small block graph: {dict(result.counts)}")
    assert not result.failures, "\n".join(result.failures[:12])
    assert len(samples) >= 60 and result.counts["compiled, equal to TFLM"] >= 20


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1])   # one seed (~60 s): the suite stays under 20 minutes
def test_more_mutants(seed, tmp_path, referee, builder):
    # these check how the file is read; streamed stages are fuzzed by the 200 above
    # (and tests/test_streaming.py), and would add about a second per compiled mutant
    _fuzz(_person(), 250, seed, tmp_path, referee, builder, stream=False)
    _fuzz(_block_model(), 250, seed, tmp_path, referee, builder, "a small block graph")


@pytest.mark.slow
def test_person_detect_option_sweep(tmp_path, referee, builder):
    samples = option_sweep(_person())
    result = check_mutants(samples, tmp_path, referee, builder, stream=False)   # as above
    print(f"\n{len(samples)} option edits of person_detect: {dict(result.counts)}")
    assert not result.failures, "\n".join(result.failures[:12])


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


def test_depthwise_without_bias_equals_the_reference_where_tflm_crashes(tmp_path, referee,
                                                                        builder):
    """Found by the fuzz: a DEPTHWISE_CONV_2D whose optional bias is absent (-1) is legal
    TFLite, but the TFLM wheel dies on it; the numpy reference referees our C instead."""
    def drop_bias(m):
        op = m.subgraphs[0].operators[7]
        op.inputs = np.array(op.inputs, np.int32)
        op.inputs[2] = -1
    result = check_mutants([("no bias", _edited(drop_bias))], tmp_path, referee, builder)
    assert not result.failures, result.failures
    (outcome,) = result.counts
    assert outcome.endswith("equal to reference") or outcome == "compiled, equal to TFLM"
