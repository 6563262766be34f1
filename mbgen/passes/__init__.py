"""Graph rewrites between the frontends and the quantizer. Each pass is ``Graph -> Graph`` and
pure: it works on ``graph.copy()`` and never writes to the input graph or its arrays."""

from __future__ import annotations

from mbgen import ir
from mbgen.passes.fold_batchnorm import fold_batchnorm
from mbgen.passes.fuse_activations import fuse_activations
from mbgen.passes.remove_noops import remove_noops

# Identity removal comes first so that Conv -> Dropout -> BN -> Dropout -> ReLU still folds and
# fuses; BN folding before fusion because BN sits between the conv and its activation.
PIPELINE = (remove_noops, fold_batchnorm, fuse_activations)


def optimize(graph: ir.Graph) -> ir.Graph:
    """Run every pass in order, checking the IR invariants after each."""
    ir.verify(graph)
    for run_pass in PIPELINE:
        graph = run_pass(graph)
        ir.verify(graph)
    return graph


__all__ = ["fold_batchnorm", "fuse_activations", "remove_noops", "optimize", "PIPELINE"]
