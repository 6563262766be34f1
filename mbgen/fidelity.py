"""How closely the int8 graph keeps the float model's answers (compile's fidelity summary,
report.json's "fidelity", ``mbgen verify --float`` and benchmarks/accuracy.py).

* Agreement on held-out inputs: how often the float top-1 class is the *unique* int8 top-1
  (a tie at the int8 output is not a kept answer), the float top-1 within the int8 top-5, the
  mean |delta| of the float top-1's probability, and the output cosine. Outputs that are not
  a softmax are compared after a softmax, so the probability figure means the same thing.
* Per-layer SQNR: ``10 log10(sum f^2 / sum (f - dequantised int8)^2)`` over the inputs, for
  every activation the int8 graph shares (by name) with the float graph; the int8 graph is
  run by the bit-exact reference (mbgen.reference), so the figures are the C's own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mbgen import ir
from mbgen.float_interp import run_float


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom else float(np.array_equal(a, b))


def agreement(float_outputs: Sequence[np.ndarray], int8_outputs: Sequence[np.ndarray],
              probabilities: bool) -> dict:
    """Float vs dequantised int8 outputs, one pair per input. ``probabilities``: the outputs
    are already a softmax (else one is applied to both for the probability figure)."""
    unique = top5 = 0
    deltas, cosines = [], []
    for f, q in zip(float_outputs, int8_outputs):
        f, q = np.asarray(f, np.float64).ravel(), np.asarray(q, np.float64).ravel()
        top = int(np.argmax(f))
        unique += bool(q[top] == q.max() and np.count_nonzero(q == q.max()) == 1)
        top5 += bool(np.count_nonzero(q > q[top]) < 5)
        pf, pq = (f, q) if probabilities else (softmax(f), softmax(q))
        deltas.append(abs(pq[top] - pf[top]))
        cosines.append(cosine(f, q))
    n = len(deltas)
    return {"inputs": n, "unique_top1": unique, "top5": top5,
            "mean_abs_delta_top1_prob": float(np.mean(deltas)) if n else None,
            "mean_cosine": float(np.mean(cosines)) if n else None,
            "min_cosine": float(np.min(cosines)) if n else None}


def _int8_values(graph: ir.Graph, x: np.ndarray, keep_all: bool) -> dict[str, np.ndarray]:
    from mbgen.preprocessing import interface_of
    from mbgen.reference import run_int8
    q_in = interface_of(graph, graph.inputs[0]).quantize(x)
    return run_int8(graph, {graph.inputs[0]: q_in}, keep_all=keep_all)


def _dequantize(graph: ir.Graph, name: str, q: np.ndarray) -> np.ndarray:
    qp = graph.tensors[name].quant
    return qp.scalar_scale * (q.astype(np.float64) - qp.scalar_zero_point)


def output_is_probability(graph: ir.Graph) -> bool:
    producer = graph.producer(graph.outputs[0])
    while producer is not None and isinstance(producer.op, (ir.Reshape, ir.Identity)):
        producer = graph.producer(producer.inputs[0])
    return producer is not None and isinstance(producer.op, (ir.Softmax, ir.Logistic))


def measure(float_graph: ir.Graph, int8_graph: ir.Graph, inputs: Sequence[np.ndarray],
            layer_graph: ir.Graph | None = None) -> dict:
    """Agreement of ``int8_graph`` with ``float_graph`` on ``inputs`` (float32 NHWC), and the
    per-layer SQNR against ``layer_graph`` (default ``float_graph``; pass the equalised float
    graph when cross-layer equalisation rescaled the tensors between layers)."""
    layer_graph = layer_graph or float_graph
    out_f, out_q = float_graph.outputs[0], int8_graph.outputs[0]
    signal: dict[str, float] = {}
    noise: dict[str, float] = {}
    floats, int8s = [], []
    for x in inputs:
        f_values = run_float(layer_graph, x, keep_all=True)
        q_values = _int8_values(int8_graph, x, keep_all=True)
        floats.append(run_float(float_graph, x)[out_f] if layer_graph is not float_graph
                      else f_values[out_f])
        int8s.append(_dequantize(int8_graph, out_q, q_values[out_q]))
        for name, q in q_values.items():
            tensor = int8_graph.tensors[name]
            if name not in f_values or tensor.quant is None or tensor.is_const:
                continue
            f = f_values[name].astype(np.float64).reshape(q.shape)
            signal[name] = signal.get(name, 0.0) + float(np.sum(f * f))
            noise[name] = noise.get(name, 0.0) + float(np.sum(
                (f - _dequantize(int8_graph, name, q)) ** 2))
    layers = []
    for node in int8_graph.nodes:
        name = node.outputs[0]
        if name in signal:
            sqnr = (10 * np.log10(signal[name] / noise[name]) if noise[name] > 0
                    else float("inf"))
            layers.append({"tensor": name, "op": ir.op_name(node.op),
                           "sqnr_db": round(float(sqnr), 2)})
    result = agreement(floats, int8s, output_is_probability(float_graph))
    result["layers"] = layers
    return result


def summary_lines(fidelity: dict) -> list[str]:
    """The compile summary's fidelity lines."""
    lines = []
    n = fidelity.get("inputs") or 0
    if n:
        lines.append(
            f"  fidelity on {n} held-out {fidelity.get('held_out', 'inputs')}: float top-1 is "
            f"the unique int8 top-1 on {fidelity['unique_top1']}/{n}, in the top-5 on "
            f"{fidelity['top5']}/{n}; mean |delta top-1 prob| "
            f"{fidelity['mean_abs_delta_top1_prob']:.3f}; output cosine "
            f"{fidelity['mean_cosine']:.4f} (min {fidelity['min_cosine']:.4f})")
        if "measured_on" in fidelity:
            lines.append(f"  (measured on {fidelity['measured_on']})")
    worst = sorted(fidelity.get("layers", []), key=lambda r: r["sqnr_db"])[:1]
    if worst:
        lines.append(f"  worst layer SQNR {worst[0]['sqnr_db']:.1f} dB ({worst[0]['tensor']}); "
                     "`mbgen verify --float` lists them all")
    return lines


def layer_table(layers: Sequence[dict]) -> list[str]:
    """Per-layer SQNR, worst first (``mbgen verify --float``)."""
    rows = sorted(layers, key=lambda r: r["sqnr_db"])
    width = max([len(r["tensor"]) for r in rows] + [6])
    lines = [f"  {'SQNR dB':>8}  {'op':<16} tensor"]
    lines += [f"  {r['sqnr_db']:>8.1f}  {r['op']:<16} {r['tensor']:<{width}}" for r in rows]
    return lines
