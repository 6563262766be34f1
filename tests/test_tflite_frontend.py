"""The TFLite frontend: real files read as stored, bad files refused with one-line UserErrors.

Expected facts come from ``shared/models/MODELS.md`` (measured with other tools) and from a
second, independent reading of the same flatbuffer with the schema bindings that ship in
tflite-micro, never from the frontend itself.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mbgen import ir
from mbgen.errors import UserError
from mbgen.frontends.tflite_frontend import load_tflite

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODELS = SHARED / "models"
PERSON_DETECT = MODELS / "person_detect.tflite"
MOBILENET_FLOAT = MODELS / "mobilenet_v1_0.25_128.tflite"
MOBILENET_UINT8 = MODELS / "mobilenet_v1_0.25_128_quant.tflite"


def _needs(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is missing (shared models not present)")
    return path


def _schema():
    return pytest.importorskip(
        "tflite_micro.tensorflow.lite.micro.python.schema_py_generated",
        reason="needs the tflite-micro schema bindings")


def _other_reading(path: Path):
    """The same file unpacked by tflite-micro's Object API: an independent view."""
    return _schema().ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)


def _mutated(path: Path, edit, tmp_path: Path) -> Path:
    """A copy of ``path`` with ``edit(ModelT)`` applied, re-serialised with the schema."""
    import flatbuffers
    model = _other_reading(path)
    edit(model)
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out = tmp_path / f"mutated_{path.name}"
    out.write_bytes(bytes(builder.Output()))
    return out


def _op_counts(graph: ir.Graph) -> Counter:
    return Counter(ir.op_name(n.op) for n in graph.nodes)


# ----------------------------------------------------------------------------- person_detect


@pytest.fixture(scope="module")
def person_detect() -> ir.Graph:
    return load_tflite(_needs(PERSON_DETECT))


def test_person_detect_structure_matches_models_md(person_detect):
    g = person_detect
    ir.verify(g)
    assert g.is_quantized
    assert _op_counts(g) == {"DepthwiseConv2D": 14, "Conv2D": 14, "AveragePool2D": 1,
                             "Reshape": 1, "Softmax": 1}
    x = g.tensors[g.inputs[0]]
    assert (x.name, x.shape, x.dtype) == ("input", (1, 96, 96, 1), "int8")
    assert x.quant.scale.dtype == np.float32
    assert x.quant.scale[0] == np.float32(0.007843137718737125)
    assert x.quant.scalar_zero_point == -1
    y = g.tensors[g.outputs[0]]
    assert (y.name, y.shape) == ("MobilenetV1/Predictions/Reshape_1", (1, 2))
    assert (y.quant.scalar_scale, y.quant.scalar_zero_point) == (0.00390625, -128)
    consts = [t for t in g.tensors.values() if t.is_const]
    assert sum(t.size for t in consts if t.dtype == "int8") == 207_968
    assert sum(t.size for t in consts if t.dtype == "int32") == 2_740 - 2  # minus reshape shape


def test_person_detect_layers(person_detect):
    nodes = person_detect.nodes
    first = nodes[0].op
    assert isinstance(first, ir.DepthwiseConv2D)
    assert first.depth_multiplier == 8 and first.stride == (2, 2)
    assert first.padding == ir.Padding(0, 1, 0, 1)  # TF SAME on 96 at stride 2: extra at end
    convs = [n for n in nodes if isinstance(n.op, (ir.Conv2D, ir.DepthwiseConv2D))]
    assert all(n.op.activation is ir.Activation.RELU6 for n in convs[:-1])
    assert convs[-1].op.activation is ir.Activation.NONE
    depthwise = [n for n in convs if isinstance(n.op, ir.DepthwiseConv2D)]
    assert sum(n.op.stride == (2, 2) for n in depthwise) == 5
    assert all(n.op.depth_multiplier == 1 for n in depthwise[1:])
    pool = next(n.op for n in nodes if isinstance(n.op, ir.AveragePool2D))
    assert (pool.kernel, pool.stride, pool.padding) == ((3, 3), (2, 2), ir.Padding())


def test_person_detect_quantisation_exactly_as_stored(person_detect):
    model = _other_reading(_needs(PERSON_DETECT))
    sub = model.subgraphs[0]
    seen = 0
    for t in sub.tensors:
        name = t.name.decode()
        if name not in person_detect.tensors or t.quantization is None:
            continue
        ours = person_detect.tensors[name].quant
        theirs = t.quantization
        assert np.array_equal(ours.scale, np.asarray(theirs.scale, np.float32)), name
        assert np.array_equal(ours.zero_point, np.asarray(theirs.zeroPoint)), name
        data = model.buffers[t.buffer].data
        if data is not None and len(data):
            assert person_detect.tensors[name].data.tobytes() == bytes(data), name
        seen += 1
    assert seen >= 87


