"""What a linked firmware really uses: bytes per object from the linker map, and the worst-case
stack of a call chain from GCC's call graph (``-fcallgraph-info=su``).

Both read files the real toolchain wrote; nothing here estimates. Pure functions of text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# Output sections whose bytes sit in flash (.data is copied from flash to RAM at reset).
FLASH_SECTIONS = (".vectors", ".text", ".ARM.exidx", ".rodata", ".data")
RAM_SECTIONS = (".data", ".bss")

# A callee the call graph has no frame for (newlib-nano's memcpy/memset/strlen, libgcc
# helpers): leaf routines that push at most a few registers.
UNKNOWN_CALLEE_BYTES = 32


@dataclass(frozen=True)
class InputSection:
    output: str     # the output section it was placed in (.text, .bss, ...)
    size: int
    origin: str     # the object file (or archive(member)) it came from


def map_input_sections(map_text: str) -> list[InputSection]:
    """Every input section GNU ld placed, from the "Linker script and memory map" part of a
    map file (discarded sections are listed before it and are skipped)."""
    start = map_text.find("Linker script and memory map")
    if start < 0:
        return []
    placed: list[InputSection] = []
    output: str | None = None
    pending: str | None = None      # an input section whose sizes are on the next line
    for line in map_text[start:].splitlines():
        parts = line.split()
        if not parts:
            continue
        if not line[0].isspace():
            # An output section: ".text  0x00000040  0x2405c", or its name alone when long.
            output = parts[0] if parts[0].startswith(".") else None
            pending = None
            continue
        if line[1:2].strip():       # one leading space: an input section line
            if len(parts) >= 4 and _hex(parts[1]) and _hex(parts[2]):
                _record(placed, output, parts[2], " ".join(parts[3:]), parts[0])
                pending = None
            elif len(parts) == 1:
                pending = parts[0]
            else:
                pending = None
            continue
        if pending and len(parts) >= 3 and _hex(parts[0]) and _hex(parts[1]):
            _record(placed, output, parts[1], " ".join(parts[2:]), pending)
        pending = None
    return placed


def _hex(token: str) -> bool:
    return token.startswith("0x")


def _record(placed: list[InputSection], output: str | None, size: str, origin: str,
            name: str) -> None:
    if output is None or name == "*fill*":
        return
    placed.append(InputSection(output, int(size, 16), origin))


def bytes_by(sections: Iterable[InputSection], outputs: tuple[str, ...],
             belongs: Callable[[str], bool]) -> int:
    """Bytes of the input sections in ``outputs`` whose origin ``belongs``."""
    return sum(s.size for s in sections if s.output in outputs and belongs(s.origin))


# ----------------------------------------------------------------------------- stack

_NODE = re.compile(r'node:\s*\{\s*title:\s*"([^"]*)"\s*label:\s*"([^"]*)"')
_EDGE = re.compile(r'edge:\s*\{\s*sourcename:\s*"([^"]*)"\s*targetname:\s*"([^"]*)"')
_FRAME = re.compile(r"\\n(\d+) bytes \(([a-z,]+)\)")


@dataclass(frozen=True)
class CallGraph:
    frames: dict[str, int]             # function -> its own frame bytes (defined functions)
    unbounded: frozenset[str]          # functions whose frame is dynamic (alloca, VLAs)
    calls: dict[str, tuple[str, ...]]  # function -> callees


def parse_call_graphs(texts: Iterable[str]) -> CallGraph:
    """Merge the ``.ci`` files of several translation units into one call graph."""
    frames: dict[str, int] = {}
    unbounded: set[str] = set()
    calls: dict[str, list[str]] = {}
    for text in texts:
        for title, label in _NODE.findall(text):
            frame = _FRAME.search(label)
            if frame:  # a definition; declarations ("shape: ellipse") carry no size
                frames[title] = int(frame.group(1))
                if "dynamic" in frame.group(2) and "bounded" not in frame.group(2):
                    unbounded.add(title)
        for source, target in _EDGE.findall(text):
            calls.setdefault(source, [])
            if target not in calls[source]:
                calls[source].append(target)
    return CallGraph(frames, frozenset(unbounded),
                     {k: tuple(v) for k, v in calls.items()})


@dataclass(frozen=True)
class StackUse:
    bytes: int
    bounded: bool        # False: a cycle, a dynamic frame or an unknown non-runtime callee
    chain: tuple[str, ...]


def worst_stack(graph: CallGraph, root: str) -> StackUse:
    """The deepest stack of any call chain from ``root``: the sum of the frames on it.

    Unknown callees count UNKNOWN_CALLEE_BYTES; recursion makes the figure a lower bound."""
    memo: dict[str, StackUse] = {}

    def visit(name: str, active: frozenset[str]) -> StackUse:
        if name in memo:
            return memo[name]
        if name in active:
            return StackUse(0, False, (name,))
        if name not in graph.frames:
            return StackUse(UNKNOWN_CALLEE_BYTES, _is_runtime(name), (name,))
        best = StackUse(0, True, ())
        deepest = 0
        bounded = name not in graph.unbounded
        for callee in graph.calls.get(name, ()):
            use = visit(callee, active | {name})
            bounded = bounded and use.bounded
            if use.bytes > deepest:
                deepest, best = use.bytes, use
        result = StackUse(graph.frames[name] + deepest, bounded, (name, *best.chain))
        memo[name] = result
        return result

    return visit(root, frozenset())


def _is_runtime(name: str) -> bool:
    """C runtime leaf routines the compiler calls on its own (their frames are tiny)."""
    return name.startswith("__aeabi_") or name in {"memcpy", "memset", "memmove", "strlen"}
