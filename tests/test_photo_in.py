"""A photo in, a label out: preprocessing recorded at compile time, `run --image`, and zoo
models with trained TFLite weights (issue 14, item 4).

Independent references: the input-tensor sha256 prefixes and TFLM outputs measured outside this
project (shared/models/MODELS.md), the TFLite file's own float graph, and the int8 graph the
.tflite file compiles to by itself.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from mbgen.compiler import CompileOptions, compile_model, prepare
from mbgen.errors import UserError
from mbgen.preprocessing import Preprocessing, resolve

MBV1_FILE = "models/mobilenet_v1_0.25_128.tflite"


def mbgen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mbgen.cli", *args], capture_output=True,
                          text=True, timeout=900)


def assert_user_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def mbgen_here(capsys, *args: str) -> subprocess.CompletedProcess:
    """The CLI in this process (no interpreter start-up), as a CompletedProcess."""
    from mbgen.cli import main
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def _sha(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:16]


# ----------------------------------------------------------------------------- preprocessing


def test_resolve_options_and_defaults():
    assert resolve(None, None, None, quantized_input=True, channels=1).kind == "quantized"
    assert resolve(None, None, None, quantized_input=False, channels=3).is_default_float
    assert resolve("0,1", None, None, quantized_input=True, channels=3).value_range == "zero_1"
    p = resolve(None, "123.675,116.28,103.53", "58.395,57.12,57.375", quantized_input=False,
                channels=3)
    pixels = np.array([[[[0, 128, 255]]]], np.uint8)
    want = (np.float32([0, 128, 255]) - np.float32([123.675, 116.28, 103.53])) \
        / np.float32([58.395, 57.12, 57.375])
    np.testing.assert_array_equal(p.float_input(pixels).ravel(), want)
    assert Preprocessing.from_report(p.as_report()) == p
    for bad in (("2,2", None, None), ("0,1", "1", None), (None, "1,2", None),
                (None, None, "0"), (None, "x", None)):
        with pytest.raises(UserError):
            resolve(*bad, quantized_input=False, channels=3)
    # uint8 interfaces: quantised pixels as they are; float ranges quantised into [0, 255].
    from mbgen.preprocessing import Interface
    u8 = Interface((1, 1, 1, 3), "uint8", 1 / 127.5, 127)
    np.testing.assert_array_equal(Preprocessing("quantized").model_input(pixels, u8), pixels)
    assert Preprocessing("quantized").model_input(pixels, Interface(
        (1, 1, 1, 3), "int8", 1.0, 0)).ravel().tolist() == [-128, 0, 127]
    q = Preprocessing("range", "minus1_1").model_input(
        pixels, Interface((1, 1, 1, 3), "uint8", 1 / 128, 128))   # 255 -> 1.0 -> 256: clamped
    assert q.dtype == np.uint8 and q.ravel().tolist() == [0, 129, 255]
    # A [0, 1] model calibrated without photos sees the synthetic set mapped to [0, 1].
    unit = np.array([-1.0, 0.0, 1.0], np.float32)
    np.testing.assert_allclose(Preprocessing("range", "zero_1").from_unit(unit), [0, 0.5, 1])


def test_verify_images_uses_the_recorded_preprocessing(shared_dir, prepared):
    """person_detect (int8 file): the photo becomes q = p - 128, MODELS.md's input tensor."""
    from mbgen.verify import make_inputs
    model = prepared(str(shared_dir / "models/person_detect.tflite"))
    assert model.preprocessing == Preprocessing("quantized")
    inputs = {i.label: i for i in make_inputs(model.graph, shared_dir / "images", 1,
                                              model.preprocessing)}
    assert _sha(inputs["no_person.bmp"].int8_nhwc) == "404891ef65ec1188"   # MODELS.md
    assert _sha(inputs["cat.bmp"].int8_nhwc) == "b314d0f11059a646"


@pytest.mark.slow
def test_compile_records_preprocessing_and_calibrates_with_it(tmp_path):
    compiled = compile_model("mbv1_0.25_96", CompileOptions(out_dir=tmp_path / "o",
                                                            input_range="0,1"))
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["preprocessing"]["input_range"] == "0,1"
    assert report["preprocessing"]["formula"] == "p / 255"
    # The synthetic calibration set was mapped to [0, 1]: the input covers [0, 1], not [-1, 1].
    x = report["interface"]["input"]
    assert x["dtype"] == "int8" and x["zero_point"] == -128
    assert x["scale"] == pytest.approx(1 / 255, rel=1e-3)
    assert compiled.report["interface"]["output_op"] == "FullyConnected"


