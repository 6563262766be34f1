"""Targets load from targets/*.toml with the budgets of their parts and runnable QEMU boards."""

from __future__ import annotations

import shutil
import subprocess
from fractions import Fraction

import pytest

from mbgen import targets
from mbgen.errors import UserError

KIB = 1024

# name: (part, RAM, flash, QEMU board) -- the datasheet budgets the brief asks for
EXPECTED = {
    "cortex-m7": ("STM32F746NG", 320 * KIB, 1024 * KIB, "mps2-an500"),
    "cortex-m4": ("STM32F411RE", 128 * KIB, 512 * KIB, "mps2-an386"),
    "cortex-m33": ("STM32L552ZE", 256 * KIB, 512 * KIB, "mps2-an505"),
    "cortex-m55": ("Arm Corstone-300 / MPS3 AN547", 512 * KIB, 2048 * KIB, "mps3-an547"),
    "cortex-m3": ("STM32F103ZE", 64 * KIB, 512 * KIB, "mps2-an385"),
}
QEMU_TARGETS = sorted(EXPECTED)


def test_all_targets_are_the_five_cores_and_the_host():
    assert targets.names() == ["host", "cortex-m3", "cortex-m33", "cortex-m4", "cortex-m55",
                               "cortex-m7"]
    assert [t.name for t in targets.all_targets() if t.is_host] == ["host"]


@pytest.mark.parametrize("name", QEMU_TARGETS)
def test_budgets_and_boards_match_the_parts(name):
    part, ram, flash, machine = EXPECTED[name]
    t = targets.get(name)
    assert (t.part, t.ram_bytes, t.flash_bytes, t.qemu_machine) == (part, ram, flash, machine)
    assert t.core == name and t.runs_in_qemu and not t.is_host
    assert t.linker_script_path is not None and t.linker_script_path.is_file()


@pytest.mark.parametrize("name", QEMU_TARGETS)
def test_compiler_flags_describe_the_core(name):
    t = targets.get(name)
    assert f"-mcpu={name}" in t.cflags and "-mthumb" in t.cflags
    assert {"-ffunction-sections", "-fdata-sections"} <= set(t.cflags)
    assert "-Wl,--gc-sections" in t.ldflags
    assert any(f in ("-O2", "-O3") for f in t.cflags)
    hard_float = "-mfloat-abi=hard" in t.cflags
    assert hard_float == (t.fpu != "none")
    if t.fpu not in ("none",) and name != "cortex-m55":  # M55: -mfpu=auto, from -mcpu
        assert f"-mfpu={t.fpu}" in t.cflags


def test_feature_flags():
    dsp = {t.name for t in targets.all_targets() if t.dsp}
    mve = {t.name for t in targets.all_targets() if t.mve}
    assert dsp == {"cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55"}
    assert mve == {"cortex-m55"}
    assert targets.get("cortex-m3").fpu == "none"


def test_host_has_no_budget_and_no_board():
    host = targets.get("host")
    assert host.is_host and not host.runs_in_qemu
    assert host.ram_bytes == 0 and host.flash_bytes == 0
    assert host.linker_script_path is None


@pytest.mark.parametrize("name", QEMU_TARGETS)
def test_icount_shift_gives_at_least_one_tick_per_instruction(name):
    t = targets.get(name)
    tick_ns = Fraction(10**9, t.qemu_clock_hz)
    assert 2**t.icount_shift >= tick_ns > 2**(t.icount_shift - 1)
    assert t.instructions_per_tick == tick_ns / 2**t.icount_shift
    assert Fraction(1, 2) < t.instructions_per_tick <= 1


def test_qemu_clocks_are_the_board_sysclks():
    # QEMU: hw/arm/mps2.c SYSCLK_FRQ 25 MHz; mps2-tz.c AN505 20 MHz, AN547 32 MHz.
    clocks = {t.qemu_machine: t.qemu_clock_hz for t in targets.all_targets() if t.runs_in_qemu}
    assert clocks == {"mps2-an385": 25_000_000, "mps2-an386": 25_000_000,
                      "mps2-an500": 25_000_000, "mps2-an505": 20_000_000,
                      "mps3-an547": 32_000_000}


