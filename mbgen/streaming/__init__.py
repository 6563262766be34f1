"""Streamed first stages: chains of convolutions computed in row bands, so their big
intermediate feature maps never exist whole (issue 11, item 5).

The hook the pipeline calls just before planning is ``streamed``: the int8 graph in, the
same graph with ``ir.StreamedStage`` nodes out (the references, the exporters and TFLM keep
seeing the graph that went in). ``scratch_requirements`` then replaces
``codegen.scratch_requirements`` for ``planner.plan_graph``: a stage's scratch is its band
kernels' scratch plus its row windows. ``codegen.lower_graph`` lowers a stage node with
``mbgen.codegen.lower_stage``.
"""

from __future__ import annotations

from mbgen import ir
from mbgen.streaming.choose import (StreamOptions, scratch_requirements, stages_report,
                                    stream)
from mbgen.streaming.stage import stage_write_order

DEFAULT_MAX_RECOMPUTE = 0.10


def options_for(kernels: str, enabled: bool = True,
                max_recompute: float = DEFAULT_MAX_RECOMPUTE) -> StreamOptions:
    """Portable C reads rows at any address; the SIMD kernel sets get word-aligned rows."""
    return StreamOptions(enabled=enabled, max_recompute=max_recompute,
                         row_align=1 if kernels == "portable" else 4)


def streamed(graph: ir.Graph, kernels: str, enabled: bool = True,
             max_recompute: float = DEFAULT_MAX_RECOMPUTE) -> ir.Graph:
    """The hook: ``graph`` with the stages that shrink its arena (``graph`` if none)."""
    return stream(graph, kernels, options_for(kernels, enabled, max_recompute))


__all__ = ["StreamOptions", "scratch_requirements", "stage_write_order", "stages_report",
           "stream", "streamed", "options_for", "DEFAULT_MAX_RECOMPUTE"]