# ----------------------------------------------------------------------------- run --image


def test_run_image_person_detect_matches_tflm(shared_dir, tmp_path, capsys):
    """MODELS.md: TFLM gives no_person.bmp [77, -77] ("notperson") with q = p - 128."""
    out = tmp_path / "pd"
    compile_model(str(shared_dir / "models/person_detect.tflite"),
                  CompileOptions(out_dir=out))
    labels = tmp_path / "labels.txt"
    labels.write_text("notperson\nperson\n")
    image = str(shared_dir / "images/no_person.bmp")
    proc = mbgen_here(capsys, "run", str(out), "--host", "--image", image, "--labels", str(labels), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["output"] == [77, -77]
    assert result["scores_are_probabilities"] is True
    assert result["top"][0] == {"index": 0, "label": "notperson", "raw": 77,
                                "score": pytest.approx((77 + 128) / 256)}
    proc = mbgen_here(capsys, "run", str(out), "--host", "--image", image, "--labels", str(labels))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].split()[1:3] == ["[0]", "notperson"]
    # Users' errors: one line, exit 2.
    assert_user_error(mbgen_here(capsys, "run", str(out), "--host", "--image", str(tmp_path / "no.jpg")),
                      "cannot read image", "no.jpg")
    assert_user_error(mbgen_here(capsys, "run", str(out), "--host", "--image", image, "--labels",
                            str(tmp_path)), "cannot read labels")
    labels.write_text("a\nb\nc\nd\n")
    assert_user_error(mbgen_here(capsys, "run", str(out), "--host", "--image", image, "--labels",
                            str(labels)), "4 lines", "2 classes")


# ----------------------------------------------------------------------------- --weights


@pytest.mark.slow
def test_zoo_with_tflite_weights_equals_the_tflite_file(shared_dir):
    """The zoo route with the file's weights compiles to the very int8 graph the file does:
    same ops (TF's bottom/right padding included), same constants, same quantisation, and the
    numpy int8 reference gives identical outputs. The float module matches TFLite's float."""
    import torch
    from mbgen.float_interp import run_float
    from mbgen.images import load_image
    from mbgen.reference import run_int8
    from mbgen.weights_tflite import zoo_module_with_weights

    path = shared_dir / MBV1_FILE
    calib = shared_dir / "calib"
    direct = prepare(str(path), CompileOptions(calib_dir=calib))
    zoo_route = prepare("mbv1_0.25_128", CompileOptions(weights=path, calib_dir=calib))
    a, b = direct.graph, zoo_route.graph
    assert len(a.nodes) == len(b.nodes) == 31
    for x, y in zip(a.nodes, b.nodes):
        assert x.op == y.op, (x.name, y.name)
        for i, j in zip(x.inputs[1:], y.inputs[1:]):
            np.testing.assert_array_equal(a.tensors[i].data, b.tensors[j].data)
        qa, qb = a.tensors[x.outputs[0]].quant, b.tensors[y.outputs[0]].quant
        np.testing.assert_array_equal(qa.scale, qb.scale)
        np.testing.assert_array_equal(qa.zero_point, qb.zero_point)
    assert a.nodes[0].op.padding.bottom == 1 and a.nodes[0].op.padding.top == 0
    cat = load_image(shared_dir / "images/cat.bmp", (1, 128, 128, 3))
    from mbgen.images import quantize_input
    qin = a.tensors[a.inputs[0]].quant
    q = quantize_input(cat, qin.scalar_scale, qin.scalar_zero_point)
    out_a = run_int8(a, q)[a.outputs[0]]
    np.testing.assert_array_equal(out_a, run_int8(b, q)[b.outputs[0]])
    assert int(np.argmax(out_a)) == 286   # Egyptian cat, as the float model (MODELS.md)
    module = zoo_module_with_weights("mbv1_0.25_128", path)
    with torch.no_grad():
        ours = module(torch.from_numpy(cat.transpose(0, 3, 1, 2).copy())).numpy()
    theirs = run_float(direct.float_graph, cat)[direct.float_graph.outputs[0]]
    np.testing.assert_allclose(ours, theirs, atol=2e-5)
    assert abs(float(ours[0, 286]) - 0.3582) < 1e-3    # MODELS.md, TFLM float


