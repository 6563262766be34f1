"""Building a board folder with its own Makefile, and booting the image in QEMU where a
QEMU machine models the part (netduinoplus2: STM32F405)."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from mbgen import boards
from mbgen.boards import Board
from mbgen.errors import RunFailure, UserError
from mbgen.runner import tools
from mbgen.runner.board_console import EXIT_MARK, BoardReport, parse_board_console
from mbgen.runner.build import default_build_dir


@dataclass(frozen=True)
class BoardImage:
    elf: Path
    bin: Path      # the bytes that go to flash at 0x08000000


def folder_board(out_dir: Path) -> Board:
    """The board a folder was compiled for (report.json's "board"); UserError otherwise."""
    try:
        report = json.loads((Path(out_dir) / "report.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"{out_dir} has no readable report.json; is it a folder written by "
                        "`mbgen compile --board`?") from None
    entry = report.get("board") if isinstance(report, dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise UserError(f"{out_dir} was not compiled for a board; compile it with "
                        f"--board ({', '.join(boards.names())})")
    return boards.get(entry["name"])


_UNSIGNED_OUTPUT = re.compile(r"^\s*#\s*define\s+\w+_OUTPUT_TYPE\s+uint8_t", re.MULTILINE)


def output_is_unsigned(out_dir: Path) -> bool:
    """True for a uint8 output interface (model.h's <PREFIX>_OUTPUT_TYPE)."""
    return any(_UNSIGNED_OUTPUT.search(h.read_text(errors="replace"))
               for h in sorted(Path(out_dir).glob("*.h")))


def make_command(out_dir: Path, build_dir: Path) -> list[str]:
    return ["make", "-C", str(out_dir), f"BUILD={build_dir}"]


def build_image(out_dir: Path, build_dir: Path | None = None) -> BoardImage:
    """``make`` in the folder (its own Makefile, the user's build), into ``build_dir``
    (default: mbgen's cache, so nothing is added to the folder)."""
    out_dir = Path(out_dir)
    folder_board(out_dir)
    build_dir = Path(build_dir) if build_dir else default_build_dir(out_dir, "board")
    tools.require("make", "install it with: apt-get install make")
    tools.arm_gcc()
    proc = subprocess.run(make_command(out_dir, build_dir.resolve()), capture_output=True,
                          text=True)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise RunFailure(f"make in {out_dir} failed:\n" + "\n".join(lines[-30:]))
    return BoardImage(build_dir / "firmware.elf", build_dir / "firmware.bin")


def qemu_command(board: Board, image: Path) -> list[str]:
    """QEMU's model of the part, the console UART on stdout, booting ``image`` (the raw
    flash bytes, loaded at 0: the flash alias the part boots from)."""
    qemu = tools.qemu_arm()
    tools.require_machine(qemu, board.qemu_machine, board.name)
    serials = ["-serial", "null"] * board.qemu_serial_index + ["-serial", "stdio"]
    return [qemu, "-M", board.qemu_machine, "-display", "none", "-monitor", "none",
            *serials, "-kernel", str(image)]


def read_until_exit(stream, deadline: float) -> tuple[str, bool]:
    """Text from a console ``stream`` (binary, unbuffered) until the harness's exit line or
    ``deadline`` (time.monotonic()); returns it and whether the exit line came."""
    data = b""
    fd = stream.fileno()
    while True:
        text = data.decode(errors="replace")
        if EXIT_MARK in text and text.rstrip(" ").endswith(("\n", "\r")):
            return text, True
        left = deadline - time.monotonic()
        if left <= 0:
            return text, False
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                return data.decode(errors="replace"), False
            data += chunk


def run_in_qemu(image: Path, board: Board, timeout: float = 60) -> BoardReport:
    """Boot ``image`` on the board's QEMU machine and parse its console; the board sleeps
    after its exit line, so QEMU is stopped then."""
    if not board.qemu_machine:
        raise UserError(f"QEMU has no model of {board.name}'s {board.part}; flash it with "
                        "`mbgen flash`")
    command = qemu_command(board, Path(image).resolve())
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        text, finished = read_until_exit(proc.stdout, time.monotonic() + timeout)
    finally:
        proc.kill()
        _, stderr = proc.communicate()
    report = parse_board_console(text)
    label = f"{board.name} image in QEMU {board.qemu_machine}"
    if report.fault is not None:
        raise RunFailure(f"{label} faulted: {report.fault}")
    if not finished:
        tail = (text.strip().splitlines() or [stderr.decode(errors='replace').strip()])[-1:]
        raise RunFailure(f"{label} printed no MBGEN_EXIT within {timeout:g} s; "
                         f"last output: {tail[0] if tail else 'none'}")
    if report.exit_status != 0:
        raise RunFailure(f"{label} exited {report.exit_status}: "
                         f"{'; '.join(report.errors) or 'no reason given'}")
    if report.output is None:
        raise RunFailure(f"{label} printed no complete output")
    return report
