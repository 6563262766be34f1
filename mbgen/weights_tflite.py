"""Trained weights for a zoo model from a float TFLite file of the same architecture.

``mbgen compile mbv1_0.25_128 --weights mobilenet_v1_0.25_128.tflite`` builds the zoo
MobileNetV1 the way TensorFlow's slim ``mobilenet_v1`` computes it, so that its int8 graph is
the one the .tflite file itself compiles to:

* stride-2 layers pad like TF's 'SAME' (bottom/right only: ``zoo.get(tf_padding=True)``);
* TF files carry BatchNorm already folded into each conv's bias, so every BatchNorm becomes
  the exact identity (gamma 1, mean 0, var 1, eps 0: folding multiplies by 1.0) with the
  file's bias as beta;
* the head is TF's: average pool, 1x1 conv logits with the file's classes (1001 for
  ImageNet with "background"), flatten, and softmax when the file ends in one.

Weights are paired with the file's CONV_2D / DEPTHWISE_CONV_2D ops in graph order and checked
shape by shape; the first mismatch is a one-line UserError naming the file's tensor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from mbgen import ir, zoo
from mbgen.errors import UserError

_CONVS = (ir.Conv2D, ir.DepthwiseConv2D)


class TFMobileNetV1(nn.Module):
    """The zoo MobileNetV1 body with slim's classification head."""

    def __init__(self, features: nn.Module, channels: int, classes: int,
                 pool: tuple[int, int], pool_stride: tuple[int, int], softmax: bool) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AvgPool2d(pool, stride=pool_stride)
        self.logits = nn.Conv2d(channels, classes, 1, bias=True)
        self.flatten = nn.Flatten(1)
        self.softmax = nn.Softmax(dim=1) if softmax else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.logits(self.pool(self.features(x)))
        return self.softmax(self.flatten(x))


def _float_graph(path: Path) -> ir.Graph:
    from mbgen.frontends.tflite_frontend import load_tflite
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    if path.suffix.lower() != ".tflite":
        raise UserError(f"--weights reads a float .tflite file, got {path.name}")
    graph = load_tflite(path)
    if graph.is_quantized:
        raise UserError(f"{path.name} is an int8 model; --weights needs float weights (compile "
                        "the int8 file itself instead)")
    return graph


def _head(graph: ir.Graph, path: Path) -> tuple[ir.Node, ir.Node, bool]:
    """(average pool, logits conv, ends in softmax) of a slim MobileNetV1 file."""
    ops = [n for n in graph.nodes if not isinstance(n.op, (ir.Reshape, ir.Identity))]
    softmax = bool(ops) and isinstance(ops[-1].op, ir.Softmax)
    tail = ops[:-1] if softmax else ops
    if len(tail) < 2 or not isinstance(tail[-2].op, ir.AveragePool2D) or \
            not isinstance(tail[-1].op, ir.Conv2D):
        raise UserError(f"{path.name} does not end like TensorFlow's MobileNetV1 (average "
                        "pool, 1x1 conv logits, optional softmax)")
    return tail[-2], tail[-1], softmax


def _conv_pairs(module: nn.Module) -> list[tuple[str, nn.Conv2d, nn.BatchNorm2d | None]]:
    """The body's convolutions in graph order, each with the BatchNorm after it."""
    pairs = []
    for name, seq in module.features.named_modules():
        if isinstance(seq, nn.Sequential) and len(seq) == 3 and \
                isinstance(seq[1], nn.BatchNorm2d):
            conv = seq[0] if isinstance(seq[0], nn.Conv2d) else seq[0][-1]
            pairs.append((f"features.{name}", conv, seq[1]))
    return pairs


def _file_layout(conv: nn.Conv2d) -> tuple[int, ...]:
    """The TFLite weight shape a torch conv corresponds to (OHWI, or 1HWC for depthwise)."""
    out_c, in_per_group, k_h, k_w = conv.weight.shape
    if conv.groups == 1:
        return (out_c, k_h, k_w, in_per_group)
    return (1, k_h, k_w, out_c)


