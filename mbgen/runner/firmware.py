"""Build a generated folder into a Cortex-M firmware image for QEMU (firmware/ + the folder)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mbgen import FIRMWARE_DIR
from mbgen.errors import RunFailure, UserError
from mbgen.runner import tools
from mbgen.runner.build import (compile_once, default_build_dir, folder_sources, header_files,
                                library_cflags, library_inputs)
from mbgen.targets import Target


@dataclass(frozen=True)
class FirmwareBuild:
    """An ELF and its section sizes as arm-none-eabi-size reports them (Berkeley format)."""

    elf: Path
    text: int   # code + read-only data (weights): flash
    data: int   # initialised data: flash and RAM
    bss: int    # zeroed data (the arena): RAM, not counting the stack

    @property
    def flash_bytes(self) -> int:
        return self.text + self.data

    @property
    def ram_bytes(self) -> int:
        return self.data + self.bss


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
                   cmsis_nn: Path | None = None) -> FirmwareBuild:
    """Compile the folder with firmware/ for ``target``'s QEMU board; returns ELF and sizes.

    ``extra_cflags`` come after the target's, so e.g. ``["-O3"]`` overrides its -O2.
    Unchanged inputs are not rebuilt. Nothing is written into ``out_dir``. A folder calling
    CMSIS-NN gets its sources from ``cmsis_nn`` (default: $CMSIS_NN_PATH).
    """
    if not target.runs_in_qemu:
        raise UserError(f"target {target.name} has no QEMU board; build it for the host")
    gcc = tools.arm_gcc()
    tools.check_newlib_nano(gcc)
    out_dir = Path(out_dir)
    lib_sources, lib_includes = library_inputs(out_dir, target, cmsis_nn)
    sources = (folder_sources(out_dir) + firmware_sources() + [Path(p) for p in extra_sources]
               + lib_sources)
    build_dir = Path(build_dir) if build_dir else default_build_dir(out_dir, target.name)
    elf = build_dir / "firmware.elf"
    script = target.linker_script_path
    assert script is not None
    includes = [out_dir, FIRMWARE_DIR / "include", *map(Path, include_dirs), *lib_includes]
    command = [gcc, *target.cflags, *firmware_cflags(target),
               *library_cflags(out_dir, target, cmsis_nn), *extra_cflags,
               *(f"-I{d}" for d in includes), *map(str, sources),
               "-nostartfiles", "--specs=nano.specs", *target.ldflags,
               f"-L{script.parent}", f"-T{script}", f"-Wl,-Map={build_dir / 'firmware.map'}",
               "-o", str(elf), "-lm"]
    inputs = sources + header_files(includes) + sorted(script.parent.glob("*.ld"))
    compile_once(command, inputs, elf, f"{out_dir} for {target.name}")
    return FirmwareBuild(elf, *section_sizes(elf))


def section_sizes(elf: Path) -> tuple[int, int, int]:
    """(text, data, bss) from arm-none-eabi-size."""
    proc = subprocess.run([tools.arm_size(), str(elf)], capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or len(lines) < 2:
        raise RunFailure(f"arm-none-eabi-size could not read {elf}: {proc.stderr.strip()}")
    text, data, bss = (int(v) for v in lines[1].split()[:3])
    return text, data, bss
