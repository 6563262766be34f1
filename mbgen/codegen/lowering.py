"""What every kernel set shares when it turns a graph node into a call record.

``LoweringContext`` answers the questions a lowering asks before any memory is planned: the
pointer of an activation (a symbolic ``BufferRef`` bound later from the plan), scratch
(asked for with its size, the way TFLM's Prepare requests it) and the C array of a constant
(registered once per tensor, named after the model and the layer).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from mbgen import ir
from mbgen.codegen.records import BufferKind, BufferRef, ConstArray

C_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass
class LoweringContext:
    """Read-only view of the graph plus the registries of scratch requests and flash arrays."""

    graph: ir.Graph
    prefix: str
    target: str = "host"   # the target's name: a kernel set may depend on its core
    flash_budget: int | None = None  # bytes of flash the user allows (None: the target's)
    weight_layout: str = "auto"      # "auto" | "int16" | "int8": a kernel set's weight format
    # the whole model, for whole-model layout decisions when ``graph`` is one streamed
    # stage's band (None: ``graph`` is the model)
    layout_graph: ir.Graph | None = None
    scratch_requests: dict[str, int] = field(default_factory=dict)   # node -> bytes
    # node -> arena bytes free while it runs under a plan made without it (program.py's
    # second lowering); a kernel may spend them on faster scratch without growing the arena
    spare_bytes: dict[str, int] = field(default_factory=dict)
    spare_asked: set[str] = field(default_factory=set)   # nodes whose kernels asked
    # nodes whose output that plan lays over their input: their kernels keep the walk they
    # declared then (the faster lowering is kept only if the arena does not grow)
    in_place: frozenset[str] = frozenset()
    _tensor_arrays: dict[str, ConstArray] = field(default_factory=dict)
    _symbols: set[str] = field(default_factory=set)
    _printed: set[str] = field(default_factory=set)   # shared code some layer prints

    def tensor(self, name: str) -> ir.Tensor:
        return self.graph.tensors[name]

    def buffer(self, tensor_name: str) -> BufferRef:
        """The pointer an activation is read from or written to (bound after planning)."""
        if tensor_name not in self.graph.tensors or self.graph.tensors[tensor_name].is_const:
            raise ir.GraphError(f"{tensor_name!r} is not an activation of the graph")
        return BufferRef(BufferKind.TENSOR, name=tensor_name)

    def scratch(self, node_name: str, nbytes: int) -> BufferRef | None:
        """Ask for ``nbytes`` of arena scratch while node ``node_name`` runs: the pointer
        (bound after planning), or None for zero bytes. The request is the declaration the
        planner reads, so the size is stated once, by the kernel that uses it."""
        if nbytes <= 0:
            return None
        self.scratch_requests[node_name] = max(nbytes, self.scratch_requests.get(node_name, 0))
        return BufferRef(BufferKind.SCRATCH, name=node_name)

    def spare(self, node_name: str) -> int:
        """Arena bytes node ``node_name`` may add to its scratch for speed: 0 until the
        program lowers again with a plan's free space (``spare_bytes``)."""
        self.spare_asked.add(node_name)
        return self.spare_bytes.get(node_name, 0)

    def prints_first(self, code: str) -> bool:
        """True the first time this generation asks about shared ``code``: the asking
        layer prints it, later ones call it. A stage's band contexts share the record (they
        are copies), so a helper is printed once however many bands and layers use it."""
        if code in self._printed:
            return False
        self._printed.add(code)
        return True

    def _unique_symbol(self, stem: str) -> str:
        symbol = f"{self.prefix}_{stem}"
        n = 2
        while symbol in self._symbols:
            symbol = f"{self.prefix}_{stem}_{n}"
            n += 1
        self._symbols.add(symbol)
        return symbol

    def const_tensor(self, tensor_name: str, layer_index: int, role: str,
                     ctype: str, values: np.ndarray | None = None) -> ConstArray:
        """The flash array of a constant tensor (shared when several layers read it).

        ``values`` overrides the tensor data when a kernel wants another layout.
        """
        if tensor_name in self._tensor_arrays and values is None:
            return self._tensor_arrays[tensor_name]
        t = self.tensor(tensor_name)
        if t.data is None:
            raise ir.GraphError(f"tensor {tensor_name!r} is not a constant")
        data = np.ascontiguousarray(t.data if values is None else values).reshape(-1)
        array = ConstArray(
            symbol=self._unique_symbol(f"l{layer_index}_{role}"),
            ctype=ctype,
            values=_checked_cast(data, ctype, tensor_name),
            comment=f"{tensor_name}: {t.dtype} {list(t.shape)}",
        )
        if values is None:
            self._tensor_arrays[tensor_name] = array
        return array

    def bias_values(self, node: ir.Node, out_c: int) -> np.ndarray:
        """A conv/depthwise/FC node's optional int32 bias (third input) as ``out_c`` int64
        values; zeros when the node has none."""
        if len(node.inputs) <= 2 or not node.inputs[2]:
            return np.zeros(out_c, dtype=np.int64)
        b = self.tensor(node.inputs[2])
        if b.dtype != "int32" or b.size != out_c:
            raise ir.GraphError(f"{node.name}: bias must be {out_c} int32 values")
        return b.data.astype(np.int64).reshape(out_c)

    def const_values(self, layer_index: int, role: str, ctype: str, values: np.ndarray,
                     comment: str) -> ConstArray:
        """A flash array computed by codegen (multipliers, shifts, ...)."""
        data = np.ascontiguousarray(values).reshape(-1)
        return ConstArray(self._unique_symbol(f"l{layer_index}_{role}"), ctype,
                          _checked_cast(data, ctype, comment), comment)


def _checked_cast(values: np.ndarray, ctype: str, what: str) -> np.ndarray:
    info = np.iinfo(ctype.removesuffix("_t"))
    if values.size and (values.min() < info.min or values.max() > info.max):
        raise ir.GraphError(f"{what}: values do not fit {ctype}")
    if not np.issubdtype(values.dtype, np.integer):
        raise ir.GraphError(f"{what}: expected integers, got {values.dtype}")
    return values.astype(ctype.removesuffix("_t"))


def nhwc(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(H, W, C) of a batch-1 NHWC activation shape."""
    if len(shape) != 4 or shape[0] != 1:
        raise ir.GraphError(f"expected a (1, H, W, C) activation, got {shape}")
    return int(shape[1]), int(shape[2]), int(shape[3])


def is_valid_c_name(name: str) -> bool:
    return bool(C_IDENTIFIER.match(name))


def bias_values(ctx: LoweringContext, node: ir.Node, channels: int) -> np.ndarray:
    """A convolution's or fully connected layer's int32 bias as int64 (zeros without one)."""
    if len(node.inputs) > 2 and node.inputs[2]:
        b = ctx.tensor(node.inputs[2])
        if b.dtype != "int32" or b.size != channels:
            raise ir.GraphError(f"{node.name}: bias must be {channels} int32 values")
        return b.data.astype(np.int64).reshape(channels)
    return np.zeros(channels, dtype=np.int64)
