"""`mbgen run OUT`: what a generated folder was compiled for, and running it there."""

from __future__ import annotations

import json
import re
from pathlib import Path

from mbgen import targets
from mbgen.errors import UserError
from mbgen.runner.host import run_host
from mbgen.runner.qemu import run_qemu
from mbgen.runner.result import RunResult
from mbgen.targets import Target

_INPUT_SIZE = re.compile(r"^\s*#\s*define\s+(\w+)_INPUT_SIZE\s+\(?\s*(\d+)", re.MULTILINE)


def read_report(out_dir: Path) -> dict:
    """The folder's report.json; UserError when it is missing or unreadable."""
    report_file = Path(out_dir) / "report.json"
    try:
        report = json.loads(report_file.read_text())
    except FileNotFoundError:
        raise UserError(f"{out_dir} has no report.json; is it a folder written by "
                        "`mbgen compile`?") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {report_file}: {exc}") from None
    if not isinstance(report, dict):
        raise UserError(f"{report_file} is not a report written by `mbgen compile`")
    return report


def folder_target(out_dir: Path) -> Target:
    """The target named by the folder's report.json."""
    report_file = Path(out_dir) / "report.json"
    report = read_report(out_dir)
    name = report.get("target")
    if not isinstance(name, str):
        raise UserError(f"{report_file} names no target")
    return targets.get(name)


def input_size(out_dir: Path) -> int | None:
    """<PREFIX>_INPUT_SIZE from the folder's header, or None when no header defines one."""
    sizes = {int(m.group(2)) for header in sorted(Path(out_dir).glob("*.h"))
             for m in _INPUT_SIZE.finditer(header.read_text(errors="replace"))}
    return sizes.pop() if len(sizes) == 1 else None


def run_folder(out_dir: Path, qemu: bool = True, input_bytes: bytes | None = None,
               timeout: float = 120.0, build_dir: Path | None = None) -> RunResult:
    """Build and run a generated folder: in QEMU for a Cortex-M target (unless ``qemu`` is
    False), natively otherwise. ``input_bytes`` None means an all-zero input."""
    out_dir = Path(out_dir)
    target = folder_target(out_dir)
    expected = input_size(out_dir)
    if input_bytes is None:
        if expected is None:
            raise UserError(f"cannot tell the input size of {out_dir}; pass an input file")
        input_bytes = bytes(expected)
    elif expected is not None and len(input_bytes) != expected:
        raise UserError(f"the input has {len(input_bytes)} bytes but the model in {out_dir} "
                        f"takes {expected}")
    if qemu and target.runs_in_qemu:
        return run_qemu(out_dir, target, input_bytes, timeout, build_dir=build_dir)
    return run_host(out_dir, input_bytes, timeout, build_dir=build_dir)
