"""What a compiled model needs in RAM and flash, against the target's budget.

RAM counts everything the model needs: the arena, the caller's input and output buffers
(none with ``--io arena``: they are arena bytes, counted once), any
other static RAM of the model's code and the worst-case stack of ``<name>_invoke``. Flash
counts the weights and the model's code with the libraries it calls, not the example harness.
Before the firmware is linked only the arena, buffers and weights are known; the linked
figures (``mbgen.runner.firmware.ModelMemory``) complete them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mbgen.errors import UserError


@dataclass(frozen=True)
class Budget:
    target: str
    ram_bytes: int     # 0: unlimited (the host)
    flash_bytes: int


def budget_for(target, ram_override: int | None, flash_override: int | None) -> Budget:
    ram = ram_override if ram_override is not None else target.ram_bytes
    flash = flash_override if flash_override is not None else target.flash_bytes
    return Budget(target.name, int(ram or 0), int(flash or 0))


@dataclass(frozen=True)
class MemoryUse:
    arena_bytes: int
    io_bytes: int                  # the caller's input + output buffers (0: in the arena)
    weights_bytes: int
    other_static_ram_bytes: int = 0   # model statics besides the arena (linked figure)
    stack_bytes: int | None = None    # worst-case chain from <name>_invoke (linked figure)
    stack_bounded: bool = True
    code_bytes: int | None = None     # model code + called libraries (linked figure)

    @property
    def measured(self) -> bool:
        return self.code_bytes is not None

    @property
    def sram_bytes(self) -> int:
        return (self.arena_bytes + self.io_bytes + self.other_static_ram_bytes
                + (self.stack_bytes or 0))

    @property
    def flash_bytes(self) -> int:
        return self.weights_bytes + (self.code_bytes or 0)

    def linked(self, model_memory) -> "MemoryUse":
        """These figures completed from the linked firmware's ``ModelMemory``."""
        return replace(
            self,
            other_static_ram_bytes=max(0, model_memory.static_ram_bytes - self.arena_bytes),
            stack_bytes=model_memory.stack_bytes, stack_bounded=model_memory.stack_bounded,
            code_bytes=max(0, model_memory.flash_bytes - self.weights_bytes))


class BudgetOverflow(UserError):
    """The model does not fit; ``kind`` is "RAM" or "flash", ``needed`` the bytes it needs."""

    def __init__(self, message: str, kind: str, needed: int) -> None:
        super().__init__(message)
        self.kind = kind
        self.needed = needed


def check(use: MemoryUse, budget: Budget) -> None:
    """BudgetOverflow saying by how much, for RAM first, then flash."""
    if budget.ram_bytes and use.sram_bytes > budget.ram_bytes:
        at_least = "" if use.measured else "at least "
        raise BudgetOverflow(
            f"model does not fit {budget.target}: it needs {at_least}{use.sram_bytes} bytes of "
            f"RAM ({ram_parts(use)}) but the budget is {budget.ram_bytes} bytes "
            f"({at_least}{use.sram_bytes - budget.ram_bytes} bytes over); use a smaller model "
            "or --ram", "RAM", use.sram_bytes)
    if budget.flash_bytes and use.flash_bytes > budget.flash_bytes:
        what = "weights + code" if use.measured else "weights"
        raise BudgetOverflow(
            f"model does not fit {budget.target}: {what} need {use.flash_bytes} bytes of "
            f"flash but the budget is {budget.flash_bytes} bytes "
            f"({use.flash_bytes - budget.flash_bytes} bytes over); use a smaller model or "
            "--flash", "flash", use.flash_bytes)


def ram_parts(use: MemoryUse) -> str:
    parts = [f"arena {use.arena_bytes}", f"input+output {use.io_bytes}"]
    if use.other_static_ram_bytes:
        parts.append(f"other statics {use.other_static_ram_bytes}")
    if use.stack_bytes is not None:
        parts.append(f"stack {use.stack_bytes}")
    return " + ".join(parts)


def as_report(use: MemoryUse, budget: Budget) -> dict:
    """The ``memory`` section of report.json."""
    return {
        "sram_bytes": use.sram_bytes,
        "arena_bytes": use.arena_bytes,
        "io_bytes": use.io_bytes,
        "other_static_ram_bytes": use.other_static_ram_bytes,
        "stack_bytes": use.stack_bytes,
        "stack_bounded": use.stack_bounded,
        "flash_bytes": use.flash_bytes if use.measured else None,
        "weights_bytes": use.weights_bytes,
        "code_bytes": use.code_bytes,
        "ram_budget_bytes": budget.ram_bytes or None,
        "flash_budget_bytes": budget.flash_bytes or None,
        "ram_left_bytes": budget.ram_bytes - use.sram_bytes if budget.ram_bytes else None,
        "flash_left_bytes": (budget.flash_bytes - use.flash_bytes
                             if budget.flash_bytes and use.measured else None),
    }