def test_per_channel_axes_and_one_dimensional_bias_quirk(person_detect):
    g = person_detect
    for node in g.nodes:
        if isinstance(node.op, (ir.Conv2D, ir.DepthwiseConv2D)):
            w, b = g.tensors[node.inputs[1]], g.tensors[node.inputs[2]]
            channels = w.shape[0] if isinstance(node.op, ir.Conv2D) else w.shape[3]
            expected_axis = 0 if isinstance(node.op, ir.Conv2D) else 3
            if w.quant.scale.size > 1:
                assert w.quant.axis == expected_axis
            assert np.all(w.quant.zero_point == 0)
            # The file says quantized_dimension=3 for the 1-D depthwise biases; TFLM ignores it.
            assert b.shape == (channels,) and b.quant.axis in (0, None)
            assert b.dtype == "int32"


# ----------------------------------------------------------------------------- float and uint8


def test_float_mobilenet_loads_as_float_graph_and_runs_like_tflm():
    from mbgen.float_interp import run_float
    from mbgen.images import load_image
    g = load_tflite(_needs(MOBILENET_FLOAT))
    ir.verify(g)
    assert not g.is_quantized
    assert all(t.dtype == "float32" and t.quant is None for t in g.tensors.values())
    assert _op_counts(g) == {"Conv2D": 15, "DepthwiseConv2D": 13, "AveragePool2D": 1,
                             "Reshape": 1, "Softmax": 1}
    assert sum(t.size for t in g.tensors.values() if t.is_const) == 467_593
    image = _needs(SHARED / "images" / "grace_hopper.bmp")
    probabilities = run_float(g, load_image(image, (1, 128, 128, 3), "minus1_1"))[g.outputs[0]]
    # MODELS.md (TFLM float): top-1 401 "academic gown" with softmax 0.3321.
    assert int(np.argmax(probabilities)) == 401
    assert float(probabilities.max()) == pytest.approx(0.3321, abs=5e-5)


def test_uint8_legacy_model_loads_with_tflite_uint8_arithmetic():
    """uint8 tensors are held as int8 (minus 128); convolutions and the pool keep TFLite's
    uint8 arithmetic (bit-exact with LiteRT in test_tflite_legacy_uint8.py)."""
    g = load_tflite(_needs(MOBILENET_UINT8))
    assert all(t.dtype in ("int8", "int32") for t in g.tensors.values())
    uint8_layers = [n for n in g.nodes
                    if ir.requantization_of(n.op) is ir.Requantization.TFLITE_UINT8]
    assert len(uint8_layers) == 29
    first = g.tensors[g.nodes[0].inputs[1]]
    assert first.quant.zero_point[0] != 0  # uint8 weights keep their zero point


def test_int8_model_with_uint8_interface_gets_its_own_message(tmp_path):
    def uint8_input(model):
        sub = model.subgraphs[0]
        sub.tensors[sub.inputs[0]].type = 3  # UINT8
    with pytest.raises(UserError, match="int8 models with a uint8 interface"):
        load_tflite(_mutated(_needs(PERSON_DETECT), uint8_input, tmp_path))


def test_float16_weights_behind_dequantize_become_float32_constants(tmp_path):
    schema = _schema()
    weights_name = b"MobilenetV1/Conv2d_0/weights"

    def float16_weights(model):
        sub = model.subgraphs[0]
        index = next(i for i, t in enumerate(sub.tensors) if t.name == weights_name)
        weights = sub.tensors[index]
        halves = np.frombuffer(model.buffers[weights.buffer].data.tobytes(),
                               np.float32).astype(np.float16)
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(halves.tobytes(), np.uint8)
        model.buffers.append(buffer)
        half = schema.TensorT()
        half.name, half.type, half.shape = b"weights_fp16", 1, weights.shape
        half.buffer = len(model.buffers) - 1
        sub.tensors.append(half)
        weights.buffer = 0  # now produced by the DEQUANTIZE below
        code = schema.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.DEQUANTIZE
        code.version = 3
        model.operatorCodes.append(code)
        op = schema.OperatorT()
        op.opcodeIndex = len(model.operatorCodes) - 1
        op.inputs, op.outputs = [len(sub.tensors) - 1], [index]
        sub.operators.insert(0, op)

    original = load_tflite(_needs(MOBILENET_FLOAT))
    g = load_tflite(_mutated(MOBILENET_FLOAT, float16_weights, tmp_path))
    assert len(g.nodes) == len(original.nodes) == 31  # the DEQUANTIZE is folded away
    ours = g.tensors[weights_name.decode()].data
    expected = original.tensors[weights_name.decode()].data.astype(np.float16).astype(np.float32)
    assert ours.dtype == np.float32 and np.array_equal(ours, expected)


# ----------------------------------------------------------------------------- refusals


