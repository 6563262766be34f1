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

Here: ``load_onnx`` and the converter's bookkeeping. Reading, shape inference and folding
are ``onnx_model``'s; layouts and node labels ``onnx_layout``'s; the per-op handlers
``onnx_layers``' (graph-shaping ops: ``onnx_graph_ops``; int8 models: ``onnx_quantized``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from mbgen import ir
from mbgen.errors import UserError
from mbgen.frontends.onnx_hard_activations import rewrite_hard_activations
from mbgen.frontends.onnx_layers import _HARD_SIGMOID_ALPHA, _HARD_SIGMOID_BETA, FloatLayers
from mbgen.frontends.onnx_layout import _Layout, _layout_for, _OnnxNode, _Order, _pair
from mbgen.frontends.onnx_model import (_default_opset, _fold_constants, _graph_inputs,
                                        _ints, _node_label, _read_model, _static_shapes,
                                        _with_batch_one)

try:  # onnx is an optional dependency: only this frontend needs it
    import onnx
except ImportError:  # pragma: no cover - exercised only without onnx installed
    onnx = None


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


# ----------------------------------------------------------------------------- conversion


class _Converter(FloatLayers):
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
