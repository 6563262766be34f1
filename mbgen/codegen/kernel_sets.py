"""Kernel sets: which C kernel runs each layer.

A kernel set is a lowering with a name: per node it returns a call record, or None when the
node is not legal for it (then the portable set takes the node, and report.json says so).
The record's buffers are symbolic; a lowering asks ``ctx.scratch(node, bytes)`` for the
scratch its kernel uses, and ``walks(call)`` declares how the kernel walks its buffers (see
``mbgen.codegen.program``, which plans and binds from these declarations).
The portable set lives in ``kernels_portable.py``; another set ``foo-bar`` lives in
``mbgen/codegen/kernels_foo_bar.py`` and registers itself with ``register`` on import.
"""

from __future__ import annotations

import importlib
from typing import Protocol

from mbgen import ir
from mbgen.codegen.kernels_portable import PortableKernels
from mbgen.codegen.lowering import LoweringContext
from mbgen.codegen.records import BufferRef, CallRecord
from mbgen.errors import UserError
from mbgen.write_order import WriteOrder


class KernelSet(Protocol):
    name: str

    def lower(self, ctx: LoweringContext, index: int, node: ir.Node) -> CallRecord | None:
        """A call record for ``node`` (the ``index``-th layer), or None if not legal here."""

    def walks(self, call: CallRecord) -> tuple[tuple[BufferRef, WriteOrder], ...]:
        """For each input buffer of ``call`` its output may overwrite once consumed, the
        kernel's ``WriteOrder`` (derived from the record's fields); () when none."""


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
