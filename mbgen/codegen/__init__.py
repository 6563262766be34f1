"""C code generation: int8 graph + memory plan -> the flat C folder (see generator.py)."""

from mbgen.codegen.generator import generate, lower_graph
from mbgen.codegen.kernel_sets import scratch_requirements

__all__ = ["generate", "lower_graph", "scratch_requirements"]
