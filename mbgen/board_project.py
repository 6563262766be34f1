"""The files ``mbgen compile --board B`` adds to a generated folder: a complete firmware
project for the board.

Beside the model's files the folder gets the board port (copied flat from firmware/ and
firmware/boards/, our own code), the board harness as main.c, the input it runs on
(board_input.c: a file compiled into flash, or a test pattern computed on the chip), and a
Makefile, a CMakeLists.txt and an arm-none-eabi-gcc toolchain file that build it. Every one
of them is listed in report.json's "files", so the output-folder rules
(mbgen/output_folder.py) cover them. The sizes mbgen checks come from linking exactly these
files with exactly these flags (mbgen.runner.build_firmware), into regions that cannot
overflow; the budget then compares them with the part.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from mbgen import FIRMWARE_DIR, boards, targets
from mbgen.boards import BOARDS_DIR, Board
from mbgen.errors import UserError

BOARD_HARNESS = "boards/board_main.c.j2"
INPUT_SOURCE = "board_input.c"
TOOLCHAIN_FILE = "arm-none-eabi.cmake"
BUILD_FILES = {"Makefile": "boards/Makefile.j2", "CMakeLists.txt": "boards/CMakeLists.txt.j2",
               TOOLCHAIN_FILE: "boards/arm-none-eabi.cmake.j2"}
# The measuring link's memory map: the STM32's flash and SRAM origins, lengths no model reaches.
MEASURE_SCRIPT = """/* mbgen: measuring link only (the folder's <board>.ld has the real sizes). */
MEMORY
{
    FLASH (rx)  : ORIGIN = 0x08000000, LENGTH = 128M
    SRAM  (rwx) : ORIGIN = 0x20000000, LENGTH = 256M
}
REGION_ALIAS("CODE", FLASH);
REGION_ALIAS("WEIGHTS", FLASH);
REGION_ALIAS("RAM", SRAM);
INCLUDE common.ld
"""
# Defines every board build uses: per-layer cycle counts from the harness's hooks.
BOARD_CFLAGS = ("-DMBGEN_PROFILE",)


def port_files(board: Board) -> dict[str, Path]:
    """Folder name -> source of every board-port file (flat: the folder has no subfolders)."""
    return {
        "mbgen_fw.h": FIRMWARE_DIR / "include" / "mbgen_fw.h",
        "mbgen_startup.c": FIRMWARE_DIR / "startup.c",
        "mbgen_format.c": FIRMWARE_DIR / "format.c",
        "mbgen_board.h": BOARDS_DIR / "mbgen_board.h",
        "mbgen_board.c": BOARDS_DIR / "board_common.c",
        f"mbgen_{board.family}.c": BOARDS_DIR / f"{board.family}.c",
        "mbgen_stm32_gpio.c": BOARDS_DIR / "stm32_gpio.c",  # every family is an STM32F4/F7
        "mbgen_board_config.h": board.directory / "mbgen_board_config.h",
        "common.ld": FIRMWARE_DIR / "ld" / "common.ld",
        linker_script_name(board): board.directory / "memory.ld",
    }


def linker_script_name(board: Board) -> str:
    return f"{board.name}.ld"


def harness_files(board: Board) -> frozenset[str]:
    """Folder C files that are the example firmware, not the model (never counted as its)."""
    return frozenset({"main.c", INPUT_SOURCE}
                     | {name for name in port_files(board) if name.endswith(".c")})


@dataclass(frozen=True)
class BoardProject:
    """A board and the input its harness runs on, for one compile."""

    board: Board
    input_bytes: bytes | None      # None: boards.test_pattern of the model's input size
    input_origin: str              # how the input came about, for the folder's comments

    def generate_options(self) -> dict:
        """What codegen.generate needs to write the board harness as main.c."""
        return {"harness_template": BOARD_HARNESS, "harness_context": {"board": self.board}}

    def write_sources(self, folder: Path, prefix: str, input_tensor) -> list[str]:
        """Copy the board port into ``folder`` and write board_input.c for the model's
        ``input_tensor``; their names."""
        for name, source in port_files(self.board).items():
            shutil.copyfile(source, folder / name)
        size = int(input_tensor.nbytes)
        if self.input_bytes is not None and len(self.input_bytes) != size:
            raise UserError(f"the board input has {len(self.input_bytes)} bytes but the model "
                            f"takes {size}")
        data = self.input_bytes if self.input_bytes is not None else boards.test_pattern(size)
        origin = f"{self.input_origin}, {size} bytes, sha256 {hashlib.sha256(data).hexdigest()}"
        (folder / INPUT_SOURCE).write_text(
            input_source(prefix, self.input_bytes, input_tensor.dtype, origin))
        return [*port_files(self.board), INPUT_SOURCE]

    def platform(self, folder: Path, script_dir: Path):
        """How mbgen.runner.build_firmware measures ``folder``: its own files and flags, linked
        with the part's sections into regions too large to overflow (written to
        ``script_dir``), so a model over the part is refused by the budget with its figures,
        never by a linker error. The folder's Makefile links the real map."""
        from mbgen.runner.firmware import Platform
        script_dir = Path(script_dir)
        script_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(FIRMWARE_DIR / "ld" / "common.ld", script_dir / "common.ld")
        script = script_dir / "measure.ld"
        script.write_text(MEASURE_SCRIPT)
        return Platform(name=self.board.name, sources=(), include_dirs=(),
                        cflags=BOARD_CFLAGS, linker_script=script,
                        harness_files=harness_files(self.board))

    def check_image(self, firmware) -> None:
        """BudgetOverflow when the whole example image (model, harness, port and the input in
        flash) would not fit the part, though the model alone does."""
        from mbgen.budget import BudgetOverflow
        b = self.board
        flash = firmware.text + firmware.data
        ram = firmware.data + firmware.bss + firmware.stack_reserve
        for kind, need, have in (("RAM", ram, b.ram_bytes), ("flash", flash, b.flash_bytes)):
            if need > have:
                raise BudgetOverflow(
                    f"the {b.name} image (model, harness and its input in flash) needs {need} "
                    f"bytes of {kind} but the {b.part} has {have} ({need - have} bytes over); "
                    "use a smaller model", kind, need)

    def write_build_files(self, folder: Path, report: dict, stack_reserve: int) -> list[str]:
        """Makefile, CMakeLists.txt and the toolchain file; ``stack_reserve`` is the main
        stack the link reserves, sized from the call graph of these very sources."""
        from mbgen.codegen.generator import environment
        target = targets.get(self.board.target)
        sources = sorted(p.name for p in Path(folder).glob("*.c"))
        ours = harness_files(self.board)
        # The model's objects link first: the arena then opens .bss (the fastest RAM).
        ordered = ([s for s in sources if s not in ours] + ["main.c", INPUT_SOURCE]
                   + [s for s in port_files(self.board) if s.endswith(".c")])
        context = {
            "board": self.board, "name": report["name"], "sources": ordered,
            "cflags": [*report["build"]["cflags"], *BOARD_CFLAGS],
            "arch_flags": [f for f in target.cflags if f.startswith("-m")],
            "ldflags": ["-nostartfiles", "--specs=nano.specs", *target.ldflags,
                        f"-Wl,--defsym=MBGEN_STACK_SIZE={stack_reserve}"],
            "linker_script": linker_script_name(self.board),
            "stack_reserve": stack_reserve,
        }
        env = environment()
        for name, template in BUILD_FILES.items():
            (Path(folder) / name).write_text(env.get_template(template).render(context))
        report["board"] = self.report_entry(stack_reserve)
        return list(BUILD_FILES)

    def report_entry(self, stack_reserve: int) -> dict:
        b = self.board
        return {"name": b.name, "part": b.part, "description": b.description,
                "ram_bytes": b.ram_bytes, "flash_bytes": b.flash_bytes,
                "sysclk_hz": b.sysclk_hz, "console": b.console,
                "input": self.input_origin, "stack_reserve": stack_reserve}


