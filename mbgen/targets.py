"""Compilation targets, one TOML file each in ``targets/``.

A target couples a core's compiler flags with the memory budget of a real part (what the
compiler checks a model against) and the QEMU board that runs it (see ``firmware/``).
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import MISSING, dataclass, fields
from fractions import Fraction
from pathlib import Path

from mbgen import PROJECT_ROOT, TARGETS_DIR
from mbgen.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class Target:
    name: str
    core: str                       # "cortex-m7", ... or "host"
    description: str
    part: str                       # the real part whose RAM/flash budget this is
    ram_bytes: int                  # 0: no budget (host)
    flash_bytes: int                # 0: no budget (host)
    dsp: bool                       # Armv7E-M / v8-M DSP (SIMD) instructions
    mve: bool                       # Helium (M-profile vector extension)
    fpu: str                        # "none", "fpv4-sp-d16", ...
    cflags: tuple[str, ...]         # architecture and optimisation flags for every C file
    ldflags: tuple[str, ...]
    qemu_machine: str               # "" when QEMU cannot run it
    linker_script: str              # relative to the project root; "" for the host
    qemu_cpu: str | None = None
    qemu_clock_hz: int | None = None  # the board's SYSCLK, which clocks SysTick
    is_host: bool = False

    @property
    def runs_in_qemu(self) -> bool:
        return bool(self.qemu_machine) and not self.is_host

    @property
    def linker_script_path(self) -> Path | None:
        return PROJECT_ROOT / self.linker_script if self.linker_script else None

    @property
    def icount_shift(self) -> int:
        """QEMU ``-icount shift``: the smallest S with 2**S ns per instruction >= one tick.

        Then every SysTick reading pins the instruction count down to one instruction.
        """
        if not self.qemu_clock_hz:
            raise ValueError(f"target {self.name} has no QEMU clock")
        return max(0, math.ceil(math.log2(1e9 / self.qemu_clock_hz)))

    @property
    def instructions_per_tick(self) -> Fraction:
        """Instructions per SysTick tick under ``-icount shift=icount_shift``."""
        return Fraction(10**9, self.qemu_clock_hz * 2**self.icount_shift)


_REQUIRED = {f.name for f in fields(Target) if f.default is MISSING}
_KNOWN = {f.name for f in fields(Target)}


def _check_type(path: Path, key: str, value: object, expected: type | tuple[type, ...]) -> None:
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise UserError(f"target file {path}: {key} has the wrong type ({type(value).__name__})")


def load_target(path: Path) -> Target:
    """One target from its TOML file; UserError naming the file and key if it is malformed."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"cannot read target file {path}: {exc}") from None
    unknown = sorted(set(data) - _KNOWN)
    if unknown:
        raise UserError(f"target file {path}: unknown key(s) {', '.join(unknown)}")
    missing = sorted(_REQUIRED - set(data))
    if missing:
        raise UserError(f"target file {path}: missing key(s) {', '.join(missing)}")
    for key in ("name", "core", "description", "part", "fpu", "qemu_machine", "linker_script"):
        _check_type(path, key, data[key], str)
    for key in ("ram_bytes", "flash_bytes"):
        _check_type(path, key, data[key], int)
    for key in ("dsp", "mve"):
        _check_type(path, key, data[key], bool)
    for key in ("cflags", "ldflags"):
        _check_type(path, key, data[key], list)
        for flag in data[key]:
            _check_type(path, key, flag, str)
    if "qemu_cpu" in data:
        _check_type(path, "qemu_cpu", data["qemu_cpu"], str)
    if "qemu_clock_hz" in data:
        _check_type(path, "qemu_clock_hz", data["qemu_clock_hz"], int)
    if "is_host" in data:
        _check_type(path, "is_host", data["is_host"], bool)
    if data["name"] != path.stem:
        raise UserError(f"target file {path}: name {data['name']!r} differs from the file name")
    target = Target(**{**data, "cflags": tuple(data["cflags"]),
                       "ldflags": tuple(data["ldflags"])})
    if target.runs_in_qemu and not (target.qemu_clock_hz and target.linker_script):
        raise UserError(f"target file {path}: a QEMU target needs qemu_clock_hz and "
                        "linker_script")
    return target


@functools.lru_cache(maxsize=None)
def _load_all(directory: Path) -> dict[str, Target]:
    targets = [load_target(p) for p in sorted(directory.glob("*.toml"))]
    return {t.name: t for t in targets}


def all_targets() -> list[Target]:
    """Every target in ``targets/``, host first, then by name."""
    return sorted(_load_all(TARGETS_DIR).values(), key=lambda t: (not t.is_host, t.name))


def names() -> list[str]:
    return [t.name for t in all_targets()]


def get(name: str) -> Target:
    """The target called ``name``; UserError listing the known ones otherwise."""
    known = _load_all(TARGETS_DIR)
    if name not in known:
        raise UserError(f"unknown target {name!r}; known targets: {', '.join(names())}")
    return known[name]
