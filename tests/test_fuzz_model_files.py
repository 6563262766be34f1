"""Damaged model files must load or raise UserError: never any other exception.

Deterministic mutations (truncations, flipped bytes, 32-bit fields overwritten with extreme
values, random bytes behind a valid header) of small .tflite files written by our writer
(dense in flatbuffer structure), of the shared real .tflite files, and of a small valid .onnx
model. A few go through the real CLI, which must exit 2 with one line on stderr.
"""

from __future__ import annotations

import subprocess
import sys
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from mbgen import ir
from mbgen.errors import UserError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODELS = SHARED / "models"
EXTREME_WORDS = (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFF)


def mutations(data: bytes, count: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        b = bytearray(data)
        kind = rng.integers(0, 4)
        if kind == 0:    # truncated anywhere, including inside the header
            b = b[:int(rng.integers(0, len(b)))]
        elif kind == 1:  # a few bytes changed
            for _ in range(int(rng.integers(1, 9))):
                b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
        elif kind == 2:  # offsets / lengths / counts replaced by extreme values
            for _ in range(int(rng.integers(1, 4))):
                pos = int(rng.integers(0, len(b) // 4)) * 4
                word = int(rng.choice(EXTREME_WORDS + (int(rng.integers(0, 1 << 32)),)))
                b[pos:pos + 4] = word.to_bytes(4, "little")
        else:            # the original header, then noise
            b = b[:8] + rng.integers(0, 256, int(rng.integers(0, 3000)), np.uint8).tobytes()
        out.append(bytes(b))
    return out


def random_files(count: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, int(rng.integers(0, 4000)), np.uint8).tobytes()
            for _ in range(count)]


def _check_all(samples: list[bytes], loader: Callable[[Path], ir.Graph], suffix: str,
               tmp_path: Path) -> tuple[int, int]:
    """Run ``loader`` on every sample; return (loaded, refused). Fails on anything else."""
    path = tmp_path / f"fuzz{suffix}"
    loaded = refused = 0
    crashes = []
    for index, data in enumerate(samples):
        path.write_bytes(data)
        try:
            loader(path)
            loaded += 1
        except UserError as exc:
            assert "\n" not in str(exc), f"sample {index}: multi-line message {exc!s}"
            refused += 1
        except Exception as exc:  # noqa: BLE001 - exactly what this test hunts for
            where = traceback.extract_tb(exc.__traceback__)[-1]
            crashes.append(f"sample {index}: {type(exc).__name__}: {str(exc)[:120]} "
                           f"at {Path(where.filename).name}:{where.lineno}")
            (tmp_path / f"crash_{index}{suffix}").write_bytes(data)
    assert not crashes, f"{len(crashes)} of {len(samples)} crashed:\n" + "\n".join(crashes[:8])
    return loaded, refused


# ----------------------------------------------------------------------------- .tflite


@pytest.fixture(scope="module")
def small_tflite_files() -> list[bytes]:
    pytest.importorskip("tflite_micro.tensorflow.lite.micro.python.schema_py_generated")
    from mbgen.export.tflite_writer import tflite_bytes
    from test_tflm_reference import OP_CASES, build_case
    wanted = ("conv3x3_stride2_odd_same", "depthwise_m8_from_1ch", "fully_connected", "add",
              "mean_flat", "softmax", "pad", "mul_per_channel", "conv_asymmetric_pad_relu6",
              "quantize_float")
    return [tflite_bytes(build_case(c, 0)) for c in OP_CASES if c.name in wanted]


def test_mutated_small_tflite_files(small_tflite_files, tmp_path):
    from mbgen.frontends.tflite_frontend import load_tflite
    samples = [m for i, data in enumerate(small_tflite_files) for m in mutations(data, 40, i)]
    loaded, refused = _check_all(samples, load_tflite, ".tflite", tmp_path)
    assert refused > len(samples) // 2 and loaded > 0  # both outcomes really happen


@pytest.mark.parametrize("name,count", [("person_detect.tflite", 40),
                                        ("mobilenet_v1_0.25_128_quant.tflite", 15),
                                        ("mobilenet_v1_0.25_128.tflite", 15)])
def test_mutated_shared_tflite_files(name, count, tmp_path):
    from mbgen.frontends.tflite_frontend import load_tflite
    path = MODELS / name
    if not path.exists():
        pytest.skip(f"{path} is missing")
    _check_all(mutations(path.read_bytes(), count, seed=len(name)), load_tflite, ".tflite",
               tmp_path)


def test_random_bytes_as_tflite(tmp_path):
    from mbgen.frontends.tflite_frontend import load_tflite
    samples = random_files(40, seed=1)
    # With the identifier in place the parser itself gets the noise.
    samples += [data[:4] + b"TFL3" + data[8:] for data in random_files(60, seed=2)]
    loaded, _ = _check_all(samples, load_tflite, ".tflite", tmp_path)
    assert loaded == 0


# ----------------------------------------------------------------------------- .onnx


def tiny_onnx_model() -> bytes:
    """Conv(stride 2, pad 1) -> Relu -> GlobalAveragePool -> Flatten -> Gemm, opset 13."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)

    def const(name, shape):
        return numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [const("w", (4, 3, 3, 3)), const("b", (4,)), const("fw", (10, 4)), const("fb", (10,))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _load_onnx():
    try:
        from mbgen.frontends.onnx_frontend import load_onnx
    except ImportError:
        pytest.skip("no ONNX frontend (mbgen.frontends.onnx_frontend) yet")
    return load_onnx


def test_mutated_onnx_files(tmp_path):
    load_onnx = _load_onnx()
    data = tiny_onnx_model()
    (tmp_path / "tiny.onnx").write_bytes(data)
    assert len(load_onnx(tmp_path / "tiny.onnx").nodes) >= 4  # the seed itself is valid
    samples = mutations(data, 250, seed=3) + random_files(50, seed=4)
    _check_all(samples, load_onnx, ".onnx", tmp_path)


def _onnx_edit(edit: Callable) -> bytes:
    import onnx
    model = onnx.load_from_string(tiny_onnx_model())
    edit(model)
    return model.SerializeToString()


def _set_dims(model, dims):
    model.graph.initializer[1].dims[:] = dims


def _set_data_type(model, data_type):
    model.graph.initializer[1].data_type = data_type


# Damage that protobuf parsing and onnx.checker let through (found by the mutations above).
ONNX_DAMAGE = {
    "non_utf8_graph_name": lambda: tiny_onnx_model().replace(b"tiny", b"\xff\xfe\xfd\xfc"),
    "initializer_dims_smaller_than_data": lambda: _onnx_edit(lambda m: _set_dims(m, [2])),
    "initializer_unknown_data_type": lambda: _onnx_edit(lambda m: _set_data_type(m, 99)),
}


@pytest.mark.parametrize("damage", sorted(ONNX_DAMAGE))
def test_onnx_damage_that_passes_the_checker(damage, tmp_path):
    load_onnx = _load_onnx()
    _check_all([ONNX_DAMAGE[damage]()], load_onnx, ".onnx", tmp_path)


# ----------------------------------------------------------------------------- the CLI


def _cli_cases() -> list[tuple[str, Callable[[], bytes]]]:
    person = MODELS / "person_detect.tflite"
    return [
        ("truncated.tflite", lambda: person.read_bytes()[:5000]),
        ("noise.tflite", lambda: random_files(1, seed=9)[0]),
        ("bad_offsets.tflite", lambda: mutations(person.read_bytes(), 1, seed=11)[0][:64]
         + (0xFFFFFFFF).to_bytes(4, "little") * 8 + person.read_bytes()[96:]),
        ("truncated.onnx", lambda: tiny_onnx_model()[:300]),
    ]


@pytest.mark.parametrize("name,make", _cli_cases(), ids=[c[0] for c in _cli_cases()])
def test_cli_refuses_damaged_files_with_exit_2(name, make, tmp_path):
    pytest.importorskip("mbgen.cli")
    if not (MODELS / "person_detect.tflite").exists():
        pytest.skip("shared models missing")
    if name.endswith(".onnx"):
        _load_onnx()
    bad = tmp_path / name
    bad.write_bytes(make())
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "mbgen.cli", "compile", str(bad),
                             "--target", "host", "-o", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not out.exists()  # nothing written for a file that could not be read