def test_missing_file_and_non_tflite_bytes(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_tflite(tmp_path / "absent.tflite")
    other = tmp_path / "model.tflite"
    other.write_bytes(b"\x08\x07\x12\x04onnx" + bytes(100))
    with pytest.raises(UserError, match="not a TFLite model"):
        load_tflite(other)


def _builtin_code(model, name: str) -> int:
    return getattr(_schema().BuiltinOperator, name)


def test_unsupported_builtin_op_is_named_with_index_and_output(tmp_path):
    def to_max_pool(model):  # the code of operator 0 (a depthwise conv) becomes MAX_POOL_2D
        code = model.operatorCodes[model.subgraphs[0].operators[0].opcodeIndex]
        code.builtinCode = code.deprecatedBuiltinCode = _builtin_code(model, "MAX_POOL_2D")
    path = _mutated(_needs(PERSON_DETECT), to_max_pool, tmp_path)
    with pytest.raises(UserError) as info:
        load_tflite(path)
    message = str(info.value)
    assert "MAX_POOL_2D" in message and "operator 0" in message
    assert "MobilenetV1/MobilenetV1/Conv2d_0/Relu6" in message
    assert "\n" not in message


def test_custom_op_is_named(tmp_path):
    def to_custom(model):
        code = model.operatorCodes[model.subgraphs[0].operators[0].opcodeIndex]
        code.builtinCode = code.deprecatedBuiltinCode = _builtin_code(model, "CUSTOM")
        code.customCode = "TFLite_Detection_PostProcess"
    with pytest.raises(UserError, match="custom op 'TFLite_Detection_PostProcess'"):
        load_tflite(_mutated(_needs(PERSON_DETECT), to_custom, tmp_path))


def test_unsupported_fused_activation(tmp_path):
    def tanh_first_layer(model):
        model.subgraphs[0].operators[0].builtinOptions.fusedActivationFunction = 4  # TANH
    with pytest.raises(UserError, match="fused activation TANH is not supported"):
        load_tflite(_mutated(_needs(PERSON_DETECT), tanh_first_layer, tmp_path))


def test_inconsistent_output_shape_is_a_user_error(tmp_path):
    def wrong_stride(model):
        model.subgraphs[0].operators[0].builtinOptions.strideW = 1
    with pytest.raises(UserError, match="output shape .* does not match"):
        load_tflite(_mutated(_needs(PERSON_DETECT), wrong_stride, tmp_path))


def test_hybrid_model_is_refused(tmp_path):
    def float_activations(model):
        sub = model.subgraphs[0]
        for t in sub.tensors:
            if model.buffers[t.buffer].data is None and t.type == 9:  # int8 activations
                t.type, t.quantization = 0, None
    with pytest.raises(UserError, match="hybrid"):
        load_tflite(_mutated(_needs(PERSON_DETECT), float_activations, tmp_path))


# ----------------------------------------------------------------------------- flattening FC


def test_fully_connected_on_a_4d_input_gets_an_explicit_flatten(tmp_path):
    """TFLite flattens FC inputs implicitly; the IR gets a Reshape, and the result still runs
    bit-exactly like TFLM on the same file."""
    pytest.importorskip("tflite_micro.python.tflite_micro.runtime")
    from mbgen.export.tflite_writer import write_tflite
    from mbgen.reference import run_int8
    from mbgen.tflm import run_tflm

    rng = np.random.default_rng(3)
    x = ir.Tensor("x", (1, 12), "int8", None, ir.QuantParams.per_tensor(0.05, 3))
    w = ir.Tensor("w", (5, 12), "int8", rng.integers(-127, 128, (5, 12)).astype(np.int8),
                  ir.QuantParams.per_tensor(0.01, 0))
    b = ir.Tensor("b", (5,), "int32", rng.integers(-500, 500, 5).astype(np.int32),
                  ir.QuantParams.per_tensor(float(np.float32(0.05) * np.float32(0.01)), 0))
    y = ir.Tensor("y", (1, 5), "int8", None, ir.QuantParams.per_tensor(0.08, -4))
    flat = write_tflite(ir.Graph("fc", {t.name: t for t in (x, w, b, y)},
                                 [ir.Node("fc", ir.FullyConnected(), ["x", "w", "b"], ["y"])],
                                 ["x"], ["y"]), tmp_path / "fc.tflite")

    def four_d_input(model):
        sub = model.subgraphs[0]
        sub.tensors[sub.inputs[0]].shape = np.array([1, 2, 2, 3], np.int32)
    path = _mutated(flat, four_d_input, tmp_path)
    g = load_tflite(path)
    assert [ir.op_name(n.op) for n in g.nodes] == ["Reshape", "FullyConnected"]
    assert g.tensors[g.inputs[0]].shape == (1, 2, 2, 3)
    value = rng.integers(-128, 128, (1, 2, 2, 3)).astype(np.int8)
    assert np.array_equal(run_int8(g, value)["y"], run_tflm(path, value))
