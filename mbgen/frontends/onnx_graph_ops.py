"""ONNX translations of the graph-shaping ops of SqueezeNet and ShuffleNetV2 as torch.onnx
exports them: Concat, Split, Slice, MaxPool (``ceil_mode`` included) and the channel shuffle
``Reshape (N, g, C/g, H, W) -> Transpose [0, 2, 1, 3, 4] -> Reshape (N, C, H, W)``.

The float converter (``onnx_frontend._Converter``) asks :func:`convert` first for every node
of the default domain. The IR semantics are ``torch_graph_ops``': NCHW dims become NHWC axes,
a Split or Slice becomes ``ir.StridedSlice`` nodes, a max pool stores only the padding its
windows reach (padded pixels never win), and the shuffle's rank-5 tensors are held back in
``_Converter.held_back`` until the closing Reshape emits RESHAPE -> TRANSPOSE -> RESHAPE.
"""

from __future__ import annotations

from dataclasses import dataclass

from mbgen import ir
from mbgen.errors import UserError
from mbgen.frontends.onnx_frontend import _Converter
from mbgen.frontends.onnx_layout import _Layout, _OnnxNode, _Order, _pair
from mbgen.frontends.onnx_model import _ints

_NHWC_AXIS = {0: 0, 1: 3, 2: 1, 3: 2}


@dataclass(frozen=True)
class _ShuffleView:
    """An NCHW activation viewed as (N, groups, C/groups, H, W), transposed or not yet."""

    source: str          # the ONNX value it was viewed from
    groups: int
    transposed: bool = False


def _ir_axis(c: _Converter, node: _OnnxNode, layout: _Layout, axis: int) -> int:
    rank = len(layout.onnx_shape)
    if not -rank <= axis < rank:
        raise UserError(f"ONNX {node.op_type} {node.where()}: axis {axis} of a rank-{rank} "
                        "tensor")
    axis %= rank
    if layout.order is _Order.NHWC:
        return _NHWC_AXIS[axis]
    if layout.order is _Order.PLAIN:
        return axis
    raise UserError(f"ONNX {node.op_type} {node.where()} cuts a flattened NCHW tensor, whose "
                    "IR order is HWC")


def _concat(c: _Converter, node: _OnnxNode) -> None:
    inputs = [c._input(node, i) for i in range(len(node.inputs))]
    layout = inputs[0][1]
    if "axis" not in node.attrs:
        raise UserError(f"ONNX Concat {node.where()} has no axis")
    axis = _ir_axis(c, node, layout, int(node.attrs["axis"]))
    if any(lay.order is not layout.order for _, lay in inputs):
        raise UserError(f"ONNX Concat {node.where()} joins tensors of different ranks")
    c._emit(node, ir.Concatenation(axis=axis), [name for name, _ in inputs],
            node.proto.output[0], c._output_layout(node))


def _slice_to(c: _Converter, node: _OnnxNode, x: str, layout: _Layout, output: str,
              starts: dict[int, tuple[int, int]]) -> None:
    """One StridedSlice of ``x``: ``starts`` maps an ONNX axis to (start, step)."""
    begin = [0] * len(layout.onnx_shape)
    strides = [1] * len(layout.onnx_shape)
    for axis, (start, step) in starts.items():
        ir_axis = _ir_axis(c, node, layout, axis)
        begin[ir_axis], strides[ir_axis] = start, step
    out_layout = c._output_layout(node, list(node.proto.output).index(output))
    c._emit(node, ir.StridedSlice(begin=tuple(begin), strides=tuple(strides)), [x], output,
            out_layout)


def _split(c: _Converter, node: _OnnxNode) -> None:
    x, layout = c._input(node, 0)
    axis = int(node.attrs.get("axis", 0)) % len(layout.onnx_shape)
    start = 0
    for output in node.proto.output:
        size = c._shape(output, node)[axis]
        if output:  # an unnamed output is not computed
            _slice_to(c, node, x, layout, output, {axis: (start, 1)})
        start += size


def _slice(c: _Converter, node: _OnnxNode) -> None:
    x, layout = c._input(node, 0)
    shape = layout.onnx_shape
    if len(node.inputs) > 1:  # opset >= 10: starts, ends, axes, steps are inputs
        starts = _ints(c._constant(node, 1, "starts").tolist())
        ends = _ints(c._constant(node, 2, "ends").tolist())
        axes = c._optional_constant(node, 3, "axes")
        steps = c._optional_constant(node, 4, "steps")
        axes = _ints(axes.tolist()) if axes is not None else tuple(range(len(starts)))
        steps = _ints(steps.tolist()) if steps is not None else (1,) * len(starts)
    else:
        attrs = node.attrs
        starts, ends = _ints(attrs["starts"]), _ints(attrs["ends"])
        axes = _ints(attrs.get("axes", tuple(range(len(starts)))))
        steps = (1,) * len(starts)
    cuts: dict[int, tuple[int, int]] = {}
    for axis, begin, end, step in zip(axes, starts, ends, steps):
        axis %= len(shape)
        first, _, _ = slice(begin, end, step).indices(shape[axis])
        if step < 1:
            raise UserError(f"ONNX Slice {node.where()} with step {step}; mbgen slices "
                            "forwards only")
        cuts[axis] = (first, step)
    _slice_to(c, node, x, layout, node.proto.output[0], cuts)


