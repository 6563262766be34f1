"""Hand-written hard sigmoid / hard swish in ONNX files, rewritten to the ONNX ops.

torch.onnx exports MobileNetV3 code that spells them out (e.g. d-li14/mobilenetv3.pytorch's
``relu6(x + 3) / 6`` and ``x * h_sigmoid(x)``) as ``Add(x, 3) -> Clip(0, 6) -> Div(6)`` (or
``Mul(1/6)``), and ``x * relu6(x + 3) / 6`` with the Mul before the Div. Each such chain, when
its intermediate values have no other reader, becomes one ``HardSigmoid(alpha=1/6,
beta=1/2)`` or ``HardSwish`` node with the chain's output name, which the converter takes
(``x * HardSigmoid(x)`` then becomes hard swish there as well).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

_TOLERANCE = 1e-6


def rewrite_hard_activations(model: "onnx.ModelProto", constants: dict[str, np.ndarray],
                             opset: int) -> "onnx.ModelProto":
    """``model`` with every hand-written hard sigmoid / hard swish chain replaced."""
    import onnx  # only called on a model onnx has read
    from onnx import helper

    nodes = list(model.graph.node)
    producers = {out: n for n in nodes for out in n.output}
    uses = Counter(name for n in nodes for name in n.input)
    graph_outputs = {o.name for o in model.graph.output}

    def private(value: str) -> bool:
        return uses[value] == 1 and value not in graph_outputs

    def is_const(value: str, wanted: float) -> bool:
        data = constants.get(value)
        return data is not None and data.size == 1 and \
            abs(float(data.reshape(-1)[0]) - wanted) < _TOLERANCE

    def clip_bounds(clip: "onnx.NodeProto") -> tuple[float, float]:
        if opset < 11:
            attrs = {a.name: helper.get_attribute_value(a) for a in clip.attribute}
            return float(attrs.get("min", -np.inf)), float(attrs.get("max", np.inf))
        bounds = []
        for index, default in ((1, -np.inf), (2, np.inf)):
            name = clip.input[index] if len(clip.input) > index else ""
            bounds.append(float(constants[name].reshape(-1)[0]) if name in constants
                          else default if not name else np.nan)
        return bounds[0], bounds[1]

    def relu6_of_plus_three(value: str) -> tuple[str, list] | None:
        """x and the (Clip, Add) nodes when ``value`` = Clip(Add(x, 3), 0, 6) privately."""
        clip = producers.get(value)
        if clip is None or clip.op_type != "Clip" or not private(value) or \
                clip_bounds(clip) != (0.0, 6.0):
            return None
        add = producers.get(clip.input[0])
        if add is None or add.op_type != "Add" or not private(clip.input[0]):
            return None
        for x, three in (add.input, add.input[::-1]):
            if is_const(three, 3.0) and x not in constants:
                return x, [clip, add]
        return None

    def divided_by_six(node: "onnx.NodeProto") -> str | None:
        if node.op_type == "Div" and is_const(node.input[1], 6.0):
            return node.input[0]
        if node.op_type == "Mul":
            for value, k in (node.input, node.input[::-1]):
                if is_const(k, 1.0 / 6.0):
                    return value
        return None

    replacement: dict[int, "onnx.NodeProto"] = {}
    removed: set[int] = set()
    for node in nodes:
        scaled = divided_by_six(node)
        if scaled is None or id(node) in removed:
            continue
        found = relu6_of_plus_three(scaled)
        if found is not None:
            x, chain = found
            replacement[id(node)] = helper.make_node(
                "HardSigmoid", [x], [node.output[0]], name=node.name, alpha=1.0 / 6.0, beta=0.5)
            removed.update(id(n) for n in chain)
            continue
        mul = producers.get(scaled)
        if mul is None or mul.op_type != "Mul" or not private(scaled):
            continue
        for x, gate in (mul.input, mul.input[::-1]):
            found = relu6_of_plus_three(gate)
            if found is not None and found[0] == x:
                replacement[id(node)] = helper.make_node("HardSwish", [x], [node.output[0]],
                                                         name=node.name)
                removed.update(id(n) for n in [mul] + found[1])
                break
    if not replacement:
        return model
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    del rewritten.graph.node[:]
    rewritten.graph.node.extend(replacement.get(id(n), n) for n in nodes
                                if id(n) not in removed)
    return rewritten
