"""Which weight layout the ``mbgen`` kernels use: ``--optimize`` and ``--weight-layout``.

int8 weights stay as the model has them (flash about TFLM's); int16 pairs cost one more
byte per GEMM weight for fewer instructions. The policy users can predict:

* ``--optimize size``: int8 everywhere; convolutions and fully connected layers run the one
  shared compact GEMM (kernels_mbgen_compact: a params struct per layer, no code);
* ``--optimize balanced`` (the default): per-layer specialised code only when the weights
  and CODE_RESERVE_BYTES stay under half the flash budget, else the shared compact kernels
  of ``size`` (``shares_code``) except for the few shallow layers where per-layer code is
  small and the shared GEMM loses most, while the firmware stays under half the budget
  (``specialised_layers``); int16 pairs only when the whole model with int16 pairs
  everywhere stays under half the flash budget (small models), then on every GEMM layer
  that fits that half; else int8;
* ``--optimize speed``: int16 pairs on the layers with the most pixels first, while the
  weights leave CODE_RESERVE_BYTES of the flash budget for code;
* ``--weight-layout int8|int16`` forces one layout (``auto``: follow ``--optimize``).
"""

from __future__ import annotations

import dataclasses

from mbgen import ir
from mbgen.codegen.lowering import nhwc

OPTIMIZE_CHOICES = ("balanced", "speed", "size")
DEFAULT_OPTIMIZE = "balanced"
# Flash the weight layout may not use: code, the runtime and the harness live there too.
CODE_RESERVE_BYTES = 192 * 1024


def lowering_layout(weight_layout: str, optimize: str) -> str:
    """The kernel set's layout decision from the two options: an explicit int8/int16
    wins; ``auto`` follows ``optimize`` ("size", "speed" or "balanced")."""
    if weight_layout in ("int8", "int16"):
        return weight_layout
    return optimize   # "size": int8 and shared code where it costs little, "speed", "balanced"


def gemm_shape(graph: ir.Graph, node: ir.Node) -> tuple[int, int, int] | None:
    """(pixels, depth, out_c) of a node the GEMM kernel can run, else None."""
    op = node.op
    if not isinstance(op, (ir.Conv2D, ir.FullyConnected)):
        return None
    w = graph.tensors[node.inputs[1]]
    if isinstance(op, ir.Conv2D):
        out_h, out_w, out_c = nhwc(graph.tensors[node.outputs[0]].shape)
        o, k_h, k_w, i = w.shape
        in_c = graph.tensors[node.inputs[0]].shape[3]
        if o != out_c or i != in_c:
            return None
        return out_h * out_w, k_h * k_w * i, out_c
    out_features, in_features = w.shape
    return 1, in_features, out_features


