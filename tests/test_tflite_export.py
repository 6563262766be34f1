"""The TFLite writer: files TFLM runs like the originals, and that read back as the same graph.

Bit-exactness of every op against TFLM is in ``test_tflm_reference.py``; here: round trips,
equivalence with files made by TensorFlow's converter, and the flatbuffer's form (operator
versions, buffer alignment, PAD for explicit padding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mbgen import ir
from mbgen.errors import UserError
from mbgen.export.tflite_writer import tflite_bytes, write_tflite
from mbgen.frontends.tflite_frontend import load_tflite

pytest.importorskip("tflite_micro.tensorflow.lite.micro.python.schema_py_generated",
                    reason="the writer needs tflite-micro's schema bindings")

from test_tflm_reference import OP_CASES, build_case, random_inputs  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PERSON_DETECT = SHARED / "models" / "person_detect.tflite"
MOBILENET_FLOAT = SHARED / "models" / "mobilenet_v1_0.25_128.tflite"


def _needs(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is missing (shared models not present)")
    return path


def _assert_same_tensor(a: ir.Tensor, b: ir.Tensor) -> None:
    assert (a.name, a.shape, a.dtype) == (b.name, b.shape, b.dtype)
    if a.data is None:
        assert b.data is None, a.name
    else:
        assert b.data is not None and a.data.dtype == b.data.dtype, a.name
        assert np.array_equal(a.data, b.data), a.name
    if a.quant is None:
        assert b.quant is None, a.name
    else:
        assert np.array_equal(a.quant.scale, b.quant.scale), a.name
        assert a.quant.scale.dtype == b.quant.scale.dtype == np.float32
        assert np.array_equal(a.quant.zero_point, b.quant.zero_point), a.name
        assert a.quant.axis == b.quant.axis, a.name


def _assert_same_graph(a: ir.Graph, b: ir.Graph) -> None:
    assert (a.inputs, a.outputs) == (b.inputs, b.outputs)
    assert sorted(a.tensors) == sorted(b.tensors)
    for name in a.tensors:
        _assert_same_tensor(a.tensors[name], b.tensors[name])
    assert [(n.op, n.inputs, n.outputs) for n in a.nodes] == \
           [(n.op, n.inputs, n.outputs) for n in b.nodes]


def _needs_pad_op(graph: ir.Graph) -> bool:
    for node in graph.nodes:
        op = node.op
        if isinstance(op, (ir.Conv2D, ir.DepthwiseConv2D)):
            _, h, w, _ = graph.tensors[node.inputs[0]].shape
            _, kh, kw, _ = graph.tensors[node.inputs[1]].shape
            if op.padding not in (ir.Padding(), ir.Padding.same(h, w, kh, kw, *op.stride,
                                                                 *op.dilation)):
                return True
    return False


@pytest.mark.parametrize("case", OP_CASES, ids=lambda c: c.name)
def test_single_op_graphs_round_trip(case, tmp_path):
    graph = build_case(case, seed=0)
    loaded = load_tflite(write_tflite(graph, tmp_path / "g.tflite"))
    if not _needs_pad_op(graph):
        _assert_same_graph(graph, loaded)
        return
    # Explicit padding that is not TF SAME comes back as PAD + VALID conv: same tensors
    # plus the padded one, and the same results.
    assert [ir.op_name(n.op) for n in loaded.nodes] == ["Pad", ir.op_name(graph.nodes[0].op)]
    assert loaded.nodes[1].op.padding == ir.Padding()
    for name, tensor in graph.tensors.items():
        _assert_same_tensor(tensor, loaded.tensors[name])
    from mbgen.reference import run_int8
    inputs = random_inputs(graph, np.random.default_rng(5))
    assert np.array_equal(run_int8(graph, inputs)["y"], run_int8(loaded, inputs)["y"])


def test_person_detect_round_trip_and_tflm_equivalence(tmp_path):
    from mbgen.tflm import run_tflm, tflm_arena_bytes
    original = load_tflite(_needs(PERSON_DETECT))
    path = write_tflite(original, tmp_path / "pd.tflite")
    again = load_tflite(path)
    original.name = again.name  # the graph name comes from the file name
    _assert_same_graph(original, again)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.integers(-128, 128, (1, 96, 96, 1)).astype(np.int8)
        assert np.array_equal(run_tflm(path, x), run_tflm(PERSON_DETECT, x))
    # Same graph, same kernels: TFLM plans the same arena for our file as for Google's.
    assert tflm_arena_bytes(path) == tflm_arena_bytes(PERSON_DETECT)


def test_float_mobilenet_written_runs_identically_in_tflm(tmp_path):
    from mbgen.images import load_image
    from mbgen.tflm import run_tflm
    graph = load_tflite(_needs(MOBILENET_FLOAT))
    path = write_tflite(graph, tmp_path / "float.tflite")
    image = _needs(SHARED / "images" / "cat.bmp")
    x = load_image(image, (1, 128, 128, 3), "minus1_1")
    ours, theirs = run_tflm(path, x), run_tflm(MOBILENET_FLOAT, x)
    assert ours.dtype == np.float32
    assert np.array_equal(ours, theirs)
    assert int(np.argmax(ours)) == 286  # MODELS.md: "Egyptian cat"


def test_truncated_graph_export_for_locating_mismatches(tmp_path):
    """Any prefix of a graph can be written and run in TFLM (how a mismatch is located)."""
    from mbgen.reference import run_int8
    from mbgen.tflm import run_tflm
    full = load_tflite(_needs(PERSON_DETECT))
    x = np.random.default_rng(1).integers(-128, 128, (1, 96, 96, 1)).astype(np.int8)
    ours = run_int8(full, x, keep_all=True)
    for cut in (1, 6, 27):
        nodes = full.nodes[:cut]
        used = {n for node in nodes for n in node.inputs + node.outputs} | set(full.inputs)
        prefix = ir.Graph(f"prefix{cut}", {k: v for k, v in full.tensors.items() if k in used},
                          nodes, list(full.inputs), [nodes[-1].outputs[0]])
        path = write_tflite(prefix, tmp_path / f"prefix{cut}.tflite")
        assert np.array_equal(run_tflm(path, x), ours[nodes[-1].outputs[0]])


def _read(data: bytes):
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema
    return schema.Model.GetRootAsModel(data, 0), schema


def test_constant_buffers_are_16_byte_aligned():
    graph = load_tflite(_needs(PERSON_DETECT))
    data = tflite_bytes(graph)
    model, _ = _read(data)
    base = np.frombuffer(data, np.uint8).__array_interface__["data"][0]
    starts = []
    for i in range(model.BuffersLength()):
        buffer = model.Buffers(i)
        if buffer.DataLength():
            starts.append(buffer.DataAsNumpy().__array_interface__["data"][0] - base)
    constants = sum(t.is_const for t in graph.tensors.values())
    assert len(starts) == constants + 1  # plus the RESHAPE's shape operand
    assert all(start % 16 == 0 for start in starts)


def test_operator_versions_and_codes_for_int8():
    model, schema = _read(tflite_bytes(build_case(OP_CASES[0], 0)))  # one int8 conv
    code = model.OperatorCodes(0)
    assert (code.BuiltinCode(), code.Version()) == (schema.BuiltinOperator.CONV_2D, 3)
    expected = {"depthwise_m1": ("DEPTHWISE_CONV_2D", 3), "fully_connected": ("FULLY_CONNECTED", 4),
                "add": ("ADD", 2), "avgpool_3x3_s2_same": ("AVERAGE_POOL_2D", 2),
                "softmax": ("SOFTMAX", 2), "hardswish": ("HARD_SWISH", 1),
                "mean_same_quant": ("MEAN", 2), "logistic": ("LOGISTIC", 2)}
    for case in OP_CASES:
        if case.name in expected:
            model, _ = _read(tflite_bytes(build_case(case, 0)))
            code = model.OperatorCodes(0)
            name, version = expected[case.name]
            assert code.BuiltinCode() == getattr(schema.BuiltinOperator, name), case.name
            assert code.DeprecatedBuiltinCode() == min(code.BuiltinCode(), 127)
            assert code.Version() == version, case.name


def test_asymmetric_padding_becomes_pad_then_valid_conv():
    case = next(c for c in OP_CASES if c.name == "conv_asymmetric_pad_relu6")
    model, schema = _read(tflite_bytes(build_case(case, 0)))
    sub = model.Subgraphs(0)
    ops = [model.OperatorCodes(sub.Operators(i).OpcodeIndex()).BuiltinCode()
           for i in range(sub.OperatorsLength())]
    assert ops == [schema.BuiltinOperator.PAD, schema.BuiltinOperator.CONV_2D]
    pads = sub.Tensors(sub.Operators(0).Inputs(1))
    values = model.Buffers(pads.Buffer()).DataAsNumpy().view(np.int32).reshape(4, 2)
    assert values.tolist() == [[0, 0], [0, 2], [1, 0], [0, 0]]


def test_ops_without_tflite_form_are_refused(tmp_path):
    x = ir.Tensor("x", (1, 4, 4, 2), "float32")
    y = ir.Tensor("y", (1, 4, 4, 2), "float32")
    stats = {n: ir.Tensor(n, (2,), "float32", np.ones(2, np.float32))
             for n in ("g", "b", "m", "v")}
    graph = ir.Graph("bn", {"x": x, "y": y, **stats},
                     [ir.Node("bn", ir.BatchNorm(1e-5), ["x", "g", "b", "m", "v"], ["y"])],
                     ["x"], ["y"])
    with pytest.raises(UserError, match="BatchNorm has no TFLite form"):
        write_tflite(graph, tmp_path / "bn.tflite")
    assert not (tmp_path / "bn.tflite").exists()

    qx = ir.Tensor("x", (1, 5, 5, 2), "int8", None, ir.QuantParams.per_tensor(0.1, 0))
    qy = ir.Tensor("y", (1, 3, 2, 2), "int8", None, ir.QuantParams.per_tensor(0.1, 0))
    pool = ir.AveragePool2D((3, 3), (2, 2), ir.Padding(1, 0, 0, 0))
    graph = ir.Graph("pool", {"x": qx, "y": qy}, [ir.Node("pool", pool, ["x"], ["y"])],
                     ["x"], ["y"])
    with pytest.raises(UserError, match="neither TF 'SAME' nor 'VALID'"):
        write_tflite(graph, tmp_path / "pool.tflite")
