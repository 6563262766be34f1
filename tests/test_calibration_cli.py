"""Calibration as a user meets it (issue 13): the warnings, several --calib sources,
--input-range with photos, the fidelity summary and report.json's per-layer SQNR, and
`verify --float`. A tiny float ONNX file stands for a model with trained weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mbgen.cli import main
from mbgen.compiler import CompileOptions, prepare

onnx = pytest.importorskip("onnx")


def tiny_onnx(path: Path) -> Path:
    """Conv(3->6, 3x3) + ReLU -> GlobalAveragePool -> Flatten -> Gemm(6->4) -> Softmax."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (6, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.1, 6).astype(np.float32), "b"),
             numpy_helper.from_array(rng.normal(0, 0.8, (4, 6)).astype(np.float32), "fw"),
             numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "fb")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["g"], transB=1),
             helper.make_node("Softmax", ["g"], ["y"], axis=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, path)
    return path


def photos(folder: Path, count: int, seed: int = 0) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"p{i}.png")
    return folder


def test_warnings_sources_input_range_and_fidelity(tmp_path, capsys):
    model = str(tiny_onnx(tmp_path / "tiny.onnx"))
    # A model file calibrated on the synthetic set: warned, fidelity on held-out synthetics.
    prepared = prepare(model, CompileOptions())
    err = capsys.readouterr().err
    assert "trained weights but is calibrated on the synthetic set" in err
    assert prepared.fidelity["held_out"] == "synthetic inputs" and prepared.fidelity["inputs"] == 2
    # A zoo-like seeded model (no file) is not warned about: tested through the hook.
    from mbgen.calibrate import quantize_model
    from mbgen.preprocessing import Preprocessing
    lines = []
    quantize_model(prepared.float_graph, CompileOptions(), Preprocessing("range", "minus1_1"),
                   trained=False, echo=lines.append)
    assert lines == []

    # Several sources: a folder of photos, a glob of .npy arrays; a small set is warned about
    # and augmented; --input-range 0,1 is the calibration mapping and the input's range.
    folder = photos(tmp_path / "photos", 4)
    arrays = tmp_path / "arrays"
    arrays.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        np.save(arrays / f"a{i}.npy", rng.uniform(0, 1, (2, 16, 16, 3)).astype(np.float32))
    out = tmp_path / "out"
    code = main(["compile", model, "--calib", str(folder), "--calib", str(arrays / "*.npy"),
                 "--input-range", "0,1", "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "only 8 calibration inputs" in captured.err and "augmented copies" in captured.err
    assert "fidelity on 1 held-out calibration inputs" in captured.out
    assert "worst layer SQNR" in captured.out
    report = json.loads((out / "report.json").read_text())
    assert report["preprocessing"]["input_range"] == "0,1"
    x = report["interface"]["input"]
    assert x["zero_point"] == -128 and x["scale"] == pytest.approx(1 / 255, rel=1e-3)
    fidelity = report["fidelity"]
    # Measured on a model calibrated on 7 (+5 copies each); compiled on all 8 (+4 copies each).
    assert "other 42" in fidelity["measured_on"] and fidelity["calibration_inputs"] == 8 * 5
    assert "(measured on a model calibrated on the other 42" in captured.out
    assert fidelity["methods"] == "ranges mse, bias correction"
    assert {row["op"] for row in fidelity["layers"]} >= {"Conv2D", "FullyConnected"}
    assert all(np.isfinite(row["sqnr_db"]) or row["sqnr_db"] == float("inf")
               for row in fidelity["layers"])
    assert 0 <= fidelity["unique_top1"] <= fidelity["inputs"] == 1

    # Users' errors: one line, exit 2.
    assert main(["compile", model, "--calib", str(tmp_path / "none*.png"),
                 "-o", str(tmp_path / "o2")]) == 2
    assert "matches no file" in capsys.readouterr().err
    assert main(["compile", model, "--calib", str(folder), "--calib-percentile", "99.9",
                 "--cle", "-o", str(tmp_path / "o3")]) == 2
    assert "--range-method percentile" in capsys.readouterr().err


def test_verify_float_prints_layers_worst_first(tmp_path, capsys):
    model = str(tiny_onnx(tmp_path / "tiny.onnx"))
    code = main(["verify", model, "--float", "--count", "2", "--target", "host"])
    out = capsys.readouterr().out
    assert code == 0, out
    table = out.split("per-layer SQNR against the float graph")[1].splitlines()[2:]
    rows = [line for line in table if line.startswith("  ")]
    assert len(rows) == len(table) - 1     # then the bit-exact verdict
    values = [float(line.split()[0]) for line in rows]
    assert len(values) >= 3 and values == sorted(values)
