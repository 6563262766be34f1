"""Build a generated folder into a Cortex-M firmware image for QEMU (firmware/ + the folder)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mbgen import FIRMWARE_DIR
from mbgen.errors import RunFailure, UserError
from mbgen.runner import memory, tools
from mbgen.runner.build import (compile_once, default_build_dir, folder_sources, header_files,
                                library_cflags, library_inputs)
from mbgen.targets import Target


@dataclass(frozen=True)
class ModelMemory:
    """What the model's own code takes in the linked firmware (the example harness and
    firmware/ not counted), from the linker map and GCC's call graph."""

    flash_bytes: int      # model code + weights + the library code it calls (CMSIS-NN, libc)
    static_ram_bytes: int  # .data + .bss of the model's files: the arena and any other statics
    stack_bytes: int      # worst-case call chain from <name>_invoke
    stack_bounded: bool   # False when a frame was dynamic or the chain recursed
    stack_chain: tuple[str, ...]


@dataclass(frozen=True)
class FirmwareBuild:
    """An ELF and its section sizes as arm-none-eabi-size reports them (Berkeley format)."""

    elf: Path
    text: int   # code + read-only data (weights): flash
    data: int   # initialised data: flash and RAM
    bss: int    # zeroed data (the arena): RAM, not counting the stack
    stack_reserve: int = 0             # bytes the link reserved for the main stack
    model: ModelMemory | None = None   # None when the folder names no model entry point

    @property
    def flash_bytes(self) -> int:
        return self.text + self.data

    @property
    def ram_bytes(self) -> int:
        return self.data + self.bss


# Exception entry stacks 8 words, 26 with the FPU's lazy context: the SysTick interrupt (the
# instruction counter) lands on top of the deepest chain. Fault reports run on a stack of
# their own (startup.c).
EXCEPTION_FRAME_BYTES = 104
FIRMWARE_ENTRY = "mbgen_fw_start"
INTERRUPT_ENTRY = "mbgen_fw_systick_handler"


@dataclass(frozen=True)
class Platform:
    """What a folder is linked with besides its model: the support sources, their headers,
    defines and memory map. The default is firmware/ for the target's QEMU board; a board
    port (mbgen/board_project.py) brings its own, copied into the folder."""

    name: str
    sources: tuple[Path, ...]          # support C files outside the folder
    include_dirs: tuple[Path, ...]
    cflags: tuple[str, ...]
    linker_script: Path
    harness_files: frozenset[str] = frozenset({"main.c"})   # folder files not the model's


def qemu_platform(target: Target) -> Platform:
    if not target.runs_in_qemu:
        raise UserError(f"target {target.name} has no QEMU board; build it for the host")
    script = target.linker_script_path
    assert script is not None
    return Platform(target.name, tuple(firmware_sources()), (FIRMWARE_DIR / "include",),
                    tuple(firmware_cflags(target)), script)


def firmware_sources() -> list[Path]:
    return sorted(FIRMWARE_DIR.glob("*.c"))


def firmware_cflags(target: Target) -> list[str]:
    """Defines that tell firmware/ and the harness what they run on."""
    per_tick = target.instructions_per_tick
    return ["-DMBGEN_FIRMWARE", "-DMBGEN_PROFILE",
            f"-DMBGEN_INSN_PER_TICK_NUM={per_tick.numerator}u",
            f"-DMBGEN_INSN_PER_TICK_DEN={per_tick.denominator}u"]


