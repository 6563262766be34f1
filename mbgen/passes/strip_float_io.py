"""Make an int8 model with float interfaces (QUANTIZE first, DEQUANTIZE last) int8 end to end.

The TF converter often leaves float input/output on int8 models. On a microcontroller the
caller quantises the input itself (model.h gives the scale and zero point), so the boundary
ops are dropped: the graph input becomes the QUANTIZE output and the graph output the
DEQUANTIZE input, with their int8 quantisation unchanged. Inner QUANTIZE (requantisation)
nodes are kept.
"""

from __future__ import annotations

from mbgen import ir


def _is_float(graph: ir.Graph, name: str) -> bool:
    return graph.tensors[name].dtype == "float32"


def strip_float_io(graph: ir.Graph) -> ir.Graph:
    g = graph.copy()
    for i, name in enumerate(list(g.inputs)):
        readers = g.consumers(name)
        if (_is_float(g, name) and len(readers) == 1 and isinstance(readers[0].op, ir.Quantize)
                and name not in g.outputs):
            quantize = readers[0]
            g.nodes.remove(quantize)
            del g.tensors[name]
            g.inputs[i] = quantize.outputs[0]
    for i, name in enumerate(list(g.outputs)):
        producer = g.producer(name)
        if (_is_float(g, name) and producer is not None
                and isinstance(producer.op, ir.Dequantize) and not g.consumers(name)):
            g.nodes.remove(producer)
            del g.tensors[name]
            g.outputs[i] = producer.inputs[0]
    return g
