"""Build generated folders and run them: natively with the host cc, or in QEMU (Cortex-M).

``run_host(out_dir, input_bytes)`` and ``run_qemu(out_dir, target, input_bytes, timeout)``
return a ``RunResult``; ``run_folder`` picks the target from the folder's report.json.
"""

from mbgen.runner.firmware import FirmwareBuild, build_firmware
from mbgen.runner.folder import folder_target, input_size, run_folder
from mbgen.runner.host import build_host, run_host
from mbgen.runner.qemu import run_elf, run_qemu
from mbgen.runner.result import RunResult, parse_console

__all__ = ["FirmwareBuild", "RunResult", "build_firmware", "build_host", "folder_target",
           "input_size", "parse_console", "run_elf", "run_folder", "run_host", "run_qemu"]
