"""Zero padding that a frontend met as its own layer, merged into the conv that reads it.

TF-ported PyTorch models pad with ``nn.ZeroPad2d`` before a stride-2 conv (TensorFlow's 'SAME'
puts the odd pixel bottom/right, which a PyTorch conv cannot): in the float graph the pad is
exactly the conv's explicit ``ir.Padding``, and as such costs no layer, no arena buffer and
quantises as TFLite's own SAME conv does.
"""

from __future__ import annotations

from dataclasses import replace

from mbgen import ir


def fold_zero_pads(nodes: list[ir.Node], tensors: dict[str, ir.Tensor],
                   outputs: list[str]) -> list[ir.Node]:
    """``nodes`` with each float Pad whose only reader is a conv (as its input) merged into
    that conv's padding; the pad's tensor is removed from ``tensors``."""
    for pad in [n for n in nodes if isinstance(n.op, ir.Pad)]:
        result = pad.outputs[0]
        readers = [n for n in nodes if result in n.inputs]
        if result in outputs or len(readers) != 1 or tensors[result].dtype != "float32":
            continue
        conv = readers[0]
        if not isinstance(conv.op, (ir.Conv2D, ir.DepthwiseConv2D)) or \
                conv.inputs.index(result) != 0:
            continue
        a, p = conv.op.padding, pad.op.padding
        padding = ir.Padding(a.top + p.top, a.bottom + p.bottom, a.left + p.left,
                             a.right + p.right)
        merged = ir.Node(conv.name, replace(conv.op, padding=padding),
                         [pad.inputs[0], *conv.inputs[1:]], list(conv.outputs))
        nodes = [merged if n is conv else n for n in nodes if n is not pad]
        del tensors[result]
    return nodes
