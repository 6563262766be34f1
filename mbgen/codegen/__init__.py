"""C code generation: int8 graph -> lowered, planned, bound program -> the flat C folder
(see program.py and generator.py)."""

from mbgen.codegen.generator import default_io, generate, render
from mbgen.codegen.program import Program, build_program

__all__ = ["Program", "build_program", "default_io", "generate", "render"]