def test_unknown_target_is_a_user_error_listing_the_known_ones():
    with pytest.raises(UserError, match=r"unknown target 'cortex-m99'; known targets: host, .*cortex-m7"):
        targets.get("cortex-m99")


def test_targets_are_frozen_and_hashable():
    t = targets.get("cortex-m7")
    with pytest.raises(AttributeError):
        t.ram_bytes = 1  # type: ignore[misc]
    assert len({t, targets.get("cortex-m7")}) == 1


GOOD = """
name = "{name}"
core = "cortex-m4"
description = "d"
part = "p"
ram_bytes = 1024
flash_bytes = 2048
dsp = true
mve = false
fpu = "none"
cflags = ["-O2"]
ldflags = []
qemu_machine = ""
linker_script = ""
"""


def test_load_target_reads_a_minimal_file(tmp_path):
    path = tmp_path / "board.toml"
    path.write_text(GOOD.format(name="board"))
    t = targets.load_target(path)
    assert (t.name, t.ram_bytes, t.cflags, t.qemu_cpu, t.is_host) == ("board", 1024, ("-O2",),
                                                                       None, False)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace("ram_bytes = 1024\n", ""), "missing key.*ram_bytes"),
    (lambda s: s + "colour = 'red'\n", "unknown key.*colour"),
    (lambda s: s.replace("ram_bytes = 1024", "ram_bytes = '1 KB'"), "ram_bytes has the wrong"),
    (lambda s: s.replace("dsp = true", "dsp = 1"), "dsp has the wrong"),
    (lambda s: s.replace('name = "board"', 'name = "other"'), "differs from the file name"),
    (lambda s: s.replace('qemu_machine = ""', 'qemu_machine = "mps2-an386"'),
     "needs qemu_clock_hz"),
    (lambda s: s.replace("[", "", 1), "cannot read target file"),
])
def test_malformed_target_files_are_user_errors(tmp_path, edit, message):
    path = tmp_path / "board.toml"
    path.write_text(edit(GOOD.format(name="board")))
    with pytest.raises(UserError, match=message):
        targets.load_target(path)


@pytest.mark.skipif(shutil.which("qemu-system-arm") is None, reason="qemu-system-arm missing")
def test_installed_qemu_has_every_board():
    listing = subprocess.run(["qemu-system-arm", "-M", "help"], capture_output=True,
                             text=True).stdout
    boards = {line.split()[0] for line in listing.splitlines()[1:] if line.strip()}
    assert {targets.get(n).qemu_machine for n in QEMU_TARGETS} <= boards


# What each part's FPU/vector unit really is (datasheets), as the compiler's own predefined
# macros must see it with the target's flags: __ARM_FP 4 = single precision only, 14 = half,
# single and double; no __ARM_FP = no FPU; __ARM_FEATURE_MVE 3 = Helium integer + float.
PART_FEATURES = {
    "cortex-m7": {"__ARM_FP": "4", "__ARM_FEATURE_MVE": None},    # STM32F746: FPv5-SP
    "cortex-m4": {"__ARM_FP": "4", "__ARM_FEATURE_MVE": None},    # STM32F411: FPv4-SP
    "cortex-m33": {"__ARM_FP": "4", "__ARM_FEATURE_MVE": None},   # STM32L552: FPv5-SP
    "cortex-m3": {"__ARM_FP": None, "__ARM_FEATURE_MVE": None},   # STM32F103: no FPU
    "cortex-m55": {"__ARM_FP": "14", "__ARM_FEATURE_MVE": "3"},   # Corstone-300: MVE + FP
}


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="needs arm-none-eabi-gcc")
@pytest.mark.parametrize("name", QEMU_TARGETS)
def test_flags_give_the_parts_fpu(name, tmp_path):
    source = tmp_path / "empty.c"
    source.write_text("int x;\n")
    proc = subprocess.run(["arm-none-eabi-gcc", *targets.get(name).cflags, "-dM", "-E",
                           str(source)], capture_output=True, text=True, check=True)
    macros = dict(line.split()[1:3] for line in proc.stdout.splitlines()
                  if len(line.split()) >= 3)
    for macro, want in PART_FEATURES[name].items():
        assert macros.get(macro) == want, (name, macro)
