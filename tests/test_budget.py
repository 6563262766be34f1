"""Budgets that tell the truth: RAM is everything the model needs (arena, the caller's
buffers, statics, stack), flash is weights + model code without the example harness, both
checked against what the real toolchain linked."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from mbgen import targets
from mbgen.compiler import CompileOptions, emit
from mbgen.errors import UserError
from mbgen.runner import build_firmware, run_elf

pytestmark = [pytest.mark.qemu,
              pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None,
                                 reason="needs arm-none-eabi-gcc")]


def elf_symbol(elf, name: str) -> int:
    out = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True,
                         check=True).stdout
    values = [int(line.split()[0], 16) for line in out.splitlines() if line.endswith(" " + name)]
    assert len(values) == 1, name
    return values[0]


def test_mbv1_128_over_a_ram_budget_once_everything_is_counted(prepared, tmp_path):
    model = prepared("mbv1_0.25_128")
    # The caller's buffers (--io external) count beside the arena.
    with pytest.raises(UserError, match=r"needs at least 1\d\d\d\d\d bytes of RAM .*"
                                        r"arena .* \+ input\+output 50152\) .*bytes over"):
        emit(model, CompileOptions(target="cortex-m4", out_dir=tmp_path / "m4", io="external",
                                   stream=False,
                                   ram_bytes=100_000))
    assert not (tmp_path / "m4").exists()

    # With the budget lifted, the figure it would have needed equals the linked firmware.
    compiled = emit(model, CompileOptions(target="cortex-m4", out_dir=tmp_path / "m4",
                                          ram_bytes=1 << 20, io="external", stream=False))
    memory = compiled.report["memory"]
    assert memory["sram_bytes"] > 100_000
    firmware = build_firmware(tmp_path / "m4", targets.get("cortex-m4"), tmp_path / "build")
    stack_reserve = elf_symbol(firmware.elf, "MBGEN_STACK_SIZE")
    linked = firmware.bss + firmware.data + stack_reserve
    print(f"summary RAM {memory['sram_bytes']} B, firmware .bss {firmware.bss} + .data "
          f"{firmware.data} + stack {stack_reserve} = {linked} B")
    assert 0 <= linked - memory["sram_bytes"] <= 1024
    assert memory["stack_bytes"] > 0 and memory["stack_bounded"]
    # The call-graph bound holds in a real run: QEMU's peak (painted stack read back) fits
    # the reserve sized from it.
    run = run_elf(firmware.elf, targets.get("cortex-m4"), bytes(128 * 128 * 3))
    print(f"stack: measured peak {run.stack_peak_bytes} B, reserve {stack_reserve} B, model "
          f"bound {memory['stack_bytes']} B")
    assert 0 < run.stack_peak_bytes <= stack_reserve
    # Flash: the example harness (main.c, firmware/) is not the model's.
    harness = firmware.flash_bytes - memory["flash_bytes"]
    print(f"flash: model {memory['flash_bytes']} B, whole example firmware "
          f"{firmware.flash_bytes} B")
    assert 0 < harness < 8192
    assert memory["flash_bytes"] == memory["weights_bytes"] + memory["code_bytes"]
    report = json.loads((tmp_path / "m4" / "report.json").read_text())
    assert report["memory"] == memory
    assert report["build"]["cflags"][:4] == list(targets.get("cortex-m4").cflags[:4])
    assert "-mfpu=fpv4-sp-d16" in (tmp_path / "m4" / "model.h").read_text()
