"""The zoo proofs shared by the per-family test files: a zoo model's int8 C equals the numpy
reference (and TFLM on the emitted .tflite, and QEMU), and its dequantised output stays close
to the PyTorch float module. One copy, so every family is held to the same checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import image_paths
from helpers_c import build_folder, run
from mbgen import targets, zoo
from mbgen.compiler import CompileOptions, emit
from mbgen.images import load_image, quantize_input
from mbgen.ir import Graph
from mbgen.quantize.calibration import synthetic_inputs
from mbgen.reference import run_int8
from mbgen.verify import cosine, dequantize

MIN_COSINE = 0.98


def float_inputs(shape_nhwc, at_least: int) -> list[tuple[str, np.ndarray]]:
    """Every shared photo, topped up with synthetic inputs (seed unlike calibration's, at least
    2) to `at_least` inputs."""
    inputs = [(p.name, load_image(p, shape_nhwc, "minus1_1")) for p in image_paths()]
    synthetic = synthetic_inputs(shape_nhwc, count=max(2, at_least - len(inputs)), seed=77)
    return inputs + [(f"synthetic{i}", x) for i, x in enumerate(synthetic)]


def assert_tracks_pytorch(name: str, label: str, graph: Graph, module: torch.nn.Module,
                          x: np.ndarray, got: np.ndarray) -> bool:
    """The C output `got` for float input `x`, dequantised, is within MIN_COSINE of the float
    module; returns whether the top-1 class is the same (callers count a majority)."""
    with torch.no_grad():
        reference = module(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy().ravel()
    dequantized = dequantize(graph, got)
    cos = cosine(dequantized, reference)
    same = int(np.argmax(dequantized)) == int(np.argmax(reference))
    print(f"{name} {label}: cosine {cos:.4f}, top-1 {'same' if same else 'differs'}")
    assert cos >= MIN_COSINE, f"{name} on {label}: cosine {cos:.4f} < {MIN_COSINE}"
    return same


def check_c_equals_numpy_and_tflm_and_tracks_pytorch(name: str, prepared, tmp_path: Path,
                                                     at_least: int) -> None:
    """Host C == numpy == TFLM (on the emitted .tflite) on the photos and synthetic inputs;
    close to PyTorch float, with the same top-1 on a majority."""
    pytest.importorskip("tflite_micro.python.tflite_micro.runtime",
                        reason="the TFLM reference needs the tflite-micro package")
    from mbgen.tflm import run_tflm

    model = prepared(name)
    tflite = tmp_path / "model_int8.tflite"
    emit(model, CompileOptions(target="host", out_dir=tmp_path / "c", emit_tflite=tflite))
    exe = build_folder(tmp_path / "c")
    graph = model.graph
    qp = graph.tensors[graph.inputs[0]].quant
    module = zoo.get(name)
    inputs = float_inputs(graph.tensors[graph.inputs[0]].shape, at_least)
    assert len(inputs) >= at_least
    agree = 0
    for label, x in inputs:
        q = quantize_input(x, qp.scalar_scale, qp.scalar_zero_point)
        got = np.frombuffer(run(exe, q.tobytes()), dtype=np.int8)
        want = run_int8(graph, q)[graph.outputs[0]].ravel()
        np.testing.assert_array_equal(got, want, err_msg=f"{name} on {label}: C != numpy")
        np.testing.assert_array_equal(got, run_tflm(tflite, q).ravel(),
                                      err_msg=f"{name} on {label}: C != TFLM")
        agree += assert_tracks_pytorch(name, label, graph, module, x, got)
    print(f"{name}: C == numpy == TFLM on {len(inputs)} inputs; top-1 agrees on "
          f"{agree}/{len(inputs)}")
    assert agree > len(inputs) // 2


def check_qemu_cortex_m7_equals_numpy(name: str, prepared, tmp_path: Path) -> None:
    """The Cortex-M7 build in QEMU equals numpy on two inputs (4 MB flash: zoo weights can
    outgrow the STM32F746's 1 MB, not QEMU's board)."""
    from mbgen.runner import run_qemu

    target = targets.get("cortex-m7")
    model = prepared(name)
    emit(model, CompileOptions(target=target.name, out_dir=tmp_path / "m7",
                               flash_bytes=4 * 1024 * 1024))
    graph = model.graph
    qp = graph.tensors[graph.inputs[0]].quant
    for label, x in float_inputs(graph.tensors[graph.inputs[0]].shape, 2)[:2]:
        q = quantize_input(x, qp.scalar_scale, qp.scalar_zero_point)
        on_qemu = run_qemu(tmp_path / "m7", target, q.tobytes())
        np.testing.assert_array_equal(on_qemu.output_int8().ravel(),
                                      run_int8(graph, q)[graph.outputs[0]].ravel(),
                                      err_msg=f"QEMU cortex-m7 != numpy on {label}")
        print(f"{name} on cortex-m7, {label}: {on_qemu.total_instructions:,} instructions")