def input_source(prefix: str, data: bytes | None, dtype: str, origin: str) -> str:
    """board_input.c for ``data`` (raw bytes, read as the model's input ``dtype``, kept in
    flash), or for the test pattern computed at run time when ``data`` is None."""
    import numpy as np

    from mbgen.codegen.generator import environment
    values = (None if data is None
              else np.frombuffer(data, dtype=np.uint8 if dtype == "uint8" else np.int8))
    return environment().get_template("boards/board_input.c.j2").render(
        prefix=prefix, PREFIX=prefix.upper(), origin=origin, values=values)


def for_options(options) -> BoardProject | None:
    """The board project a compile's options ask for (``--board``, ``--input``), or None.

    The board fixes the target (its core): another --target is an error."""
    if not options.board:
        return None
    board = boards.get(options.board)
    if options.target != board.target:
        raise UserError(f"board {board.name} has a {board.target} core; drop --target "
                        f"{options.target} (the board sets it)")
    if options.kernels == "cmsis-nn":
        raise UserError("--board projects build from the folder alone, and CMSIS-NN kernels "
                        "need the library's sources too; use --kernels mbgen or portable")
    if options.board_input is None:
        return BoardProject(board, None, "the fixed test pattern (i * 37 + 11) mod 256")
    path = Path(options.board_input)
    if not path.is_file():
        raise UserError(f"input file not found: {path}")
    return BoardProject(board, path.read_bytes(), f"the bytes of {path.name}")
