"""ONNX models to float IR graphs (NHWC, TFLite weight layouts).

The ONNX graph is NCHW; the IR is NHWC. Every rank-4 activation is therefore stored
transposed, and the frontend keeps track of how each activation's IR data is ordered
relative to its ONNX data (:class:`_Layout`):

* ``NHWC``  - rank 4, IR shape ``(N, H, W, C)`` for ONNX ``(N, C, H, W)``.
* ``PLAIN`` - any other rank, same shape and element order in both.
* ``CHW_FLAT`` - a ``(1, C*H*W)`` vector made by flattening a spatial NCHW tensor. In the IR
  it is flattened from NHWC, so its elements are in H, W, C order; a following Gemm/MatMul
  gets its weight columns permuted to match, and nothing else may read it.

Before conversion the model gets a static batch of 1, ONNX shape inference, and folding of
the small constant chains (Shape, Gather, Concat, Unsqueeze, ...) that exporters put in
front of Reshape. Two patterns are recognised: ``x * HardSigmoid(x)`` (how opsets < 14 spell
hard swish) and ``MatMul`` followed by a constant ``Add`` (a fully connected layer with bias).
Everything else maps one ONNX node to at most one IR node; passes fold BatchNorm and fuse
activations afterwards.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mbgen import ir
from mbgen.errors import UserError
from mbgen.frontends.hard_sigmoid import hard_sigmoid_layers
from mbgen.frontends.onnx_hard_activations import rewrite_hard_activations

try:  # onnx is an optional dependency: only this frontend needs it
    import onnx
    from onnx import numpy_helper
except ImportError:  # pragma: no cover - exercised only without onnx installed
    onnx = None

MIN_OPSET = 9        # BatchNormalization lost its 'spatial' attribute in opset 9
_INF = 3.0e38        # |bound| beyond this is 'no bound' (Clip's defaults are +-FLT_MAX)
_HARD_SIGMOID_ALPHA = 1.0 / 6.0   # torch's hardsigmoid: relu6(x + 3) / 6
_HARD_SIGMOID_BETA = 0.5


# ----------------------------------------------------------------------------- reading


def load_onnx(path: str | Path) -> ir.Graph:
    """Read an ONNX model file and return the equivalent float IR graph (NHWC, batch 1).

    Raises UserError for unreadable files, dynamic shapes and unsupported ops or attributes.
    """
    path = Path(path)
    model = _read_model(path)
    model = _with_batch_one(model)
    model, constants = _fold_constants(model)
    shapes = _static_shapes(model)
    from mbgen.frontends import onnx_quantized  # it subclasses this module's converter
    if onnx_quantized.is_quantized(model):
        graph = onnx_quantized.convert(model, constants, shapes, path.stem)
    else:
        model = rewrite_hard_activations(model, constants, _default_opset(model))
        graph = _Converter(model, constants, shapes, path.stem).convert()
    ir.verify(graph)
    return graph


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


# ----------------------------------------------------------------------------- layouts


class _Order(enum.Enum):
    NHWC = "nhwc"
    PLAIN = "plain"
    CHW_FLAT = "chw_flat"


@dataclass(frozen=True)
class _Layout:
    """How an activation's IR data relates to its ONNX data (see the module docstring)."""

    order: _Order
    onnx_shape: tuple[int, ...]
    chw: tuple[int, int, int] | None = None   # CHW_FLAT only: the flattened (C, H, W)

    @property
    def ir_shape(self) -> tuple[int, ...]:
        if self.order is _Order.NHWC:
            n, c, h, w = self.onnx_shape
            return (n, h, w, c)
        return self.onnx_shape

    @property
    def same_order_as_onnx(self) -> bool:
        """True when reading the IR data row-major visits elements in ONNX order."""
        if self.order is _Order.NHWC:
            _, c, h, w = self.onnx_shape
            return c == 1 or h * w == 1
        if self.order is _Order.CHW_FLAT:
            return False
        return True


def _layout_for(shape: tuple[int, ...]) -> _Layout:
    return _Layout(_Order.NHWC if len(shape) == 4 else _Order.PLAIN, shape)


# ----------------------------------------------------------------------------- conversion


@dataclass(frozen=True)
class _OnnxNode:
    """An ONNX node with a unique, never-empty name for IR nodes and messages."""

    proto: "onnx.NodeProto"
    label: str

    @property
    def op_type(self) -> str:
        return self.proto.op_type

    @property
    def inputs(self) -> list[str]:
        return list(self.proto.input)

    @property
    def attrs(self) -> dict[str, object]:
        return _attrs(self.proto)

    def where(self) -> str:
        return f"(node {self.label!r})"