def _max_pool(c: _Converter, node: _OnnxNode) -> None:
    x, layout = c._spatial_input(node)
    attrs = node.attrs
    kernel = _pair(attrs["kernel_shape"], node)
    stride = _pair(attrs.get("strides", (1, 1)), node)
    if _pair(attrs.get("dilations", (1, 1)), node) != (1, 1):
        raise UserError(f"ONNX MaxPool {node.where()} with dilations; mbgen has none")
    in_h, in_w = layout.onnx_shape[2:]
    pads = c._window_padding(node, (in_h, in_w), kernel, stride, (1, 1))
    out_layout = c._output_layout(node)
    out_h, out_w = out_layout.onnx_shape[2:]
    # ceil_mode's extra row/column, or less than the pads say: what the windows reach
    padding = ir.Padding(pads.top, max(0, (out_h - 1) * stride[0] + kernel[0] - in_h - pads.top),
                         pads.left, max(0, (out_w - 1) * stride[1] + kernel[1] - in_w - pads.left))
    c._emit(node, ir.MaxPool2D(kernel=kernel, stride=stride, padding=padding), [x],
            node.proto.output[0], out_layout)


def _shuffle_step(c: _Converter, node: _OnnxNode) -> bool:
    """Hold back the 5-D view and transpose of a channel shuffle; emit it at its last Reshape.
    False when ``node`` is not part of one."""
    value = node.inputs[0] if node.inputs else ""
    view = c.held_back.get(value)
    output = node.proto.output[0]
    if view is None:
        if node.op_type != "Reshape" or len(c._shape(output, node)) != 5:
            return False
        _, layout = c._spatial_input(node)
        n, ch, h, w = layout.onnx_shape
        out = c._shape(output, node)
        if out[0] != n or out[1] * out[2] != ch or out[3:] != (h, w):
            raise UserError(f"ONNX Reshape {node.where()} views {layout.onnx_shape} as "
                            f"{out}; mbgen takes 5-D views only in a channel shuffle")
        c.held_back[output] = _ShuffleView(value, out[1])
        return True
    if node.op_type == "Transpose" and not view.transposed \
            and _ints(node.attrs.get("perm", ())) == (0, 2, 1, 3, 4):
        c.held_back[output] = _ShuffleView(view.source, view.groups, True)
        return True
    source_layout = c.layouts[view.source]
    if node.op_type == "Reshape" and view.transposed \
            and c._shape(output, node) == source_layout.onnx_shape:
        _emit_shuffle(c, node, view, source_layout)
        return True
    raise UserError(f"ONNX {node.op_type} {node.where()} reads a 5-D view, which mbgen takes "
                    "only in a channel shuffle (Reshape -> Transpose [0, 2, 1, 3, 4] -> "
                    "Reshape)")


def _emit_shuffle(c: _Converter, node: _OnnxNode, view: _ShuffleView,
                  layout: _Layout) -> None:
    n, ch, h, w = layout.onnx_shape
    output = node.proto.output[0]
    grouped = (n, h * w, view.groups, ch // view.groups)
    swapped = (n, h * w, ch // view.groups, view.groups)
    c._emit(node, ir.Reshape(shape=grouped), [c.ir_names[view.source]], f"{output}/groups",
            _Layout(_Order.PLAIN, grouped))
    c._emit(node, ir.Transpose(perm=(0, 1, 3, 2)), [c.ir_names[f"{output}/groups"]],
            f"{output}/shuffle", _Layout(_Order.PLAIN, swapped))
    c._emit(node, ir.Reshape(shape=layout.ir_shape), [c.ir_names[f"{output}/shuffle"]],
            output, layout)


_CONVERTERS = {"Concat": _concat, "Split": _split, "Slice": _slice, "MaxPool": _max_pool}


def convert(c: _Converter, node: _OnnxNode) -> bool:
    """Convert ``node`` if it is one of this module's ops or part of a channel shuffle."""
    if node.op_type in ("Reshape", "Transpose") or node.inputs and \
            node.inputs[0] in c.held_back:
        if _shuffle_step(c, node):
            return True
    converter = _CONVERTERS.get(node.op_type)
    if converter is None:
        return False
    if node.op_type == "MaxPool":
        c._check_single_output(node)  # the indices output
    converter(c, node)
    return True