def build_firmware(out_dir: Path, target: Target, build_dir: Path | None = None, *,
                   extra_sources: Sequence[Path] = (), include_dirs: Sequence[Path] = (),
                   extra_cflags: Sequence[str] = (),
                   cmsis_nn: Path | None = None,
                   platform: Platform | None = None) -> FirmwareBuild:
    """Compile the folder with firmware/ for ``target``'s QEMU board; returns ELF and sizes.

    Each source becomes its own object (so the linker map tells whose bytes are whose) and
    its call graph (``-fcallgraph-info=su``); the main stack is reserved from that graph.
    ``extra_cflags`` come after the target's, so e.g. ``["-O3"]`` overrides its -O2.
    Unchanged inputs are not rebuilt. Nothing is written into ``out_dir``. A folder calling
    CMSIS-NN gets its sources from ``cmsis_nn`` (default: $CMSIS_NN_PATH). ``platform``
    replaces firmware/ and the QEMU memory map (a board port).
    """
    platform = platform or qemu_platform(target)
    gcc = tools.arm_gcc()
    tools.check_newlib_nano(gcc)
    out_dir = Path(out_dir)
    lib_sources, lib_includes = library_inputs(out_dir, target, cmsis_nn)
    folder = folder_sources(out_dir)
    model_sources = [p for p in folder if p.name not in platform.harness_files] + list(lib_sources)
    harness_sources = ([p for p in folder if p.name in platform.harness_files]
                       + list(platform.sources) + [Path(p) for p in extra_sources])
    build_dir = Path(build_dir) if build_dir else default_build_dir(out_dir, platform.name)
    script = platform.linker_script
    includes = [out_dir, *platform.include_dirs, *map(Path, include_dirs), *lib_includes]
    cflags = [*target.cflags, *platform.cflags,
              *library_cflags(out_dir, target, cmsis_nn), *extra_cflags,
              *(f"-I{d}" for d in includes)]
    headers = header_files(includes)
    # Model objects come first on the link line: the C runtime members they need are
    # reported (and counted) as theirs.
    model_objects = _compile_objects(gcc, cflags, model_sources, headers, build_dir / "model")
    harness_objects = _compile_objects(gcc, cflags, harness_sources, headers,
                                       build_dir / "harness")
    graph = memory.parse_call_graphs(
        o.with_suffix(".ci").read_text() for o in model_objects + harness_objects)
    stack_reserve = _stack_reserve(graph)
    elf = build_dir / "firmware.elf"
    map_file = build_dir / "firmware.map"
    command = [gcc, *target.cflags, *extra_cflags, *map(str, model_objects + harness_objects),
               "-nostartfiles", "--specs=nano.specs", *target.ldflags,
               f"-Wl,--defsym=MBGEN_STACK_SIZE={stack_reserve}",
               f"-L{script.parent}", f"-T{script}", f"-Wl,-Map={map_file}",
               "-o", str(elf), "-lm"]
    compile_once(command, [*model_objects, *harness_objects, *sorted(script.parent.glob("*.ld"))],
                 elf, f"{out_dir} for {target.name}")
    model = _model_memory(map_file.read_text(), graph, set(map(str, harness_objects)),
                          _entry_point(out_dir))
    return FirmwareBuild(elf, *section_sizes(elf), stack_reserve=stack_reserve, model=model)


HARNESS_SOURCE = "main.c"


def _compile_objects(gcc: str, cflags: list[str], sources: Sequence[Path],
                     headers: Sequence[Path], obj_dir: Path) -> list[Path]:
    """One object (and .ci call graph beside it) per source; numbered so that sources of the
    same name from different folders cannot collide."""
    objects = []
    for number, source in enumerate(sources):
        obj = obj_dir / f"{number:03d}-{source.stem}.o"
        command = [gcc, *cflags, "-fcallgraph-info=su", "-c", str(source), "-o", str(obj)]
        compile_once(command, [source, *headers], obj, f"{source.name}")
        objects.append(obj)
    return objects


def _stack_reserve(graph: memory.CallGraph) -> int:
    """The deepest chain from reset through main, plus one exception on top of it."""
    deepest = memory.worst_stack(graph, FIRMWARE_ENTRY).bytes
    interrupt = memory.worst_stack(graph, INTERRUPT_ENTRY).bytes
    return -(-(deepest + EXCEPTION_FRAME_BYTES + interrupt) // 8) * 8


def _entry_point(out_dir: Path) -> str:
    """``<name>_invoke``, the name from the folder's report.json (``model`` without one)."""
    try:
        name = json.loads((out_dir / "report.json").read_text()).get("name", "model")
    except (OSError, ValueError, AttributeError):
        name = "model"
    return f"{name}_invoke"


def _model_memory(map_text: str, graph: memory.CallGraph, harness: set[str],
                  entry: str) -> ModelMemory | None:
    if entry not in graph.frames:
        return None
    sections = memory.map_input_sections(map_text)

    def ours(origin: str) -> bool:  # the model's files, the libraries and C runtime it calls
        return origin not in harness

    stack = memory.worst_stack(graph, entry)
    return ModelMemory(
        flash_bytes=memory.bytes_by(sections, memory.FLASH_SECTIONS, ours),
        static_ram_bytes=memory.bytes_by(sections, memory.RAM_SECTIONS, ours),
        stack_bytes=stack.bytes, stack_bounded=stack.bounded, stack_chain=stack.chain)


def section_sizes(elf: Path) -> tuple[int, int, int]:
    """(text, data, bss) from arm-none-eabi-size."""
    proc = subprocess.run([tools.arm_size(), str(elf)], capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or len(lines) < 2:
        raise RunFailure(f"arm-none-eabi-size could not read {elf}: {proc.stderr.strip()}")
    text, data, bss = (int(v) for v in lines[1].split()[:3])
    return text, data, bss
