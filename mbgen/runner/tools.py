"""Finding the external tools a run needs; a missing one is the user's to install."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

from mbgen.errors import UserError

APT_HINT = ("install it with: apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi "
            "qemu-system-arm")


def require(program: str, hint: str = APT_HINT) -> str:
    """Absolute path of ``program`` on PATH; UserError with ``hint`` when it is missing."""
    path = shutil.which(program)
    if path is None:
        raise UserError(f"{program} not found on PATH; {hint}")
    return path


def host_cc() -> str:
    """The host C compiler: $CC, else cc."""
    compiler = os.environ.get("CC", "cc")
    return require(compiler.split()[0], "install a C compiler (apt-get install gcc) or set CC")


def arm_gcc() -> str:
    return require("arm-none-eabi-gcc")


def arm_size() -> str:
    return require("arm-none-eabi-size")


@functools.lru_cache(maxsize=None)
def check_newlib_nano(gcc: str) -> None:
    """newlib-nano (memcpy, memset, ...) comes in its own Debian package."""
    found = subprocess.run([gcc, "-print-file-name=nano.specs"], capture_output=True,
                           text=True).stdout.strip()
    if not Path(found).is_absolute() or not Path(found).is_file():
        raise UserError(f"newlib-nano for arm-none-eabi-gcc not found; {APT_HINT}")


def qemu_arm() -> str:
    return require("qemu-system-arm")


@functools.lru_cache(maxsize=None)
def qemu_machines(qemu: str) -> frozenset[str]:
    """Board names this qemu-system-arm knows (``-M help``)."""
    listing = subprocess.run([qemu, "-M", "help"], capture_output=True, text=True).stdout
    return frozenset(line.split()[0] for line in listing.splitlines()[1:] if line.strip())


def require_machine(qemu: str, machine: str, target_name: str) -> None:
    if machine not in qemu_machines(qemu):
        raise UserError(f"this qemu-system-arm has no board {machine!r}, so target "
                        f"{target_name} cannot run in QEMU here; a newer QEMU has it")
