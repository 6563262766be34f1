"""Issue 3's proof: zoo model -> int8 C that builds with -Werror and equals the numpy reference
bit for bit on the host, and stays close to the PyTorch float model.

The references are independent of the C: `mbgen.reference` (numpy, from the TFLite spec) and
the PyTorch module itself.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from helpers_c import build_folder, run
from mbgen import zoo
from mbgen.compiler import CompileOptions, emit
from mbgen.images import quantize_input
from mbgen.quantize.calibration import synthetic_inputs
from mbgen.reference import run_int8
from zoo_checks import assert_tracks_pytorch, float_inputs

MODELS = ["mbv1_0.25_128", "mbv2_0.35_96"]


@pytest.fixture(scope="module", params=MODELS)
def host_build(request, prepared, tmp_path_factory):
    model = prepared(request.param)
    out = tmp_path_factory.mktemp(request.param)
    emit(model, CompileOptions(target="host", out_dir=out / "c"))
    return request.param, model, build_folder(out / "c")


def test_generated_c_matches_numpy_reference_and_pytorch(host_build):
    name, model, exe = host_build
    graph = model.graph
    qp = graph.tensors[graph.inputs[0]].quant
    module = zoo.get(name)
    shape = graph.tensors[graph.inputs[0]].shape
    inputs = float_inputs(shape, 5)  # every shared photo, at least 5
    assert len(inputs) >= 5
    agree = 0
    for label, x in inputs:
        q = quantize_input(x, qp.scalar_scale, qp.scalar_zero_point)
        want = run_int8(graph, q)[graph.outputs[0]].ravel()
        got = np.frombuffer(run(exe, q.tobytes()), dtype=np.int8)
        np.testing.assert_array_equal(got, want, err_msg=f"{name} on {label}: C != numpy")
        agree += assert_tracks_pytorch(name, label, graph, module, x, got)
    print(f"{name}: top-1 agrees on {agree}/{len(inputs)} inputs")
    assert agree > len(inputs) // 2


def test_comparison_detects_a_changed_weight(host_build, tmp_path):
    """The comparison can fail: C built from a graph with one weight changed differs."""
    name, model, _ = host_build
    graph = model.graph
    tampered = graph.copy()
    first_conv = tampered.nodes[0]
    weight = tampered.tensors[first_conv.inputs[1]]
    data = weight.data.copy()
    data.flat[0] = -data.flat[0] if data.flat[0] else 1
    weight.data = data
    emit(replace(model, graph=tampered), CompileOptions(target="host", out_dir=tmp_path / "c"))
    exe = build_folder(tmp_path / "c")
    qp = graph.tensors[graph.inputs[0]].quant
    changed = 0
    for x in synthetic_inputs(graph.tensors[graph.inputs[0]].shape, count=3, seed=5):
        q = quantize_input(x, qp.scalar_scale, qp.scalar_zero_point)
        got = np.frombuffer(run(exe, q.tobytes()), dtype=np.int8)
        changed += not np.array_equal(got, run_int8(graph, q)[graph.outputs[0]].ravel())
    assert changed > 0
