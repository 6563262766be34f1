"""Legacy uint8 .tflite (the shared TOCO-converted mobilenet_v1_0.25_128_quant, which TFLM
refuses) bit-exact with LiteRT's reference kernels (``OpResolverType.BUILTIN_REF``).

The referee is the ai-edge-litert wheel. Its default resolver (AUTO: XNNPACK and the
optimised kernels) is not the arithmetic of TFLite's uint8 reference kernels; the test
prints how far it lies from ours. The C takes and returns int8 = uint8 - 128.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import image_paths
from helpers_c import build_folder, run
from mbgen import ir
from mbgen.compiler import CompileOptions, compile_model
from mbgen.errors import UserError
from mbgen.images import load_pixels
from mbgen.reference import run_int8

litert = pytest.importorskip("ai_edge_litert.interpreter")


def _interpreter(path, resolver):
    it = litert.Interpreter(model_path=str(path), experimental_op_resolver_type=resolver)
    it.allocate_tensors()
    return it


def _run(it, pixels: np.ndarray) -> np.ndarray:
    """LiteRT's uint8 output for uint8 pixels, as our int8 (minus 128)."""
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    it.set_tensor(i["index"], pixels.reshape(i["shape"]).astype(np.uint8))
    it.invoke()
    return (it.get_tensor(o["index"]).reshape(-1).astype(np.int16) - 128).astype(np.int8)


def test_mobilenet_v1_uint8_bit_exact_with_litert_reference_kernels(shared_dir, tmp_path):
    path = shared_dir / "models" / "mobilenet_v1_0.25_128_quant.tflite"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    compiled = compile_model(str(path), CompileOptions(target="host", out_dir=tmp_path / "c"))
    graph = compiled.graph
    legacy = [n for n in graph.nodes if ir.requantization_of(n.op) is
              ir.Requantization.TFLITE_UINT8]
    assert len(legacy) == 29  # 15 CONV_2D, 13 DEPTHWISE_CONV_2D, 1 AVERAGE_POOL_2D
    exe = build_folder(compiled.out_dir)
    reference = _interpreter(path, litert.OpResolverType.BUILTIN_REF)
    default = _interpreter(path, litert.OpResolverType.AUTO)
    photos = image_paths()[:5]
    assert len(photos) == 5
    for photo in photos:
        pixels = load_pixels(photo, (1, 128, 128, 3), photo.name == "person.bmp")
        q = (pixels.astype(np.int16) - 128).astype(np.int8)
        ours = np.frombuffer(run(exe, q.tobytes()), dtype=np.int8)
        np.testing.assert_array_equal(ours, run_int8(graph, q)[graph.outputs[0]].reshape(-1),
                                      err_msg=f"C != numpy on {photo.name}")
        np.testing.assert_array_equal(ours, _run(reference, pixels),
                                      err_msg=f"C != LiteRT BUILTIN_REF on {photo.name}")
        auto = _run(default, pixels).astype(np.int64)
        diff = np.abs(auto - ours)
        print(f"{photo.name}: top-1 {int(np.argmax(ours))}, == LiteRT BUILTIN_REF; LiteRT AUTO "
              f"differs on {int((diff > 0).sum())} of {diff.size} by <= {int(diff.max())} LSB")


def test_legacy_uint8_ops_we_do_not_run_are_refused(tmp_path):
    """A uint8 FULLY_CONNECTED (its uint8 arithmetic is not implemented) exits in one line."""
    from test_tflm_reference import GraphMaker, act
    from mbgen.export.tflite_writer import write_tflite
    m = GraphMaker(np.random.default_rng(0))
    m.input((1, 8))
    m.weights("w", (4, 8), None)
    m.node(ir.FullyConnected(), ["x", "w"], act("y", (1, 4), 0.05, 3))
    model = _as_uint8(write_tflite(m.graph("fc"), tmp_path / "fc.tflite"), tmp_path)
    with pytest.raises(UserError, match="FullyConnected") as err:
        compile_model(str(model), CompileOptions(target="host", out_dir=tmp_path / "c"))
    assert "\n" not in str(err.value)


def _as_uint8(path, folder):
    """The int8 file with every int8 tensor retyped uint8 (values and zero points + 128)."""
    from test_tflite_frontend import _mutated

    def edit(model):
        for sub in model.subgraphs:
            for t in sub.tensors:
                if t.type == 9:  # INT8
                    t.type = 3   # UINT8
                    if t.quantization is not None and t.quantization.zeroPoint is not None:
                        t.quantization.zeroPoint = [int(z) + 128 for z in
                                                    t.quantization.zeroPoint]
                    buf = model.buffers[t.buffer]
                    if buf.data is not None and len(buf.data):
                        data = np.asarray(buf.data, dtype=np.uint8).view(np.int8)
                        buf.data = (data.astype(np.int16) + 128).astype(np.uint8)
    return _mutated(path, edit, folder)


def test_verify_with_litert_reference(shared_dir, tmp_path):
    from mbgen.verify import verify_model
    path = shared_dir / "models" / "mobilenet_v1_0.25_128_quant.tflite"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    lines: list[str] = []
    outcome = verify_model(str(path), CompileOptions(target="host"), reference="litert",
                           count=2, echo=lines.append)
    assert outcome.ok, "\n".join(lines)
    assert sum("host C vs LiteRT" in c.what and c.exact for c in outcome.comparisons) == 2


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or
                    shutil.which("qemu-system-arm") is None, reason="no Arm toolchain or QEMU")
def test_legacy_uint8_in_qemu_cortex_m7_with_litert_reference(shared_dir):
    from mbgen.verify import verify_model
    path = shared_dir / "models" / "mobilenet_v1_0.25_128_quant.tflite"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    lines: list[str] = []
    outcome = verify_model(str(path), CompileOptions(target="cortex-m7"), reference="litert",
                           count=1, echo=lines.append)
    assert outcome.ok, "\n".join(lines)
    assert any("QEMU cortex-m7" in c.what and c.exact for c in outcome.comparisons)
    print("\n".join(lines))
