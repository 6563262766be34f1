"""AdaRound (Nagel et al. 2020, "Up or down? Adaptive rounding"): each weight is rounded up or
down to minimise the layer's output error on the calibration data, not to the nearest value.

Per conv-like layer, with the quantizer's own per-channel scales ``s``: the soft weight is
``s * clip(floor(w / s) + h(V), -127, 127)`` with the rectified sigmoid ``h``; ``V`` is learnt
by Adam (PyTorch, CPU) on ``|| act(W~ x + b) - act(W x + b) ||^2`` plus the rounding
regulariser ``sum(1 - |2h - 1|^beta)`` with beta annealed from 20 to 2, then ``h`` is made
hard. Inputs ``x`` are the float graph's (the "FP input" variant, layers independent).

The element of largest magnitude in each channel keeps its nearest rounding (127), so the
quantizer derives the very same scale again from the rewritten float weights ``s * q`` and
rounds them back to exactly ``q``: the output is a float graph, and the int8 graph made from
it is an ordinary TFLite one. The time is bounded: layers after ``seconds`` keep the nearest
rounding (compile reports how many were AdaRounded).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from mbgen import ir
from mbgen.float_interp import run_float
from mbgen.quantize.float_rewrites import (
    conv_like_nodes,
    set_constant,
    weight_axis,
    weight_scales,
)
from mbgen.quantize.quantizer import WEIGHT_QMAX

ITERATIONS = 300
BATCH = 8
MAX_INPUTS = 16    # calibration inputs whose layer inputs are kept (memory: all layers at once)
LEARNING_RATE = 5e-2   # large: a few hundred steps, not the paper's 10k
REG_WEIGHT = 0.01
ZETA, GAMMA = 1.1, -0.1
BETA_START, BETA_END, WARMUP = 20.0, 2.0, 0.2


def _layer_fn(node: ir.Node, bias):
    """torch function of the layer on NHWC float inputs, given weights in the IR layout."""
    import torch
    import torch.nn.functional as F

    op = node.op
    act = getattr(op, "activation", ir.Activation.NONE)

    def activate(y):
        if act is ir.Activation.RELU:
            return torch.relu(y)
        if act is ir.Activation.RELU6:
            return torch.clamp(y, 0.0, 6.0)
        return y

    def run(x_nhwc, w):
        if isinstance(op, ir.FullyConnected):
            return activate(x_nhwc.reshape(x_nhwc.shape[0], -1) @ w.T + bias)
        x = x_nhwc.permute(0, 3, 1, 2)
        p = op.padding
        x = F.pad(x, (p.left, p.right, p.top, p.bottom))
        if isinstance(op, ir.Conv2D):
            y = F.conv2d(x, w.permute(0, 3, 1, 2), bias, op.stride, 0, op.dilation)
        else:   # depthwise: (1, KH, KW, C*m) -> (C*m, 1, KH, KW), groups = C
            y = F.conv2d(x, w.permute(3, 0, 1, 2), bias, op.stride, 0, op.dilation,
                         groups=x.shape[1])
        return activate(y)
    return run


def _round_layer(node: ir.Node, weights: np.ndarray, bias: np.ndarray | None,
                 inputs: np.ndarray, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """The AdaRounded weights of one layer (float64, on the int8 grid)."""
    import torch

    axis = weight_axis(node)
    shape = [1] * weights.ndim
    if axis is not None:
        shape[axis] = -1
    scale = weight_scales(weights, axis).astype(np.float64).reshape(shape)
    scaled = weights / scale
    base = np.floor(scaled)
    nearest = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)
    # Keep each channel's largest |w| at its nearest value: the scale must not move.
    if axis is None:
        pinned = np.abs(scaled) == np.abs(scaled).max()
    else:
        others = tuple(d for d in range(weights.ndim) if d != axis)
        pinned = np.abs(scaled) == np.abs(scaled).max(axis=others, keepdims=True)
    rest = np.clip(scaled - base, 1e-4, 1 - 1e-4)
    # V so that h(V) starts at the fractional part (the nearest rounding's tendency).
    v0 = -np.log((ZETA - GAMMA) / (rest - GAMMA) - 1)
    t_scale, t_base = torch.tensor(scale), torch.tensor(base)
    v = torch.tensor(v0, requires_grad=True)
    t_w = torch.tensor(weights)
    t_b = torch.tensor(bias) if bias is not None else None
    run = _layer_fn(node, t_b)
    x_all = torch.tensor(inputs)
    with torch.no_grad():
        target_all = run(x_all, t_w)
    optimiser = torch.optim.Adam([v], lr=LEARNING_RATE)

    def soft(h):
        return t_scale * torch.clamp(t_base + h, -WEIGHT_QMAX, WEIGHT_QMAX)

    def rectified(v_):
        return torch.clamp(torch.sigmoid(v_) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)

    for step in range(iterations):
        progress = step / iterations
        pick = torch.tensor(rng.choice(len(inputs), min(BATCH, len(inputs)), replace=False))
        h = rectified(v)
        loss = torch.mean((run(x_all[pick], soft(h)) - target_all[pick]) ** 2)
        if progress > WARMUP:
            beta = BETA_END + (BETA_START - BETA_END) * (1 - (progress - WARMUP) / (1 - WARMUP))
            loss = loss + REG_WEIGHT * torch.sum(1 - torch.abs(2 * h - 1) ** beta)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        hard = (rectified(v) >= 0.5).double().numpy()
    q = np.clip(base + hard, -WEIGHT_QMAX, WEIGHT_QMAX)
    q = np.where(pinned, nearest, q)
    return (np.float32(scale) * q.astype(np.float32)).astype(np.float64)


def adaround(graph: ir.Graph, calib_inputs: Sequence[np.ndarray], seconds: float = 120.0,
             seed: int = 0, iterations: int = ITERATIONS) -> tuple[ir.Graph, int]:
    """A copy of the float ``graph`` with AdaRounded conv-like weights, and how many layers
    were AdaRounded: layers are done in order, each for ``iterations`` steps (the same result
    for a seed), until ``seconds`` are spent; the rest keep nearest rounding."""
    import torch

    nodes = list(conv_like_nodes(graph))
    if not nodes:
        return graph, 0
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    names = sorted({n.inputs[0] for n in nodes})
    collected: dict[str, list[np.ndarray]] = {name: [] for name in names}
    chosen = np.unique(np.linspace(0, len(calib_inputs) - 1,
                                   min(MAX_INPUTS, len(calib_inputs))).round().astype(int))
    for index in chosen:
        values = run_float(graph, {graph.inputs[0]: np.asarray(calib_inputs[index], np.float32)},
                           keep_all=True)
        for name in names:
            collected[name].append(values[name])
    result = graph.copy()
    started = time.monotonic()
    done = 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # small layers: threads cost more than they give (2 shared cores)
    try:
        for node in nodes:
            if time.monotonic() - started > seconds:
                break
            weights = graph.tensors[node.inputs[1]].data.astype(np.float64)
            bias = (graph.tensors[node.inputs[2]].data.astype(np.float64)
                    if len(node.inputs) > 2 and node.inputs[2] else None)
            inputs = np.concatenate(collected[node.inputs[0]]).astype(np.float64)
            set_constant(result, node.inputs[1],
                         _round_layer(node, weights, bias, inputs, iterations, rng))
            done += 1
    finally:
        torch.set_num_threads(threads)
    return result, done