class _Converter:
    """One pass over the folded ONNX graph, emitting IR tensors and nodes in order."""

    def __init__(self, model: "onnx.ModelProto", constants: dict[str, np.ndarray],
                 shapes: dict[str, tuple[int, ...] | None], name: str) -> None:
        self.model = model
        self.opset = _default_opset(model)
        self.constants = constants
        self.shapes = shapes
        self.name = name
        self.tensors: dict[str, ir.Tensor] = {}
        self.nodes: list[ir.Node] = []
        self.layouts: dict[str, _Layout] = {}
        self.ir_names: dict[str, str] = {}  # ONNX value name -> IR tensor name
        self.node_names: set[str] = set()
        self.onnx_nodes = self._labelled_nodes()
        self.consumers = self._consumer_map()
        self.producers = {out: n for n in self.onnx_nodes for out in n.proto.output if out}
        # Recognised patterns: Mul label -> the x of x * HardSigmoid(x); MatMul label -> its
        # bias Add. The HardSigmoid and Add nodes themselves are then skipped.
        self.hard_swish_of: dict[str, str] = {}
        self.bias_add_of: dict[str, _OnnxNode] = {}
        self.absorbed: set[str] = set()
        self.held_back: dict[str, object] = {}  # channel shuffle's 5-D views (onnx_graph_ops)
        self._find_patterns()

    # ------------------------------------------------------------------ bookkeeping

    def _labelled_nodes(self) -> list[_OnnxNode]:
        seen: set[str] = set()
        nodes = []
        for index, proto in enumerate(self.model.graph.node):
            label = _node_label(proto, index)
            while label in seen:
                label = f"{label}_{index}"
            seen.add(label)
            nodes.append(_OnnxNode(proto, label))
        return nodes

    def _consumer_map(self) -> dict[str, list[_OnnxNode]]:
        consumers: dict[str, list[_OnnxNode]] = {}
        for node in self.onnx_nodes:
            for name in node.inputs:
                if name:
                    consumers.setdefault(name, []).append(node)
        return consumers

    def _find_patterns(self) -> None:
        for node in self.onnx_nodes:
            if node.proto.domain not in ("", "ai.onnx"):
                continue
            if node.op_type == "Mul" and len(node.inputs) == 2:
                a, b = node.inputs
                for x, gate in ((a, b), (b, a)):
                    if self._is_hard_swish_gate(gate, x):
                        self.hard_swish_of[node.label] = x
                        self.absorbed.add(self.producers[gate].label)
                        break
            elif node.op_type == "MatMul":
                add = self._bias_add(node)
                if add is not None:
                    self.bias_add_of[node.label] = add
                    self.absorbed.add(add.label)

    def _is_hard_swish_gate(self, value: str, x: str) -> bool:
        """True when ``value`` is HardSigmoid(x) with torch's constants, read by one node."""
        producer = self.producers.get(value)
        if producer is None or producer.op_type != "HardSigmoid" or producer.inputs[0] != x:
            return False
        attrs = producer.attrs
        alpha = float(attrs.get("alpha", 0.2))
        beta = float(attrs.get("beta", 0.5))
        return (abs(alpha - _HARD_SIGMOID_ALPHA) < 1e-6 and beta == _HARD_SIGMOID_BETA
                and self._single_consumer(value) is not None)

    def _bias_add(self, node: _OnnxNode) -> _OnnxNode | None:
        """The Add of a constant vector right after a MatMul (a fully connected bias)."""
        output = node.proto.output[0]
        add = self._single_consumer(output)
        weight = self.constants.get(node.inputs[1])
        if add is None or add.op_type != "Add" or weight is None or weight.ndim != 2:
            return None
        others = [v for v in add.inputs if v != output]
        if len(others) != 1 or others[0] not in self.constants:
            return None
        if self.constants[others[0]].size != weight.shape[1]:
            return None
        return add

    def _single_consumer(self, value: str) -> _OnnxNode | None:
        users = self.consumers.get(value, [])
        graph_outputs = {o.name for o in self.model.graph.output}
        if len(users) == 1 and value not in graph_outputs:
            return users[0]
        return None

    def _unique_tensor_name(self, wanted: str) -> str:
        name, suffix = wanted, 1
        while name in self.tensors:
            name = f"{wanted}_{suffix}"
            suffix += 1
        return name

    def _const(self, wanted: str, data: np.ndarray) -> str:
        name = self._unique_tensor_name(wanted)
        data = np.ascontiguousarray(data, dtype=np.float32)
        self.tensors[name] = ir.Tensor(name, tuple(data.shape), "float32", data)
        return name

    def _activation(self, onnx_name: str, layout: _Layout) -> str:
        name = self._unique_tensor_name(onnx_name)
        self.ir_names[onnx_name] = name
        self.layouts[onnx_name] = layout
        self.tensors[name] = ir.Tensor(name, layout.ir_shape, "float32")
        return name

    def _unique_node_name(self, wanted: str) -> str:
        name, suffix = wanted, 1
        while name in self.node_names:
            name = f"{wanted}_{suffix}"
            suffix += 1
        self.node_names.add(name)
        return name

    def _emit(self, node: _OnnxNode, op: ir.OpAttrs, inputs: list[str], output: str,
              layout: _Layout) -> None:
        out_name = self._activation(output, layout)
        self.nodes.append(ir.Node(self._unique_node_name(node.label), op, inputs, [out_name]))

    def _shape(self, value: str, node: _OnnxNode) -> tuple[int, ...]:
        shape = self.shapes.get(value)
        if shape is None:
            raise UserError(f"cannot infer a static shape for ONNX tensor {value!r} "
                            f"{node.where()}; mbgen needs static shapes")
        return shape

    def _input(self, node: _OnnxNode, index: int) -> tuple[str, _Layout]:
        """An activation input of ``node``: its IR name and layout."""
        value = node.inputs[index]
        if value in self.constants:
            raise UserError(f"ONNX {node.op_type} {node.where()} reads the constant "
                            f"{value!r} where mbgen expects an activation")
        if value not in self.layouts:
            raise UserError(f"ONNX {node.op_type} {node.where()} reads {value!r}, "
                            "which no supported node produces")
        return self.ir_names[value], self.layouts[value]

    def _spatial_input(self, node: _OnnxNode, index: int = 0) -> tuple[str, _Layout]:
        name, layout = self._input(node, index)
        if layout.order is not _Order.NHWC:
            raise UserError(f"ONNX {node.op_type} {node.where()} needs a rank-4 NCHW input, "
                            f"got shape {layout.onnx_shape}")
        return name, layout

    def _constant(self, node: _OnnxNode, index: int, what: str) -> np.ndarray:
        if index >= len(node.inputs) or not node.inputs[index]:
            raise UserError(f"ONNX {node.op_type} {node.where()} has no {what}")
        value = node.inputs[index]
        if value not in self.constants:
            raise UserError(f"ONNX {node.op_type} {node.where()}: the {what} must be a "
                            f"constant (initializer), {value!r} is computed at run time")
        return self.constants[value]

    def _optional_constant(self, node: _OnnxNode, index: int, what: str) -> np.ndarray | None:
        if index >= len(node.inputs) or not node.inputs[index]:
            return None
        return self._constant(node, index, what)

    def _output_layout(self, node: _OnnxNode, index: int = 0) -> _Layout:
        return _layout_for(self._shape(node.proto.output[index], node))

    def _check_single_output(self, node: _OnnxNode) -> None:
        for extra in node.proto.output[1:]:
            if extra and (extra in self.consumers or
                          extra in {o.name for o in self.model.graph.output}):
                raise UserError(f"ONNX {node.op_type} {node.where()}: its extra output "
                                f"{extra!r} is used, which mbgen does not support")

    # ------------------------------------------------------------------ driver

    def _declare_graph_input(self) -> str:
        """The model's float input becomes the graph's "input" tensor; returns its ONNX name."""
        graph_input = _graph_inputs(self.model.graph)[0]
        shape = self.shapes.get(graph_input.name)
        if shape is None or len(shape) not in (2, 4):
            raise UserError(f"ONNX model input {graph_input.name!r} must be NCHW (rank 4) or "
                            f"(1, N), got shape {shape}")
        self.tensors["input"] = ir.Tensor("input", _layout_for(shape).ir_shape, "float32")
        self.ir_names[graph_input.name] = "input"
        self.layouts[graph_input.name] = _layout_for(shape)
        return graph_input.name

    def convert(self) -> ir.Graph:
        self._declare_graph_input()

        for node in self.onnx_nodes:
            if node.label in self.absorbed:
                continue
            self._convert_node(node)

        outputs = []
        for out in self.model.graph.output:
            if out.name not in self.layouts:
                raise UserError(f"ONNX model output {out.name!r} is not computed from the "
                                "input (a constant output?)")
            if self.layouts[out.name].order is _Order.CHW_FLAT:
                raise UserError(f"ONNX model output {out.name!r} has shape "
                                f"{self.layouts[out.name].onnx_shape} in NCHW order, which "
                                "mbgen cannot produce without a transpose")
            outputs.append(self.ir_names[out.name])
        used = {name for n in self.nodes for name in n.inputs}
        tensors = {k: t for k, t in self.tensors.items()
                   if not t.is_const or k in used}
        metadata = {"source": "onnx", "opset": str(self.opset),
                    "producer": f"{self.model.producer_name} {self.model.producer_version}".strip()}
        return ir.Graph(self.name, tensors, self.nodes, ["input"], outputs, metadata)

    def _convert_node(self, node: _OnnxNode) -> None:
        domain = node.proto.domain
        from mbgen.frontends import onnx_graph_ops  # Concat, Split, MaxPool, shuffle...
        if domain in ("", "ai.onnx") and onnx_graph_ops.convert(self, node):
            return
        converter = _CONVERTERS.get(node.op_type) if domain in ("", "ai.onnx") else None
        if converter is None:
            op = node.op_type if domain in ("", "ai.onnx") else f"{domain}.{node.op_type}"
            raise UserError(f"unsupported ONNX op {op!r} (node {node.label!r})")
        self._check_single_output(node)
        converter(self, node)

    # ------------------------------------------------------------------ convolutions

    def _window_padding(self, node: _OnnxNode, in_hw: tuple[int, int], kernel: tuple[int, int],
                        stride: tuple[int, int], dilation: tuple[int, int]) -> ir.Padding:
        attrs = node.attrs
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        if auto_pad == "VALID":
            return ir.Padding()
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            upper = ir.Padding.same(*in_hw, *kernel, *stride, *dilation)
            if auto_pad == "SAME_UPPER":
                return upper
            return ir.Padding(upper.bottom, upper.top, upper.right, upper.left)
        if auto_pad != "NOTSET":
            raise UserError(f"ONNX {node.op_type} {node.where()}: unknown auto_pad {auto_pad!r}")
        pads = _ints(attrs.get("pads", (0, 0, 0, 0)))
        if len(pads) != 4 or min(pads) < 0:
            raise UserError(f"ONNX {node.op_type} {node.where()}: pads {pads} are not "
                            "four non-negative numbers")
        top, left, bottom, right = pads  # ONNX order: all begins, then all ends
        return ir.Padding(top, bottom, left, right)

    def _conv_geometry(self, node: _OnnxNode, layout: _Layout, weight: np.ndarray) -> tuple[
            int, int, int, int, int, int, tuple[int, int], tuple[int, int], ir.Padding]:
        """A 2-D Conv's (out_ch, in_per_group, kh, kw, in_ch, group, stride, dilation,
        padding) from its OIHW weight, NCHW input and attributes (float and int8 alike)."""
        attrs = node.attrs
        if weight.ndim != 4:
            raise UserError(f"ONNX {node.op_type} {node.where()} is not 2-D (weight shape "
                            f"{weight.shape})")
        out_ch, in_per_group, kh, kw = weight.shape
        in_ch = layout.onnx_shape[1]
        group = int(attrs.get("group", 1))
        stride = _pair(attrs.get("strides", (1, 1)), node)
        dilation = _pair(attrs.get("dilations", (1, 1)), node)
        padding = self._window_padding(node, layout.onnx_shape[2:], (kh, kw), stride, dilation)
        return out_ch, in_per_group, kh, kw, in_ch, group, stride, dilation, padding

    def _conv(self, node: _OnnxNode) -> None:
        x, layout = self._spatial_input(node)
        weight = self._constant(node, 1, "weight")
        bias = self._optional_constant(node, 2, "bias")
        out_ch, in_per_group, kh, kw, in_ch, group, stride, dilation, padding = \
            self._conv_geometry(node, layout, weight)
        inputs = [x]
        if group == 1:
            op: ir.OpAttrs = ir.Conv2D(stride, padding, dilation)
            inputs.append(self._const(node.inputs[1], weight.transpose(0, 2, 3, 1)))  # OHWI
        elif group == in_ch and in_per_group == 1 and out_ch % in_ch == 0:
            op = ir.DepthwiseConv2D(stride, padding, out_ch // in_ch, dilation)
            # output channel c*m + j reads input channel c in both ONNX and TFLite
            inputs.append(self._const(node.inputs[1], weight.transpose(1, 2, 3, 0)))  # 1HWC
        else:
            raise UserError(f"ONNX Conv {node.where()} has group={group} with {in_ch} input "
                            "channels; mbgen supports group=1 (convolution) and group=channels "
                            "(depthwise) only")
        if bias is not None:
            inputs.append(self._const(node.inputs[2], bias.reshape(out_ch)))
        self._emit(node, op, inputs, node.proto.output[0], self._output_layout(node))

    def _batch_norm(self, node: _OnnxNode) -> None:
        x, _ = self._spatial_input(node)
        attrs = node.attrs
        if int(attrs.get("training_mode", 0)) != 0:
            raise UserError(f"ONNX BatchNormalization {node.where()} is in training mode")
        params = [self._const(node.inputs[i], self._constant(node, i, what).reshape(-1))
                  for i, what in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance"))]
        eps = float(np.float32(attrs.get("epsilon", 1e-5)))
        self._emit(node, ir.BatchNorm(eps), [x] + params, node.proto.output[0],
                   self._output_layout(node))

    # ------------------------------------------------------------------ activations

    def _unary(self, node: _OnnxNode, op: ir.OpAttrs) -> None:
        x, layout = self._input(node, 0)
        self._emit(node, op, [x], node.proto.output[0], layout)

    def _relu(self, node: _OnnxNode) -> None:
        self._unary(node, ir.ActivationOp(ir.Activation.RELU))

    def _clip(self, node: _OnnxNode) -> None:
        attrs = node.attrs
        if self.opset < 11:
            low, high = float(attrs.get("min", -np.inf)), float(attrs.get("max", np.inf))
        else:
            low_arr = self._optional_constant(node, 1, "min bound")
            high_arr = self._optional_constant(node, 2, "max bound")
            low = float(low_arr.reshape(-1)[0]) if low_arr is not None else -np.inf
            high = float(high_arr.reshape(-1)[0]) if high_arr is not None else np.inf
        low = -np.inf if low <= -_INF else low
        high = np.inf if high >= _INF else high
        if low == 0.0 and high == 6.0:
            self._unary(node, ir.ActivationOp(ir.Activation.RELU6))
        elif low == 0.0 and high == np.inf:
            self._unary(node, ir.ActivationOp(ir.Activation.RELU))
        elif low == -np.inf and high == np.inf:
            self._unary(node, ir.Identity("Clip"))
        else:
            raise UserError(f"ONNX Clip {node.where()} clamps to [{low:g}, {high:g}]; mbgen "
                            "supports [0, 6] (ReLU6) and [0, inf) (ReLU) only")

    def _hard_sigmoid(self, node: _OnnxNode) -> None:
        """clamp(alpha * x + beta, 0, 1) as two 1x1 depthwise layers (see hard_sigmoid.py)."""
        x, layout = self._input(node, 0)
        attrs = node.attrs
        out = self._activation(node.proto.output[0], layout)
        tensors, nodes = hard_sigmoid_layers(
            self._unique_node_name(node.label), self.tensors[x], out,
            float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5)))
        for tensor in tensors:
            if tensor.name != out:
                if tensor.name in self.tensors:
                    raise ir.GraphError(f"tensor {tensor.name!r} defined twice")
                self.tensors[tensor.name] = tensor
        self.node_names.update(n.name for n in nodes)
        self.nodes.extend(nodes)

    def _mul(self, node: _OnnxNode) -> None:
        x_value = self.hard_swish_of.get(node.label)
        if x_value is not None:
            x, layout = self._input(node, node.inputs.index(x_value))
            self._emit(node, ir.HardSwish(), [x], node.proto.output[0], layout)
            return
        self._binary(node, ir.Mul(), allow_channel_broadcast=True)

    def _add(self, node: _OnnxNode) -> None:
        self._binary(node, ir.Add(), allow_channel_broadcast=False)

    def _binary(self, node: _OnnxNode, op: ir.OpAttrs, allow_channel_broadcast: bool) -> None:
        for value in node.inputs[:2]:
            if value in self.constants:
                # The IR could carry it, but the float interpreter and most kernels cannot;
                # MobileNets never need it, so say so plainly instead of failing later.
                raise UserError(f"ONNX {node.op_type} {node.where()} with the constant operand "
                                f"{value!r} is unsupported; mbgen supports {node.op_type} of "
                                "two activations")
        (a, la), (b, lb) = self._input(node, 0), self._input(node, 1)
        if la == lb:
            self._emit(node, op, [a, b], node.proto.output[0], la)
            return
        if allow_channel_broadcast and la.order is _Order.NHWC and lb.order is _Order.NHWC:
            # squeeze-excite: (1,C,H,W) * (1,C,1,1); the IR wants the broadcast operand second
            big, small = (la, lb) if lb.onnx_shape[2:] == (1, 1) else (lb, la)
            if small.onnx_shape == big.onnx_shape[:2] + (1, 1):
                names = [a, b] if big is la else [b, a]
                self._emit(node, op, names, node.proto.output[0], big)
                return
        raise UserError(f"ONNX {node.op_type} {node.where()} broadcasts {la.onnx_shape} with "
                        f"{lb.onnx_shape}; mbgen supports equal shapes"
                        + (" and per-channel (1,C,1,1) scales" if allow_channel_broadcast else ""))

    # ------------------------------------------------------------------ pooling

    def _global_average_pool(self, node: _OnnxNode) -> None:
        x, _ = self._spatial_input(node)
        self._emit(node, ir.Mean((1, 2), True), [x], node.proto.output[0],
                   self._output_layout(node))

    def _reduce_mean(self, node: _OnnxNode) -> None:
        x, layout = self._spatial_input(node)
        attrs = node.attrs
        if "axes" in attrs:
            axes = _ints(attrs["axes"])
        else:
            axes_arr = self._optional_constant(node, 1, "axes")
            axes = _ints(axes_arr.reshape(-1)) if axes_arr is not None else ()
        if sorted(a % 4 for a in axes) != [2, 3]:
            raise UserError(f"ONNX ReduceMean {node.where()} over axes {axes}; mbgen supports "
                            "the spatial mean (axes 2 and 3 of NCHW) only")
        keep = bool(attrs.get("keepdims", 1))
        self._emit(node, ir.Mean((1, 2), keep), [x], node.proto.output[0],
                   self._output_layout(node))

    def _average_pool(self, node: _OnnxNode) -> None:
        x, layout = self._spatial_input(node)
        attrs = node.attrs
        kernel = _pair(attrs["kernel_shape"], node)
        stride = _pair(attrs.get("strides", (1, 1)), node)
        if _pair(attrs.get("dilations", (1, 1)), node) != (1, 1):
            raise UserError(f"ONNX AveragePool {node.where()} is dilated; mbgen does not "
                            "support that")
        padding = self._window_padding(node, layout.onnx_shape[2:], kernel, stride, (1, 1))
        out_layout = self._output_layout(node)
        h, w = layout.onnx_shape[2:]
        floor_hw = ((h + padding.top + padding.bottom - kernel[0]) // stride[0] + 1,
                    (w + padding.left + padding.right - kernel[1]) // stride[1] + 1)
        if floor_hw != out_layout.onnx_shape[2:]:
            raise UserError(f"ONNX AveragePool {node.where()} with ceil_mode adds partial "
                            "windows; mbgen supports floor-mode pooling only")
        if padding != ir.Padding() and int(attrs.get("count_include_pad", 0)):
            # The IR's pooling (TFLite's) leaves padded pixels out of the divisor; counting
            # them, as this node asks, is the same as pooling an explicitly zero-padded input.
            n, c, h, w = layout.onnx_shape
            padded = _Layout(_Order.NHWC, (n, c, h + padding.top + padding.bottom,
                                           w + padding.left + padding.right))
            pad_output = f"{node.proto.output[0]}_padded"
            pad_name = self._activation(pad_output, padded)
            self.nodes.append(ir.Node(self._unique_node_name(f"{node.label}_pad"),
                                      ir.Pad(padding), [x], [pad_name]))
            x, padding = pad_name, ir.Padding()
        self._emit(node, ir.AveragePool2D(kernel, stride, padding), [x],
                   node.proto.output[0], out_layout)

    def _pad(self, node: _OnnxNode) -> None:
        x, layout = self._spatial_input(node)
        attrs = node.attrs
        mode = attrs.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        if mode != "constant":
            raise UserError(f"ONNX Pad {node.where()} uses mode {mode!r}; mbgen supports "
                            "constant (zero) padding only")
        if self.opset < 11:
            pads = _ints(attrs.get("pads", ()))
            value = float(attrs.get("value", 0.0))
        else:
            pads = _ints(self._constant(node, 1, "pads").reshape(-1))
            fill = self._optional_constant(node, 2, "constant value")
            value = float(fill.reshape(-1)[0]) if fill is not None and fill.size else 0.0
            axes_arr = self._optional_constant(node, 3, "axes")
            if axes_arr is not None:  # opset 18: pads only for the listed axes
                full = [0] * 8
                axes = [int(a) % 4 for a in axes_arr.reshape(-1)]
                for i, axis in enumerate(axes):
                    full[axis], full[axis + 4] = pads[i], pads[i + len(axes)]
                pads = tuple(full)
        if value != 0.0:
            raise UserError(f"ONNX Pad {node.where()} pads with {value:g}; mbgen pads with "
                            "zeros only")
        if len(pads) != 8 or min(pads) < 0 or any(pads[i] for i in (0, 1, 4, 5)):
            raise UserError(f"ONNX Pad {node.where()} has pads {pads}; mbgen supports "
                            "non-negative padding of H and W only")
        padding = ir.Padding(top=pads[2], bottom=pads[6], left=pads[3], right=pads[7])
        self._emit(node, ir.Pad(padding), [x], node.proto.output[0], self._output_layout(node))

    # ------------------------------------------------------------------ shapes

    def _reshape_like(self, node: _OnnxNode) -> None:
        """Reshape, Flatten, Squeeze, Unsqueeze: only the output shape matters."""
        x, layout = self._input(node, 0)
        out_shape = self._shape(node.proto.output[0], node)
        if node.op_type == "Reshape" and node.inputs[1] not in self.constants:
            raise UserError(f"ONNX Reshape {node.where()}: the target shape must be constant")
        if layout.order is _Order.CHW_FLAT and out_shape == (1,) + layout.chw:
            out_layout = _layout_for(out_shape)   # un-flattening: back to NHWC as it was
        elif layout.order is _Order.CHW_FLAT:
            if out_shape != layout.onnx_shape:
                raise UserError(f"ONNX {node.op_type} {node.where()} reshapes a flattened "
                                f"NCHW tensor to {out_shape}; mbgen cannot express that in NHWC")
            out_layout = layout
        elif layout.same_order_as_onnx:
            out_layout = _layout_for(out_shape)
            if not out_layout.same_order_as_onnx:
                raise UserError(f"ONNX {node.op_type} {node.where()} makes the NCHW shape "
                                f"{out_shape} from {layout.onnx_shape}; mbgen cannot express "
                                "that in NHWC")
        elif len(out_shape) == 2 and out_shape[0] == 1:
            _, c, h, w = layout.onnx_shape
            out_layout = _Layout(_Order.CHW_FLAT, out_shape, (c, h, w))
        else:
            raise UserError(f"ONNX {node.op_type} {node.where()} reshapes the NCHW tensor "
                            f"{layout.onnx_shape} to {out_shape}; mbgen supports flattening "
                            "to (1, N) only")
        self._emit(node, ir.Reshape(out_layout.ir_shape), [x], node.proto.output[0], out_layout)

    def _identity(self, node: _OnnxNode) -> None:
        if node.op_type == "Dropout" and len(node.inputs) > 2 and node.inputs[2]:
            training = self._constant(node, 2, "training_mode")
            if bool(training.reshape(-1)[0]):
                raise UserError(f"ONNX Dropout {node.where()} is in training mode")
        self._unary(node, ir.Identity(node.op_type))

    # ------------------------------------------------------------------ classifier

    def _fc_weight(self, node: _OnnxNode, weight_oi: np.ndarray, layout: _Layout) -> np.ndarray:
        """Permute FC weight columns when the input vector was flattened from NHWC."""
        if layout.order is not _Order.CHW_FLAT:
            return weight_oi
        c, h, w = layout.chw
        out_ch = weight_oi.shape[0]
        return weight_oi.reshape(out_ch, c, h, w).transpose(0, 2, 3, 1).reshape(out_ch, -1)

    def _vector_input(self, node: _OnnxNode) -> tuple[str, _Layout]:
        x, layout = self._input(node, 0)
        if len(layout.onnx_shape) != 2 or layout.onnx_shape[0] != 1:
            raise UserError(f"ONNX {node.op_type} {node.where()} reads shape "
                            f"{layout.onnx_shape}; mbgen supports (1, N) inputs only "
                            "(add a Flatten)")
        return x, layout

    def _emit_fully_connected(self, node: _OnnxNode, x: str, layout: _Layout,
                              weight_oi: np.ndarray, weight_name: str,
                              bias: np.ndarray | None, bias_name: str, output: str) -> None:
        if weight_oi.shape[1] != layout.onnx_shape[1]:
            raise UserError(f"ONNX {node.op_type} {node.where()}: weight {weight_oi.shape} "
                            f"does not match input {layout.onnx_shape}")
        inputs = [x, self._const(weight_name, self._fc_weight(node, weight_oi, layout))]
        if bias is not None:
            out_ch = weight_oi.shape[0]
            inputs.append(self._const(bias_name,
                                      np.broadcast_to(bias, (1, out_ch)).reshape(out_ch)))
        out_shape = self._shape(output, node)
        self._emit(node, ir.FullyConnected(), inputs, output, _Layout(_Order.PLAIN, out_shape))

    def _gemm(self, node: _OnnxNode) -> None:
        x, layout = self._vector_input(node)
        attrs = node.attrs
        if int(attrs.get("transA", 0)):
            raise UserError(f"ONNX Gemm {node.where()} has transA=1; mbgen supports "
                            "activations as (1, N) rows only")
        weight = self._constant(node, 1, "weight (B)").astype(np.float32)
        if weight.ndim != 2:
            raise UserError(f"ONNX Gemm {node.where()}: weight must be 2-D")
        weight_oi = weight if int(attrs.get("transB", 0)) else weight.T
        alpha = float(attrs.get("alpha", 1.0))
        beta = float(attrs.get("beta", 1.0))
        if alpha != 1.0:
            weight_oi = weight_oi * np.float32(alpha)
        bias = self._optional_constant(node, 2, "bias (C)")
        if bias is not None:
            bias = bias.astype(np.float32)
            if bias.size not in (1, weight_oi.shape[0]):
                raise UserError(f"ONNX Gemm {node.where()}: bias shape {bias.shape} is not "
                                "per output")
            if beta != 1.0:
                bias = bias * np.float32(beta)
        bias_name = node.inputs[2] if bias is not None else ""
        self._emit_fully_connected(node, x, layout, weight_oi, node.inputs[1], bias, bias_name,
                                   node.proto.output[0])

    def _matmul(self, node: _OnnxNode) -> None:
        x, layout = self._vector_input(node)
        weight = self._constant(node, 1, "weight").astype(np.float32)
        if weight.ndim != 2:
            raise UserError(f"ONNX MatMul {node.where()}: weight must be 2-D")
        output, bias, bias_name = node.proto.output[0], None, ""
        add = self.bias_add_of.get(node.label)
        if add is not None:
            bias_name = [v for v in add.inputs if v != output][0]
            bias = self.constants[bias_name].astype(np.float32)
            output = add.proto.output[0]
        self._emit_fully_connected(node, x, layout, weight.T, node.inputs[1], bias, bias_name,
                                   output)

    def _softmax(self, node: _OnnxNode) -> None:
        x, layout = self._input(node, 0)
        rank = len(layout.onnx_shape)
        axis = int(node.attrs.get("axis", 1 if self.opset < 13 else -1)) % rank
        if rank != 2 or axis != 1:
            raise UserError(f"ONNX Softmax {node.where()} over axis {axis} of shape "
                            f"{layout.onnx_shape}; mbgen supports the last axis of (1, N)")
        self._emit(node, ir.Softmax(1.0), [x], node.proto.output[0], layout)


def _pair(value: object, node: _OnnxNode) -> tuple[int, int]:
    values = _ints(value)
    if len(values) != 2:
        raise UserError(f"ONNX {node.op_type} {node.where()} is not 2-D (window attribute "
                        f"{list(values)})")
    return values[0], values[1]


_CONVERTERS: dict[str, Callable[[_Converter, _OnnxNode], None]] = {
    "Conv": _Converter._conv,
    "BatchNormalization": _Converter._batch_norm,
    "Relu": _Converter._relu,
    "Clip": _Converter._clip,
    "HardSwish": lambda c, n: c._unary(n, ir.HardSwish()),
    "HardSigmoid": _Converter._hard_sigmoid,
    "Sigmoid": lambda c, n: c._unary(n, ir.Logistic()),
    "Mul": _Converter._mul,
    "Add": _Converter._add,
    "GlobalAveragePool": _Converter._global_average_pool,
    "ReduceMean": _Converter._reduce_mean,
    "AveragePool": _Converter._average_pool,
    "Pad": _Converter._pad,
    "Flatten": _Converter._reshape_like,
    "Reshape": _Converter._reshape_like,
    "Squeeze": _Converter._reshape_like,
    "Unsqueeze": _Converter._reshape_like,
    "Gemm": _Converter._gemm,
    "MatMul": _Converter._matmul,
    "Softmax": _Converter._softmax,
    "Identity": _Converter._identity,
    "Dropout": _Converter._identity,
}