def int16_candidates(graph: ir.Graph) -> list[tuple[int, int, str]]:
    """(pixels, extra flash bytes, name) of every layer int16 pairs may go to: convolutions
    (fully connected layers have one pixel: int16 pairs save little per byte), streamed
    ones included."""
    candidates = []
    layers = _unstaged(graph)
    for node in layers.nodes:
        shape = gemm_shape(layers, node)
        if shape is None:
            continue
        pixels, depth, out_c = shape
        if pixels < 2:
            continue
        extra = -(-depth // 4) * 4 * (-(-out_c // 2) * 2)   # one more byte per weight
        candidates.append((pixels, extra, node.name))
    return candidates


def const_bytes(graph: ir.Graph) -> int:
    return sum(t.nbytes for t in graph.tensors.values() if t.is_const)


def choose_int16_layers(graph: ir.Graph, flash_bytes: int) -> frozenset[str]:
    """GEMM layers whose weights become int16 pairs: the most MACs per extra flash byte
    first, while the weights stay CODE_RESERVE_BYTES under the flash budget (no budget:
    every candidate)."""
    candidates = int16_candidates(graph)
    if not flash_bytes:
        return frozenset(name for _, _, name in candidates)
    room = flash_bytes - CODE_RESERVE_BYTES - const_bytes(graph)
    chosen = []
    for pixels, extra, name in sorted(candidates, key=lambda c: -c[0]):
        if extra <= room:
            chosen.append(name)
            room -= extra
    return frozenset(chosen)


def balanced_allows_int16(graph: ir.Graph, flash_bytes: int) -> bool:
    """Whether the model with int16 pairs on every candidate (plus the code reserve) stays
    under half of ``flash_bytes``."""
    extra = sum(e for _, e, _ in int16_candidates(graph))
    return const_bytes(graph) + extra + CODE_RESERVE_BYTES <= flash_bytes // 2


def shares_code(graph: ir.Graph, layout: str, flash_bytes: int) -> bool:
    """Whether the layers run the shared compact kernels (one body each, a params struct
    per layer): always under ``size``; under ``balanced`` when the weights plus
    CODE_RESERVE_BYTES would not stay under half the flash budget (then per-layer code
    is "wider specialisation" the issue keeps for ``speed``)."""
    if layout == "size":
        return True
    if layout not in ("balanced", "auto"):
        return False
    return const_bytes(graph) + CODE_RESERVE_BYTES > flash_bytes // 2


# The model's code with the shared compact kernels (linked, compile's summary: 18.9 KB for
# mbv1_0.25_128 on cortex-m7, 25.6 KB for person_detect on cortex-m4, whose streamed bands
# add per-layer stem code and params), and one shallow layer's per-layer GEMM code and
# stream on top (measured 1.5-2.5 KB: the RGB stem, 1x1 layers 8 and 16 deep, streamed or
# not). An estimate: compile checks the linked figure and, past half the budget, builds
# again with one layer fewer (fewer_shallow_budget).
COMPACT_CODE_BYTES = 20 * 1024
SHALLOW_CODE_BYTES = 3 * 1024
SHALLOW_MAX_DEPTH = 16


def compact_weight_bytes(graph: ir.Graph) -> int:
    """The flash the shared compact kernels' streams take: the model's constants plus, per
    output channel, the multiplier and shift (once for a single-scale layer) and the depth
    padded to 4; a 3x3 depthwise channel's 9 taps as 3 words, its multiplier and shift."""
    layers = _unstaged(graph)
    extra = 0
    for node in layers.nodes:
        op = node.op
        if isinstance(op, ir.DepthwiseConv2D):
            extra += 8 * nhwc(layers.tensors[node.outputs[0]].shape)[2]
            continue
        shape = gemm_shape(layers, node)
        if shape is None:
            continue
        _, depth, out_c = shape
        scales = layers.tensors[node.inputs[1]].quant
        per_channel = scales is not None and len(scales.scale) > 1
        extra += (-(-depth // 4) * 4 - depth) * out_c + 5 * (out_c if per_channel else 1)
    return const_bytes(graph) + extra


def _shallow_runs(graph: ir.Graph, node: ir.Node) -> int:
    """4x2 block runs of a layer whose per-layer GEMM is cheap in code and well ahead of
    the shared one (a 1x1 convolution at most SHALLOW_MAX_DEPTH deep, or a 3x3 stem on 3
    channels: the shared GEMM's per-run overhead is spent on a few depths); else 0."""
    shape = gemm_shape(graph, node)
    if shape is None or not isinstance(node.op, ir.Conv2D):
        return 0
    pixels, depth, out_c = shape
    k_h, k_w = graph.tensors[node.inputs[1]].shape[1:3]
    stem = (k_h, k_w) == (3, 3) and depth == 27
    if pixels < 4 or not (stem or ((k_h, k_w) == (1, 1) and depth <= SHALLOW_MAX_DEPTH)):
        return 0
    return -(-pixels // 4) * -(-out_c // 2)


def _unstaged(graph: ir.Graph) -> ir.Graph:
    """The graph with every streamed stage's inner nodes (and tensors) in its place: layers
    keep their layout decision whether or not they are streamed."""
    if not any(isinstance(node.op, ir.StreamedStage) for node in graph.nodes):
        return graph
    tensors, nodes = dict(graph.tensors), []
    for node in graph.nodes:
        if isinstance(node.op, ir.StreamedStage):
            tensors.update((t.name, t) for t in node.op.tensors)
            nodes.extend(node.op.nodes)
        else:
            nodes.append(node)
    return dataclasses.replace(graph, tensors=tensors, nodes=nodes)


def specialised_layers(graph: ir.Graph, layout: str, flash_bytes: int) -> frozenset[str]:
    """Under ``balanced`` with the shared compact kernels: the shallow layers (_shallow_runs)
    that keep their per-layer code, the most runs first (then the earliest), while the
    compact streams (compact_weight_bytes), COMPACT_CODE_BYTES and SHALLOW_CODE_BYTES for
    each stay under half the flash budget."""
    if layout not in ("balanced", "auto") or not shares_code(graph, layout, flash_bytes):
        return frozenset()
    room = flash_bytes // 2 - compact_weight_bytes(graph) - COMPACT_CODE_BYTES
    layers = _unstaged(graph)
    runs = sorted((-_shallow_runs(layers, node), index, node.name)
                  for index, node in enumerate(layers.nodes))
    chosen = []
    for count, _, name in runs:
        if count and room >= SHALLOW_CODE_BYTES:
            chosen.append(name)
            room -= SHALLOW_CODE_BYTES
    return frozenset(chosen)


def layout_budget_keeping(graph: ir.Graph, flash_bytes: int, count: int) -> int:
    """A flash budget for layout decisions, at most ``flash_bytes``, under which
    specialised_layers keeps at most ``count`` shallow layers (its room then holds fewer than
    count + 1)."""
    return min(flash_bytes, 2 * (compact_weight_bytes(graph) + COMPACT_CODE_BYTES
                                 + (count + 1) * SHALLOW_CODE_BYTES) - 2)


def fewer_shallow_budget(graph: ir.Graph, layout: str, flash_bytes: int, model_flash_bytes: int,
                         layout_flash: int) -> int | None:
    """After a build whose layout followed ``layout_flash``: when its linked model flash
    (weights and code) passed half of ``flash_bytes`` with shallow layers kept per-layer
    (the estimate fell short: a model's code is not one constant), the layout budget of a
    build with one fewer; else None, the build stands."""
    kept = len(specialised_layers(graph, layout, layout_flash))
    if not kept or model_flash_bytes <= flash_bytes // 2:
        return None
    return layout_budget_keeping(graph, flash_bytes, kept - 1)


def layout_note(graph: ir.Graph, layout: str, flash_bytes: int) -> str:
    """One line for the compile summary: the layout used and what the other would cost."""
    candidates = int16_candidates(graph)
    if shares_code(graph, layout, flash_bytes):
        why = ("--optimize size" if layout == "size" else
               f"weights + {CODE_RESERVE_BYTES // 1024} KB pass half the flash budget")
        shallow = len(specialised_layers(graph, layout, flash_bytes))
        kept = (f", {shallow} shallow layer{'s' if shallow > 1 else ''} per-layer (under half "
                "the budget)" if shallow else "")
        return (f"weights int8, shared compact kernels ({why}){kept}; per-layer kernels "
                "(--optimize speed) run faster with more code per layer")
    if not candidates:
        return "weights int8 (no layer would take int16 pairs)"
    every = sum(e for _, e, _ in candidates)
    if layout in ("int8", "size"):
        chosen: frozenset[str] = frozenset()
    elif layout == "int16":
        chosen = choose_int16_layers(graph, 0)
    elif layout == "speed":
        chosen = choose_int16_layers(graph, flash_bytes)
    else:
        chosen = (choose_int16_layers(graph, flash_bytes // 2)
                  if balanced_allows_int16(graph, flash_bytes) else frozenset())
    if not chosen:
        return (f"weights int8; int16 pairs on {len(candidates)} layers would add "
                f"{every / 1024:.1f} KB of flash for fewer instructions (--optimize speed)")
    extra = sum(e for _, e, name in candidates if name in chosen)
    return (f"weights int16 pairs on {len(chosen)} of {len(candidates)} GEMM layers, "
            f"+{extra / 1024:.1f} KB of flash over int8 (--optimize size: int8)")