def test_weights_that_do_not_fit_are_user_errors(shared_dir, capsys):
    from mbgen.compiler import resolve_model
    from mbgen.weights_tflite import zoo_graph_with_weights, zoo_module_with_weights
    path = shared_dir / MBV1_FILE
    with pytest.raises(UserError, match=r"'MobilenetV1/Conv2d_0/weights' has shape "
                                        r"\(8, 3, 3, 3\).*needs \(16, 3, 3, 3\)"):
        zoo_module_with_weights("mbv1_0.5_128", path)
    with pytest.raises(UserError, match=r"input is \(1, 128, 128, 3\)"):
        zoo_module_with_weights("mbv1_0.25_96", path)
    with pytest.raises(UserError, match="MobileNet V1"):
        zoo_module_with_weights("mbv2_0.35_128", path)
    with pytest.raises(UserError, match="int8 model"):
        zoo_module_with_weights("mbv1_0.25_128", shared_dir / "models/person_detect.tflite")
    with pytest.raises(UserError, match="not found"):
        zoo_module_with_weights("mbv1_0.25_128", shared_dir / "models/none.tflite")
    with pytest.raises(UserError, match="has its own"):
        zoo_graph_with_weights(resolve_model(str(path)), path)
    # Through the CLI: one line, exit 2, before any slow work.
    assert_user_error(mbgen_here(capsys, "compile", "mbv1_0.5_128", "--weights", str(path)),
                      "MobilenetV1/Conv2d_0/weights", "(8, 3, 3, 3)", "(16, 3, 3, 3)")


@pytest.mark.qemu
@pytest.mark.slow
def test_readme_demo_prints_egyptian_cat_in_qemu(shared_dir, tmp_path):
    """The README quick start: the trained MobileNet V1 0.25/128 (the float file's weights,
    calibrated on the shared photos) classifies cat.bmp in QEMU as the float model does in
    TFLM (MODELS.md: 286 "Egyptian cat", 0.3582)."""
    out = tmp_path / "mbv1_0.25_128-cortex-m7"
    proc = mbgen("compile", "mbv1_0.25_128", "--weights", str(shared_dir / MBV1_FILE),
                 "--calib", str(shared_dir / "calib"), "--target", "cortex-m7", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    proc = mbgen("run", str(out), "--image", str(shared_dir / "images/cat.bmp"),
                 "--labels", str(shared_dir / "models/imagenet_labels.txt"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("top-5 for"), proc.stdout
    assert "[286]  Egyptian cat" in lines[1], proc.stdout
    probability = float(lines[1].split("probability")[1].split()[0])
    assert abs(probability - 0.3582) < 0.05
    assert "total" in proc.stdout and "instructions" in proc.stdout   # it ran in QEMU


def test_torch_zero_pad_before_a_conv_becomes_its_padding():
    """nn.ZeroPad2d((0, 1, 0, 1)) + a stride-2 conv (TF's 'SAME', as zoo tf_padding builds it)
    is one Conv2D with bottom/right padding, computing what PyTorch computes; softmax too."""
    import torch
    from torch import nn
    from mbgen import ir
    from mbgen.float_interp import run_float
    from mbgen.frontends.torch_frontend import from_module
    torch.manual_seed(0)
    model = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 4, 3, 2), nn.ReLU6(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Softmax(dim=1)).eval()
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    graph = from_module(model, x, "padded")
    ops = [type(n.op) for n in graph.nodes]
    assert ir.Pad not in ops and ops[0] is ir.Conv2D and ops[-1] is ir.Softmax
    assert graph.nodes[0].op.padding == ir.Padding(0, 1, 0, 1)
    with torch.no_grad():
        want = model(x).numpy()
    got = run_float(graph, x.numpy().transpose(0, 2, 3, 1))[graph.outputs[0]]
    np.testing.assert_allclose(got, want, atol=1e-6)
