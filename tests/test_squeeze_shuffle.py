"""Issue 10's SqueezeNet 1.1 and ShuffleNetV2 proof: zoo model -> int8 C, bit-exact with the
numpy reference on the host, with TFLM on the emitted .tflite and in QEMU (Cortex-M7); close
to PyTorch float; the .pt2 and ONNX routes give the module route's int8.

Also the architectures against torchvision's published sizes (parameters, multiply-adds).
"""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch

from mbgen import zoo
from mbgen.compiler import CompileOptions, prepare
from mbgen.images import quantize_input
from mbgen.quantize.calibration import synthetic_inputs
from mbgen.reference import run_int8
from mbgen.zoo_light import ShuffleNetV2, SqueezeNet
from test_zoo import count_macs_and_params
from zoo_checks import check_c_equals_numpy_and_tflm_and_tracks_pytorch, \
    check_qemu_cortex_m7_equals_numpy

INPUTS = 7   # the shared photos, topped up with synthetic images (at least 2)


@pytest.mark.parametrize("alpha, macs_m, params", [
    (None, 349, 1_235_496),    # torchvision squeezenet1_1: 0.35 GFLOPS
    (0.5, 40.5, 1_366_792),    # shufflenet_v2_x0_5: 0.04 GFLOPS; paper, Table 5: 41 M
    (1.0, 145, 2_278_604),     # shufflenet_v2_x1_0: 0.14 GFLOPS; paper, Table 5: 146 M
])
def test_sizes_match_torchvision(alpha: float | None, macs_m: float, params: int) -> None:
    model = ShuffleNetV2(alpha) if alpha else SqueezeNet()
    if alpha is None:
        model.fold_batchnorm()  # the zoo's model: torchvision's layout, no BatchNorm
    macs, count = count_macs_and_params(model, (1, 3, 224, 224))
    assert count == params
    assert macs / 1e6 == pytest.approx(macs_m, rel=0.02)


def test_names_and_the_folded_squeezenet() -> None:
    names = zoo.names()
    for name in ("squeezenet1_1_96", "squeezenet1_1_224", "shufflenetv2_0.5_96",
                 "shufflenetv2_1.0_224"):
        assert name in names
    assert zoo.describe("shufflenetv2_0.5_160").family == "shufflenet_v2"
    assert zoo.input_shape("squeezenet1_1_128") == (1, 3, 128, 128)
    model = zoo.get("squeezenet1_1_96")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    pools = [m for m in model.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 3 and all(p.ceil_mode for p in pools)
    torch.rand(7)  # the global RNG moved on: the seeded weights must not notice (dropout)
    again = zoo.get("squeezenet1_1_96").state_dict()
    assert all(torch.equal(v, again[k]) for k, v in model.state_dict().items())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["squeezenet1_1_96", "shufflenetv2_0.5_96",
                                  "shufflenetv2_1.0_96"])
def test_c_equals_numpy_and_tflm_and_tracks_pytorch(name, prepared, tmp_path):
    check_c_equals_numpy_and_tflm_and_tracks_pytorch(name, prepared, tmp_path, INPUTS)


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="no arm-none-eabi-gcc")
@pytest.mark.skipif(shutil.which("qemu-system-arm") is None, reason="no qemu-system-arm")
def test_shufflenet_in_qemu_cortex_m7_equals_numpy(prepared, tmp_path):
    check_qemu_cortex_m7_equals_numpy("shufflenetv2_0.5_96", prepared, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("route", ["pt2", "onnx"])
def test_pt2_and_onnx_routes_give_the_module_int8(route, prepared, tmp_path):
    """torch.export (as exported and decomposed to core ATen) and torch.onnx files of the zoo
    ShuffleNetV2 compile to the same int8 graph behaviour as the nn.Module. (SqueezeNet's
    ops, ceil-mode max pools included, take these routes in test_torch_graph_ops.)"""
    name = "shufflenetv2_0.5_96"
    module, example = zoo.get(name), torch.zeros(zoo.input_shape(name))
    files = []
    if route == "pt2":
        program = torch.export.export(module, (example,))
        for label, exported in (("aten", program), ("core", program.run_decompositions())):
            files.append(tmp_path / f"{label}.pt2")
            torch.export.save(exported, str(files[-1]))
    else:
        files.append(tmp_path / "model.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example, str(files[-1]), opset_version=17, dynamo=False,
                              input_names=["input"])
    want_graph = prepared(name).graph
    qp = want_graph.tensors[want_graph.inputs[0]].quant
    inputs = synthetic_inputs(want_graph.tensors[want_graph.inputs[0]].shape, count=2, seed=9)
    for path in files:
        graph = prepare(str(path), CompileOptions()).graph
        got_qp = graph.tensors[graph.inputs[0]].quant
        assert (got_qp.scalar_scale, got_qp.scalar_zero_point) == \
            (qp.scalar_scale, qp.scalar_zero_point)
        for x in inputs:
            q = quantize_input(x, qp.scalar_scale, qp.scalar_zero_point)
            np.testing.assert_array_equal(run_int8(graph, q)[graph.outputs[0]],
                                          run_int8(want_graph, q)[want_graph.outputs[0]],
                                          err_msg=f"{path.name} != module route")
        print(f"{name} from {path.name}: same int8 outputs as the module on {len(inputs)} "
              "inputs")
