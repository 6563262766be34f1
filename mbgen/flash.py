"""`mbgen flash OUT`: build a board folder with its Makefile, flash it with the user's pyOCD or
OpenOCD, and read what the board prints over its console UART (pyserial).

Nothing here talks to hardware before every tool and the serial port are known to exist: a
missing one is a one-line user error. ``--dry-run`` prints the exact commands instead.
"""

from __future__ import annotations

import shlex
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from mbgen.boards import Board
from mbgen.errors import RunFailure, UserError
from mbgen.runner.board import BoardImage, build_image, folder_board, make_command
from mbgen.runner.board_console import EXIT_MARK, BoardReport, parse_board_console
from mbgen.runner.build import default_build_dir

PROBES = ("pyocd", "openocd")
BAUD = 115200
_INSTALL = {"pyocd": "install it with: pip install pyocd (then once: pyocd pack install {pack})",
            "openocd": "install it with: apt-get install openocd"}


def probe_command(board: Board, probe: str, elf: Path) -> list[str]:
    """Program ``elf`` into the board's flash, verify, reset and run it."""
    if probe == "pyocd":
        # The part's CMSIS pack names the target; pyOCD resets the core after loading.
        return ["pyocd", "flash", "--target", board.pyocd_target, str(elf)]
    if probe == "openocd":
        command = ["openocd"]
        for config in board.openocd_configs:
            command += ["-f", config]
        return command + ["-c", f"program {elf} verify reset exit"]
    raise UserError(f"unknown probe {probe!r}; use one of {', '.join(PROBES)}")


def planned_commands(out_dir: Path, probe: str) -> list[list[str]]:
    """The build and flash commands ``mbgen flash`` runs, in order."""
    board = folder_board(out_dir)
    build_dir = default_build_dir(Path(out_dir), "board").resolve()
    return [make_command(Path(out_dir), build_dir),
            probe_command(board, probe, build_dir / "firmware.elf")]


def _require_probe(board: Board, probe: str) -> None:
    if shutil.which(probe) is None:
        raise UserError(f"{probe} not found on PATH; "
                        + _INSTALL[probe].format(pack=board.pyocd_pack))


def _open_port(board: Board, port: str | None):
    if port is None:
        raise UserError(f"no serial port given; pass --port (e.g. /dev/ttyACM0) for "
                        f"{board.name}'s console, {board.console}")
    if not Path(port).exists():
        raise UserError(f"serial port {port} not found; is the board plugged in? "
                        f"({board.name}'s console: {board.console})")
    try:
        import serial  # pyserial, only needed to talk to a real board
    except ImportError:
        raise UserError("pyserial is not installed; install it with: pip install pyserial") \
            from None
    try:
        return serial.Serial(port, BAUD, timeout=0.2)
    except (OSError, serial.SerialException) as exc:
        raise UserError(f"cannot open serial port {port}: {exc}") from None


def read_console(stream, timeout: float) -> str:
    """Lines from an open serial port until the harness's exit line or ``timeout``."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text += stream.read(4096).decode(errors="replace")
        if EXIT_MARK in text and text.rstrip(" ").endswith(("\n", "\r")):
            break
    return text


def flash(out_dir: Path, probe: str = "pyocd", port: str | None = None,
          timeout: float = 60.0, echo: Callable[[str], None] = print) -> BoardReport:
    """Build, flash, and read the result; RunFailure when a step fails on the board."""
    out_dir = Path(out_dir)
    board = folder_board(out_dir)
    _require_probe(board, probe)
    console = _open_port(board, port)
    try:
        image: BoardImage = build_image(out_dir)
        console.reset_input_buffer()   # what the old firmware printed is not this run's
        command = probe_command(board, probe, image.elf)
        echo(f"flashing {board.name}: {shlex.join(command)}")
        import subprocess
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            raise RunFailure(f"{probe} failed (exit {proc.returncode}): "
                             + " | ".join(lines[-5:]))
        text = read_console(console, timeout)
    finally:
        console.close()
    report = parse_board_console(text)
    if report.fault is not None:
        raise RunFailure(f"{board.name} faulted: {report.fault}")
    if report.exit_status is None:
        raise RunFailure(f"{board.name} printed no MBGEN_EXIT on {port} within {timeout:g} s "
                         f"(wrong port, or console not at {BAUD} baud?)")
    if report.exit_status != 0 or report.output is None:
        raise RunFailure(f"{board.name} failed: {'; '.join(report.errors) or 'no output'}")
    return report


def describe(report: BoardReport, signed: bool = True) -> list[str]:
    """The lines `mbgen run` prints, for a board's report (cycles instead of instructions)."""
    import numpy as np
    values = np.frombuffer(report.output or b"", dtype=np.int8 if signed else np.uint8)
    head = " ".join(str(v) for v in values[:16]) + (" ..." if values.size > 16 else "")
    lines = [f"board: {report.board_line}",
             f"output: {values.size} {'int8' if signed else 'uint8'} values: {head}",
             "  top-5: " + ", ".join(f"[{i}] {v}" for i, v in report.top)]
    width = max((len(n) for n, _ in report.layers), default=5)
    for layer, count in report.layers:
        lines.append(f"  {layer:<{width}} {count:>12,d} cycles")
    if report.total_cycles is not None:
        lines.append(f"  {'total':<{width}} {report.total_cycles:>12,d} cycles")
    return lines
