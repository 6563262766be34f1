"""Streamed first stages: chains of convolutions computed in row bands, so their big
intermediate feature maps never exist whole (issue 11, item 5).

The hook the pipeline calls just before planning is ``streamed``: the int8 graph in, the
same graph with ``ir.StreamedStage`` nodes out (the references, the exporters and TFLM keep
seeing the graph that went in). ``codegen.build_program`` runs it with its own planner
(``plan_of``) and lowers each stage node to one kernel instance with
``mbgen.codegen.lower_stage`` (one scratch request: the band kernels' scratch, then the row
windows; its walk over its input: ``stage_write_order``).
"""

from __future__ import annotations

from collections.abc import Callable

from mbgen import ir
from mbgen.planner import GraphPlan
from mbgen.streaming.choose import (CALL_COST_MACS, SIMD_CALL_COST_MACS, StreamOptions,
                                    stage_macs, stages_report, stream)
from mbgen.streaming.stage import stage_write_order

DEFAULT_MAX_RECOMPUTE = 0.10


def options_for(kernels: str, enabled: bool = True,
                max_recompute: float = DEFAULT_MAX_RECOMPUTE) -> StreamOptions:
    """Portable C reads rows at any address; the SIMD kernel sets get word-aligned rows, and
    pay more per extra call (so they get taller bands)."""
    portable = kernels == "portable"
    return StreamOptions(enabled=enabled, max_recompute=max_recompute,
                         row_align=1 if portable else 4,
                         call_cost_macs=CALL_COST_MACS if portable else SIMD_CALL_COST_MACS,
                         dsp_calls=kernels == "mbgen")


def streamed(graph: ir.Graph, kernels: str, enabled: bool = True,
             max_recompute: float = DEFAULT_MAX_RECOMPUTE, *,
             plan_of: Callable[[ir.Graph], GraphPlan]) -> ir.Graph:
    """``graph`` with the stages that shrink its arena (``graph`` if none); ``plan_of``:
    the real planner candidates are judged with (codegen.program.planner_for)."""
    return stream(graph, kernels, options_for(kernels, enabled, max_recompute), plan_of)


__all__ = ["StreamOptions", "stage_macs", "stage_write_order", "stages_report",
           "stream", "streamed", "options_for", "DEFAULT_MAX_RECOMPUTE"]
