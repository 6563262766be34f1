"""Reading ONNX files for the frontends: validation, a static batch of 1, shape inference
and folding of the small constant chains (Shape, Gather, Concat, Unsqueeze, ...) that
exporters put in front of Reshape and Slice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mbgen.errors import UserError

try:  # onnx is an optional dependency: only the ONNX frontend needs it
    import onnx
    from onnx import numpy_helper
except ImportError:  # pragma: no cover - exercised only without onnx installed
    onnx = None

MIN_OPSET = 9        # BatchNormalization lost its 'spatial' attribute in opset 9


def _read_model(path: Path) -> "onnx.ModelProto":
    if onnx is None:
        raise UserError("reading ONNX models needs the 'onnx' package: pip install onnx")
    if not path.is_file():
        raise UserError(f"ONNX model {str(path)!r} does not exist or is not a file")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - any parser/checker failure means a bad file
        raise UserError(f"cannot read ONNX model {str(path)!r}: {_first_line(exc)}") from None
    if len(model.graph.node) == 0:
        raise UserError(f"ONNX model {str(path)!r} has no nodes")
    opset = _default_opset(model)
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise UserError(f"ONNX opset {opset} of {str(path)!r} is unsupported "
                        f"(mbgen reads opsets {MIN_OPSET} to {newest})")
    return model


def _tensor_value(tensor: "onnx.TensorProto", label: str) -> np.ndarray:
    """A TensorProto's array; a damaged one (dims vs data, unknown type) is the user's error."""
    try:
        return numpy_helper.to_array(tensor)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise UserError(f"ONNX {label} cannot be read ({_first_line(exc)}): "
                        "the file is damaged") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _default_opset(model: "onnx.ModelProto") -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 1


def _graph_inputs(graph: "onnx.GraphProto") -> list["onnx.ValueInfoProto"]:
    """Real inputs: old exporters also list every initializer as a graph input."""
    initializers = {init.name for init in graph.initializer}
    return [vi for vi in graph.input if vi.name not in initializers]


def _with_batch_one(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """A copy whose input has batch 1 and no stale shape annotations; UserError if dynamic."""
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    graph = model_copy.graph
    inputs = _graph_inputs(graph)
    if len(inputs) != 1:
        names = ", ".join(repr(vi.name) for vi in inputs) or "none"
        raise UserError(f"ONNX model must have exactly one input, it has {names}")
    vi = inputs[0]
    tensor_type = vi.type.tensor_type
    if tensor_type.elem_type != onnx.TensorProto.FLOAT:
        dtype = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
        raise UserError(f"ONNX model input {vi.name!r} is {dtype}; mbgen needs a float32 input")
    if not tensor_type.HasField("shape"):
        raise UserError(f"ONNX model input {vi.name!r} has no shape")
    for axis, dim in enumerate(tensor_type.shape.dim):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            if axis == 0 and dim.dim_value != 1:
                raise UserError(f"ONNX model input {vi.name!r} has batch size {dim.dim_value}; "
                                "mbgen compiles batch 1")
            continue
        if axis == 0:  # a symbolic batch dimension becomes 1
            dim.Clear()
            dim.dim_value = 1
            continue
        label = dim.dim_param or "?"
        raise UserError(f"ONNX model input {vi.name!r} has a dynamic dimension {label!r} "
                        f"(axis {axis}); mbgen needs static shapes")
    # Shapes recorded by the exporter may still name a symbolic batch: infer afresh.
    del graph.value_info[:]
    for out in graph.output:
        out.type.tensor_type.ClearField("shape")
    return model_copy


def _infer(model: "onnx.ModelProto") -> "onnx.ModelProto":
    from mbgen.frontends import onnx_quantized_shapes  # com.microsoft ops, for shapes only
    model = onnx_quantized_shapes.for_inference(model)
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True,
                                                 data_prop=True)
    except Exception as exc:  # noqa: BLE001 - inference errors are inconsistent models
        raise UserError(f"ONNX shape inference failed: {_first_line(exc)}") from None


def _shapes_of(model: "onnx.ModelProto") -> dict[str, tuple[int, ...] | None]:
    """Inferred shape of every value; None where any dimension is not a known number."""
    shapes: dict[str, tuple[int, ...] | None] = {}
    graph = model.graph
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        tensor_type = vi.type.tensor_type
        if not tensor_type.HasField("shape"):
            shapes.setdefault(vi.name, None)
            continue
        dims = tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
        else:
            shapes.setdefault(vi.name, None)
    return shapes


def _static_shapes(model: "onnx.ModelProto") -> dict[str, tuple[int, ...] | None]:
    return _shapes_of(_infer(model))


# ----------------------------------------------------------------------------- attributes


def _node_label(node: "onnx.NodeProto", index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


def _attrs(node: "onnx.NodeProto") -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _ints(value: object) -> tuple[int, ...]:
    return tuple(int(v) for v in value)  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- folding


def _constant_node_value(node: "onnx.NodeProto", label: str) -> np.ndarray:
    attrs = _attrs(node)
    if "value" in attrs:
        return _tensor_value(attrs["value"], label)
    if "value_float" in attrs:
        return np.array(attrs["value_float"], dtype=np.float32)
    if "value_floats" in attrs:
        return np.array(attrs["value_floats"], dtype=np.float32)
    if "value_int" in attrs:
        return np.array(attrs["value_int"], dtype=np.int64)
    if "value_ints" in attrs:
        return np.array(attrs["value_ints"], dtype=np.int64)
    raise UserError(f"ONNX Constant node {label!r} holds an unsupported kind of value "
                    f"({', '.join(attrs) or 'none'})")


def _axes_operand(node: "onnx.NodeProto",
                  values: list[np.ndarray | None]) -> tuple[int, ...] | None:
    """Axes from the attribute (opset < 13/18) or the second input (later opsets)."""
    attrs = _attrs(node)
    if "axes" in attrs:
        return _ints(attrs["axes"])
    if len(values) > 1 and values[1] is not None:
        return _ints(values[1].reshape(-1))
    return None


def _reshape_target(in_shape: tuple[int, ...], spec: np.ndarray,
                    allow_zero: bool) -> tuple[int, ...]:
    """ONNX Reshape semantics: 0 copies the input dimension (unless allowzero), -1 infers."""
    dims = [int(d) for d in spec.reshape(-1)]
    out = [in_shape[i] if d == 0 and not allow_zero else d for i, d in enumerate(dims)]
    if out.count(-1) == 1:
        known = int(np.prod([d for d in out if d != -1], dtype=np.int64))
        total = int(np.prod(in_shape, dtype=np.int64))
        out[out.index(-1)] = total // known if known else 0
    return tuple(out)


def _slice(data: np.ndarray, operands: list[np.ndarray | None]) -> np.ndarray:
    starts, ends = operands[1].reshape(-1), operands[2].reshape(-1)
    axes = operands[3].reshape(-1) if len(operands) > 3 and operands[3] is not None \
        else np.arange(len(starts))
    steps = operands[4].reshape(-1) if len(operands) > 4 and operands[4] is not None \
        else np.ones(len(starts), dtype=np.int64)
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        # numpy clamps out-of-range bounds just as ONNX does (INT64_MAX = to the end)
        index[int(axis)] = slice(int(start), int(end), int(step))
    return data[tuple(index)]


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer):
        return (np.trunc(a / b)).astype(a.dtype)  # ONNX integer Div truncates
    return a / b


def _fold_node(node: "onnx.NodeProto", label: str, values: list[np.ndarray | None],
               input_shapes: list[tuple[int, ...] | None]) -> np.ndarray | None:
    """The constant output of a foldable node, or None when it cannot be folded (yet)."""
    op = node.op_type
    attrs = _attrs(node)
    if op == "Constant":
        return _constant_node_value(node, label)
    if op == "Shape":
        shape = input_shapes[0]
        if shape is None:
            return None
        start, end = int(attrs.get("start", 0)), attrs.get("end")
        dims = shape[start:] if end is None else shape[start:int(end)]
        return np.array(dims, dtype=np.int64)
    if op == "ConstantOfShape":
        if values[0] is None:
            return None
        fill = _tensor_value(attrs["value"], label) if "value" in attrs \
            else np.zeros(1, dtype=np.float32)
        return np.full(_ints(values[0].reshape(-1)), fill.reshape(-1)[0], dtype=fill.dtype)
    # every other foldable op needs all of its (non-empty) inputs known
    if not values or any(v is None for name, v in zip(node.input, values) if name):
        return None
    data = values[0]
    if op in ("Identity", "Dropout"):
        return data
    if op == "Cast":
        return data.astype(onnx.helper.tensor_dtype_to_np_dtype(int(attrs["to"])))
    if op == "Gather":
        return np.take(data, values[1].astype(np.int64), axis=int(attrs.get("axis", 0)))
    if op == "Concat":
        return np.concatenate([np.atleast_1d(v) for v in values], axis=int(attrs["axis"]))
    if op == "Unsqueeze":
        axes = _axes_operand(node, values) or ()
        rank = data.ndim + len(axes)
        out = data
        for axis in sorted(a % rank for a in axes):
            out = np.expand_dims(out, axis)
        return out
    if op == "Squeeze":
        axes = _axes_operand(node, values)
        if axes is None:
            return np.squeeze(data)
        return np.squeeze(data, axis=tuple(a % data.ndim for a in axes))
    if op == "Reshape":
        target = _reshape_target(data.shape, values[1], bool(attrs.get("allowzero", 0)))
        return data.reshape(target)
    if op == "Slice":
        return _slice(data, values)
    if op == "Add":
        return np.add(data, values[1]).astype(data.dtype)
    if op == "Sub":
        return np.subtract(data, values[1]).astype(data.dtype)
    if op == "Mul":
        return np.multiply(data, values[1]).astype(data.dtype)
    if op == "Div":
        return _divide(data, values[1])
    return None


_FOLDABLE = frozenset({"Constant", "Shape", "ConstantOfShape", "Identity", "Dropout", "Cast",
                       "Gather", "Concat", "Unsqueeze", "Squeeze", "Reshape", "Slice",
                       "Add", "Sub", "Mul", "Div"})


def _fold_constants(model: "onnx.ModelProto") -> tuple["onnx.ModelProto", dict[str, np.ndarray]]:
    """Evaluate every node whose inputs are all known; return the rest and all constants.

    Shape nodes need inferred shapes, which may only become known once an earlier Reshape's
    target is folded, so inference and folding alternate until nothing changes.
    """
    graph = model.graph
    constants = {init.name: _tensor_value(init, f"initializer {init.name!r}")
                 for init in graph.initializer}
    remaining = [(_node_label(n, i), n) for i, n in enumerate(graph.node)]
    while True:
        shapes = _shapes_of(_infer(_rebuild(model, [n for _, n in remaining], constants)))
        kept: list[tuple[str, "onnx.NodeProto"]] = []
        for label, node in remaining:
            value = None
            if node.domain in ("", "ai.onnx") and node.op_type in _FOLDABLE \
                    and _only_first_output_used(node):
                values = [constants.get(name) if name else None for name in node.input]
                value = _fold_node(node, label, values, [shapes.get(name) for name in node.input])
            if value is None:
                kept.append((label, node))
            else:
                constants[node.output[0]] = np.asarray(value)
        if len(kept) == len(remaining):
            break
        remaining = kept
    return _rebuild(model, [n for _, n in remaining], constants), constants


def _only_first_output_used(node: "onnx.NodeProto") -> bool:
    return all(not name for name in node.output[1:])


def _rebuild(model: "onnx.ModelProto", nodes: list["onnx.NodeProto"],
             constants: dict[str, np.ndarray]) -> "onnx.ModelProto":
    """The model with ``nodes`` only and the constants they read as initializers."""
    used = {name for node in nodes for name in node.input}
    used.update(out.name for out in model.graph.output)
    initializers = [numpy_helper.from_array(np.asarray(value), name)
                    for name, value in constants.items() if name in used]
    try:
        graph_name = str(model.graph.name)
    except UnicodeDecodeError:
        raise UserError("ONNX graph name is not valid UTF-8: the file is damaged") from None
    graph = onnx.helper.make_graph(nodes, graph_name, _graph_inputs(model.graph),
                                   list(model.graph.output), initializer=initializers)
    return onnx.helper.make_model(graph, opset_imports=list(model.opset_import),
                                  ir_version=model.ir_version,
                                  producer_name=model.producer_name,
                                  producer_version=model.producer_version)
