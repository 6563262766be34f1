"""Run a firmware image in QEMU with semihosting and count its instructions."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from mbgen import progress
from mbgen.errors import RunFailure
from mbgen.runner import tools
from mbgen.runner.firmware import build_firmware
from mbgen.runner.result import RunResult, parse_console
from mbgen.targets import Target

# The status firmware/startup.c exits with after a fault (MBGEN_FW_EXIT_FAULT).
FAULT_EXIT_STATUS = 250


def qemu_command(target: Target, elf: Path) -> list[str]:
    """qemu-system-arm for ``target``'s board, run from the directory holding the files.

    -icount: virtual time advances 2**shift ns per instruction, independent of the host,
    so SysTick readings count instructions and runs are deterministic. The firmware's
    semihosting console goes to console.txt, apart from QEMU's own messages.
    """
    qemu = tools.qemu_arm()
    tools.require_machine(qemu, target.qemu_machine, target.name)
    command = [qemu, "-M", target.qemu_machine]
    if target.qemu_cpu:
        command += ["-cpu", target.qemu_cpu]
    command += [
        "-display", "none", "-serial", "null", "-monitor", "none",
        "-chardev", "file,id=mbgen_console,path=console.txt",
        "-semihosting-config",
        "enable=on,target=native,chardev=mbgen_console,"
        "arg=firmware,arg=input.bin,arg=output.bin",
        "-icount", f"shift={target.icount_shift},align=off,sleep=off",
        "-kernel", str(elf),
    ]
    return command


def run_elf(elf: Path, target: Target, input_bytes: bytes, timeout: float = 120) -> RunResult:
    """Run a built firmware on ``input_bytes``; RunFailure on a fault, hang or error exit."""
    label = f"{target.name} firmware in QEMU {target.qemu_machine}"
    command = qemu_command(target, Path(elf).resolve())
    with tempfile.TemporaryDirectory(prefix="mbgen-qemu-") as tmp:
        run_dir = Path(tmp)
        (run_dir / "input.bin").write_bytes(input_bytes)
        console_file = run_dir / "console.txt"
        progress.command(command, cwd=run_dir)
        try:
            with progress.stage(f"running in QEMU {target.qemu_machine}"):
                proc = subprocess.run(command, cwd=run_dir, stdin=subprocess.DEVNULL,
                                      capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            console = _read(console_file)
            tail = f"; last output: {console.strip().splitlines()[-1]}" if console.strip() else ""
            raise RunFailure(f"{label} did not finish within {timeout:g} s (hang?){tail}") from None
        console = _read(console_file)
        report = parse_console(console)
        if report.fault is not None:
            raise RunFailure(f"{label} faulted: {report.fault}")
        if proc.returncode == FAULT_EXIT_STATUS:
            raise RunFailure(f"{label} faulted (exit {FAULT_EXIT_STATUS}); console: "
                             f"{console.strip()[-300:]}")
        if proc.returncode != 0:
            why = "; ".join(report.errors)
            qemu_says = proc.stderr.strip()
            if not why:
                why = (qemu_says[-500:] or console.strip()[-300:] or "no output")
            raise RunFailure(f"{label} failed (exit {proc.returncode}): {why}")
        output_file = run_dir / "output.bin"
        if not output_file.is_file():
            raise RunFailure(f"{label} wrote no output file")
        if report.total is None:
            raise RunFailure(f"{label} printed no MBGEN_TOTAL line; console: "
                             f"{console.strip()[-300:]}")
        return RunResult(output=output_file.read_bytes(), total_instructions=report.total,
                         layer_instructions=report.layers, stdout=console,
                         stack_peak_bytes=report.stack_peak)


def run_qemu(out_dir: Path, target: Target, input_bytes: bytes, timeout: float = 120, *,
             build_dir: Path | None = None) -> RunResult:
    """Build the folder for ``target`` (unless unchanged) and run it once in QEMU."""
    build = build_firmware(Path(out_dir), target, build_dir)
    return run_elf(build.elf, target, input_bytes, timeout)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
