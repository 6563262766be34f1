"""strip_float_io on hand-built graphs: boundary QUANTIZE/DEQUANTIZE go, inner ones stay."""

from mbgen import ir
from mbgen.passes.strip_float_io import strip_float_io


def _graph():
    q = ir.QuantParams.per_tensor(0.1, 3)
    q2 = ir.QuantParams.per_tensor(0.2, -5)
    t = {
        "x": ir.Tensor("x", (1, 4), "float32"),
        "xq": ir.Tensor("xq", (1, 4), "int8", quant=q),
        "r": ir.Tensor("r", (1, 4), "int8", quant=q2),
        "y": ir.Tensor("y", (1, 4), "float32"),
    }
    nodes = [ir.Node("quant", ir.Quantize(), ["x"], ["xq"]),
             ir.Node("requant", ir.Quantize(), ["xq"], ["r"]),
             ir.Node("dequant", ir.Dequantize(), ["r"], ["y"])]
    return ir.Graph("g", t, nodes, ["x"], ["y"])


def test_boundary_ops_removed_inner_requantize_kept():
    g = _graph()
    out = strip_float_io(g)
    ir.verify(out)
    assert out.inputs == ["xq"] and out.outputs == ["r"]
    assert [n.name for n in out.nodes] == ["requant"]
    assert out.is_quantized


def test_input_graph_untouched():
    g = _graph()
    strip_float_io(g)
    assert [n.name for n in g.nodes] == ["quant", "requant", "dequant"]
    assert g.inputs == ["x"] and "x" in g.tensors


def test_int8_graph_unchanged():
    g = strip_float_io(_graph())
    again = strip_float_io(g)
    assert again.inputs == g.inputs and again.outputs == g.outputs
    assert len(again.nodes) == len(g.nodes)
