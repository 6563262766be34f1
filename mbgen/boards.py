"""Board ports: a real development board, its part's memory and the core it runs.

A board names its target (targets/*.toml: the core's compiler flags) and carries its part's
own budget and memory map (firmware/boards/<board>/memory.ld), the console UART, and what
pyOCD, OpenOCD and QEMU call it. ``mbgen compile --board B`` writes a complete project for it
(see mbgen/board_project.py); ``mbgen flash`` flashes it (mbgen/flash.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mbgen import FIRMWARE_DIR
from mbgen.errors import UserError

BOARDS_DIR = FIRMWARE_DIR / "boards"


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    part: str
    target: str                 # targets/<target>.toml: core flags
    family: str                 # firmware/boards/<family>.c: clock tree and UART
    flash_bytes: int            # the part's flash (weights, code, .data's initial values)
    ram_bytes: int              # the RAM the firmware's .data, .bss and stack live in
    sysclk_hz: int              # the core clock the port sets up
    console: str                # which UART, on which pins, and how it reaches a computer
    pyocd_target: str           # `pyocd flash --target ...` (from the part's CMSIS pack)
    pyocd_pack: str             # `pyocd pack install ...` fetches that pack once
    openocd_configs: tuple[str, ...]   # `openocd -f ...` files of the Debian package
    qemu_machine: str = ""      # a QEMU machine that models this part ("" if none)
    qemu_serial_index: int = 0  # which -serial QEMU wires to the console UART

    @property
    def directory(self) -> Path:
        return BOARDS_DIR / self.name


_BOARDS = (
    Board(
        name="netduinoplus2",
        description="Netduino Plus 2 (also QEMU's netduinoplus2 machine)",
        part="STM32F405RG", target="cortex-m4", family="stm32f4",
        flash_bytes=1024 * 1024,
        ram_bytes=128 * 1024,      # SRAM1 + SRAM2; the 64 KB CCM is left to the application
        sysclk_hz=168_000_000,
        console="USART6: PC6 = TX (header D1), PC7 = RX (D0); wire a 3.3 V USB-serial adapter",
        pyocd_target="stm32f405rgtx", pyocd_pack="stm32f405rg",
        openocd_configs=("interface/stlink.cfg", "target/stm32f4x.cfg"),
        qemu_machine="netduinoplus2",
        qemu_serial_index=5,       # QEMU's STM32F405 wires serial 0..5 to USART1,2,3,4,5,6
    ),
    Board(
        name="nucleo-f411re",
        description="ST NUCLEO-F411RE",
        part="STM32F411RE", target="cortex-m4", family="stm32f4",
        flash_bytes=512 * 1024,
        ram_bytes=128 * 1024,
        sysclk_hz=100_000_000,
        console="USART2: PA2 = TX, PA3 = RX, the ST-LINK's virtual COM port (USB)",
        pyocd_target="stm32f411retx", pyocd_pack="stm32f411re",
        openocd_configs=("board/st_nucleo_f4.cfg",),
    ),
    Board(
        name="nucleo-f746zg",
        description="ST NUCLEO-F746ZG",
        part="STM32F746ZG", target="cortex-m7", family="stm32f7",
        flash_bytes=1024 * 1024,
        ram_bytes=320 * 1024,      # DTCM 64 KB + SRAM1 240 KB + SRAM2 16 KB, contiguous
        sysclk_hz=216_000_000,
        console="USART3: PD8 = TX, PD9 = RX, the ST-LINK's virtual COM port (USB)",
        pyocd_target="stm32f746zgtx", pyocd_pack="stm32f746zg",
        openocd_configs=("board/st_nucleo_f7.cfg",),
    ),
)


def all_boards() -> list[Board]:
    return sorted(_BOARDS, key=lambda b: b.name)


def names() -> list[str]:
    return [b.name for b in all_boards()]


def get(name: str) -> Board:
    """The board called ``name``; UserError listing the known ones otherwise."""
    for board in _BOARDS:
        if board.name == name:
            return board
    raise UserError(f"unknown board {name!r}; known boards: {', '.join(names())}")


def test_pattern(size: int) -> bytes:
    """The default board input: a fixed ramp through every byte value,
    byte i = (i * 37 + 11) mod 256 (read as int8 or uint8, as the model's input is)."""
    return bytes((i * 37 + 11) % 256 for i in range(size))
