"""What a board harness printed over its UART (templates/boards/board_main.c.j2):

    MBGEN_BOARD <board> <part> sysclk_hz=<hz> (<how the clock was set>)
    MBGEN_LAYER <index> <cycles> <layer name>
    MBGEN_TOTAL <cycles>
    MBGEN_OUTPUT <offset> <hex bytes>
    MBGEN_TOP5 <index>:<value> ...
    MBGEN_EXIT <status>

plus "MBGEN_ERROR <why>" and the fault handler's "FAULT ..." line. Pure functions of text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mbgen.runner.result import parse_console

_OUTPUT = re.compile(r"^MBGEN_OUTPUT (\d+) ([0-9a-f]*)$")
_TOP = re.compile(r"^MBGEN_TOP5((?: \d+:-?\d+)*)$")
_EXIT = re.compile(r"^MBGEN_EXIT (\d+)$")
EXIT_MARK = "MBGEN_EXIT "


@dataclass(frozen=True)
class BoardReport:
    board_line: str | None                 # the MBGEN_BOARD line, without its tag
    layers: list[tuple[str, int]]          # (layer name, cycles)
    total_cycles: int | None
    output: bytes | None                   # None when the lines are missing or have gaps
    top: list[tuple[int, int]] = field(default_factory=list)   # (index, value), best first
    exit_status: int | None = None
    errors: list[str] = field(default_factory=list)
    fault: str | None = None


def parse_board_console(text: str) -> BoardReport:
    common = parse_console(text)
    chunks: dict[int, bytes] = {}
    board_line = None
    top: list[tuple[int, int]] = []
    exit_status = None
    for raw in text.splitlines():
        line = raw.strip()
        if m := _OUTPUT.match(line):
            chunks[int(m.group(1))] = bytes.fromhex(m.group(2))
        elif m := _TOP.match(line):
            top = [(int(i), int(v)) for i, v in
                   (pair.split(":") for pair in m.group(1).split())]
        elif m := _EXIT.match(line):
            exit_status = int(m.group(1))
        elif line.startswith("MBGEN_BOARD "):
            board_line = line.removeprefix("MBGEN_BOARD ")
    return BoardReport(board_line, common.layers, common.total, _join(chunks), top,
                       exit_status, common.errors, common.fault)


def _join(chunks: dict[int, bytes]) -> bytes | None:
    data = b""
    for offset in sorted(chunks):
        if offset != len(data):
            return None     # a line was lost
        data += chunks[offset]
    return data if chunks else None


def top_k(values, k: int = 5) -> list[tuple[int, int]]:
    """The board harness's ranking: highest value first, ties by the lower index."""
    order = sorted(range(len(values)), key=lambda i: (-int(values[i]), i))
    return [(i, int(values[i])) for i in order[:k]]