def _to_torch(weight: np.ndarray, conv: nn.Conv2d) -> torch.Tensor:
    w = weight.transpose(0, 3, 1, 2) if conv.groups == 1 else weight.transpose(3, 0, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))


def zoo_module_with_weights(spec: str, path: str | Path) -> nn.Module:
    """Zoo model ``spec`` (MobileNetV1) in eval mode with the weights of float file ``path``."""
    path = Path(path)
    info = zoo.describe(spec)
    if info.family != "mobilenet_v1":
        raise UserError(f"--weights is available for the MobileNet V1 zoo models (mbv1_*), "
                        f"not {spec}")
    graph = _float_graph(path)
    want_input = (1, info.resolution, info.resolution, 3)
    got_input = tuple(graph.tensors[graph.inputs[0]].shape)
    if got_input != want_input:
        raise UserError(f"{path.name} does not fit {spec}: its input is {got_input}, "
                        f"{spec} reads {want_input}")
    pool, logits, softmax = _head(graph, path)
    logits_w = graph.tensors[logits.inputs[1]]
    classes, channels = int(logits_w.shape[0]), int(logits_w.shape[-1])
    body = zoo.get(spec, tf_padding=True)
    model = TFMobileNetV1(body.features, channels, classes, pool.op.kernel, pool.op.stride,
                          softmax)
    file_convs = [n for n in graph.nodes if isinstance(n.op, _CONVS)]
    ours = _conv_pairs(model) + [("logits", model.logits, None)]
    with torch.no_grad():
        for index, (layer, conv, bn) in enumerate(ours):
            if index >= len(file_convs):
                raise UserError(f"{path.name} does not fit {spec}: it has {len(file_convs)} "
                                f"convolutions, {spec} has {len(ours)} (no weights for {layer})")
            node = file_convs[index]
            weight = graph.tensors[node.inputs[1]]
            want = _file_layout(conv)
            depthwise = isinstance(node.op, ir.DepthwiseConv2D)
            if tuple(weight.shape) != want or depthwise != (conv.groups > 1):
                kind = "depthwise" if conv.groups > 1 else "conv"
                raise UserError(f"{path.name} does not fit {spec}: tensor {weight.name!r} has "
                                f"shape {tuple(weight.shape)}, {spec}'s {kind} layer {layer} "
                                f"needs {want}")
            conv.weight.copy_(_to_torch(weight.data, conv))
            bias_name = node.inputs[2] if len(node.inputs) > 2 else ""
            bias = graph.tensors[bias_name].data if bias_name else \
                np.zeros(want[0] if not depthwise else want[-1], np.float32)
            bias_t = torch.from_numpy(np.asarray(bias, dtype=np.float32).copy())
            if bn is None:
                conv.bias.copy_(bias_t)
                continue
            bn.weight.fill_(1.0)
            bn.bias.copy_(bias_t)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
            bn.eps = 0.0  # with var 1: scale exactly 1.0, so folding changes no bit
        if len(file_convs) != len(ours):
            extra = file_convs[len(ours)]
            raise UserError(f"{path.name} does not fit {spec}: it has {len(file_convs)} "
                            f"convolutions, {spec} has {len(ours)} (first extra: "
                            f"{extra.inputs[1]!r})")
    return model.eval()


def zoo_graph_with_weights(source, path: str | Path) -> ir.Graph:
    """The float IR graph of zoo ``source`` with the trained weights of ``path``."""
    from mbgen.frontends.torch_frontend import from_module
    if source.kind != "zoo":
        raise UserError(f"--weights gives a zoo model trained weights; {source.spec} is a "
                        "model file, which has its own")
    module = zoo_module_with_weights(source.spec, path)
    return from_module(module, torch.zeros(zoo.input_shape(source.spec)), source.spec)
