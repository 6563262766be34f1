"""Kernel sets: which C kernel runs each layer.

A kernel set is a lowering with a name: per node it returns a call record, or None when the
node is not legal for it (then the portable set takes the node, and report.json says so).
The portable set lives in ``kernels_portable.py``; another set ``foo-bar`` lives in
``mbgen/codegen/kernels_foo_bar.py`` and registers itself with ``register`` on import.
"""

from __future__ import annotations

import importlib
from typing import Protocol

from mbgen import ir
from mbgen.codegen.kernels_portable import PortableKernels
from mbgen.codegen.lowering import LoweringContext
from mbgen.codegen.records import CallRecord
from mbgen.errors import UserError


class KernelSet(Protocol):
    name: str

    def lower(self, ctx: LoweringContext, index: int, node: ir.Node) -> CallRecord | None:
        """A call record for ``node`` (the ``index``-th layer), or None if not legal here."""

    def scratch_bytes(self, graph: ir.Graph, node: ir.Node) -> int:
        """Arena bytes the kernel for ``node`` needs besides its input and output."""


_REGISTRY: dict[str, KernelSet] = {}
KNOWN_SETS = ("portable", "mbgen", "cmsis-nn")


def register(kernel_set: KernelSet) -> None:
    _REGISTRY[kernel_set.name] = kernel_set


register(PortableKernels())


def get(name: str) -> KernelSet:
    """The kernel set called ``name``; UserError naming the choices if there is none."""
    if name not in _REGISTRY:
        module = "mbgen.codegen.kernels_" + name.replace("-", "_")
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
    if name not in _REGISTRY:
        available = ", ".join(sorted(set(_REGISTRY) | set(KNOWN_SETS)))
        raise UserError(f"unknown or unavailable kernel set {name!r} (kernel sets: {available})")
    return _REGISTRY[name]


def portable() -> KernelSet:
    return _REGISTRY["portable"]


def scratch_requirements(graph: ir.Graph, kernels: str) -> dict[str, int]:
    """Scratch bytes per node for ``plan_graph(graph, scratch)`` with this kernel set."""
    if any(isinstance(node.op, ir.StreamedStage) for node in graph.nodes):
        from mbgen.streaming import scratch_requirements as with_stages
        return with_stages(graph, kernels)   # a stage's windows and its band kernels'
    chosen = get(kernels)
    needs = {node.name: chosen.scratch_bytes(graph, node) for node in graph.nodes}
    return {name: n for name, n in needs.items() if n > 0}
