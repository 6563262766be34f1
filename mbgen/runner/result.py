"""What a run produced, and the harness's machine-readable console lines.

The harness (``templates/harness/cortexm_main.c.j2``) prints::

    MBGEN_LAYER <index> <instructions> <layer name>
    MBGEN_TOTAL <instructions>
    MBGEN_STACK <peak bytes of the main stack since reset, read back from its paint>
    MBGEN_ERROR <why it failed>

and the firmware's fault handlers print ``FAULT <exception> pc=0x... cause=...``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

_LAYER = re.compile(r"^MBGEN_LAYER (\d+) (\d+) ?(.*)$")
_TOTAL = re.compile(r"^MBGEN_TOTAL (\d+)$")
_STACK = re.compile(r"^MBGEN_STACK (\d+)$")


@dataclass(frozen=True)
class RunResult:
    output: bytes                                   # the raw int8 output tensor
    total_instructions: int | None                  # None on the host
    layer_instructions: list[tuple[str, int]] = field(default_factory=list)
    stdout: str = ""                                # everything the program printed
    stack_peak_bytes: int | None = None             # measured in QEMU (painted stack)

    def output_int8(self) -> np.ndarray:
        return np.frombuffer(self.output, dtype=np.int8)


@dataclass(frozen=True)
class ConsoleReport:
    """The harness/firmware lines found in a console transcript."""

    layers: list[tuple[str, int]]
    total: int | None
    errors: list[str]
    fault: str | None
    stack_peak: int | None = None


def parse_console(text: str) -> ConsoleReport:
    layers: dict[int, tuple[str, int]] = {}
    total = None
    errors: list[str] = []
    fault = None
    stack_peak = None
    for raw in text.splitlines():
        line = raw.strip()
        if m := _LAYER.match(line):
            index, count, name = int(m.group(1)), int(m.group(2)), m.group(3).strip()
            layers[index] = (name or f"layer{index}", count)
        elif m := _TOTAL.match(line):
            total = int(m.group(1))
        elif m := _STACK.match(line):
            stack_peak = int(m.group(1))
        elif line.startswith("MBGEN_ERROR "):
            errors.append(line.removeprefix("MBGEN_ERROR ").strip())
        elif line.startswith("FAULT ") and fault is None:
            fault = line
    return ConsoleReport([layers[i] for i in sorted(layers)], total, errors, fault,
                         stack_peak)
