"""Build a generated folder with the system C compiler and run it natively."""

from __future__ import annotations

import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mbgen import progress, targets
from mbgen.errors import RunFailure
from mbgen.runner import tools
from mbgen.runner.build import (compile_once, default_build_dir, folder_sources, header_files,
                                library_inputs)
from mbgen.runner.result import RunResult, parse_console


def build_host(out_dir: Path, build_dir: Path | None = None, *,
               extra_sources: Sequence[Path] = (), include_dirs: Sequence[Path] = (),
               extra_cflags: Sequence[str] = (), cmsis_nn: Path | None = None) -> Path:
    """Compile the folder (its main.c included) with the host's cc; returns the executable.

    Flags are the host target's (C99, -O2); nothing is written into ``out_dir``. A folder
    calling CMSIS-NN gets its sources from ``cmsis_nn`` (default: $CMSIS_NN_PATH).
    """
    out_dir = Path(out_dir)
    host = targets.get("host")
    lib_sources, lib_includes = library_inputs(out_dir, host, cmsis_nn)
    sources = folder_sources(out_dir) + [Path(p) for p in extra_sources] + lib_sources
    build_dir = Path(build_dir) if build_dir else default_build_dir(out_dir, "host")
    exe = build_dir / "model_host"
    includes = [out_dir, *map(Path, include_dirs), *lib_includes]
    command = [tools.host_cc(), *host.cflags, *extra_cflags,
               *(f"-I{d}" for d in includes), *map(str, sources), "-o", str(exe),
               *host.ldflags]
    compile_once(command, sources + header_files(includes), exe, f"{out_dir} for the host")
    return exe


def run_host(out_dir: Path, input_bytes: bytes, timeout: float = 60, *,
             build_dir: Path | None = None) -> RunResult:
    """Build (if needed) and run the folder's program on ``input_bytes``."""
    exe = build_host(out_dir, build_dir)
    with tempfile.TemporaryDirectory(prefix="mbgen-run-") as tmp:
        run_dir = Path(tmp)
        (run_dir / "input.bin").write_bytes(input_bytes)
        progress.command([str(exe), "input.bin", "output.bin"], cwd=run_dir)
        try:
            proc = subprocess.run([str(exe), "input.bin", "output.bin"], cwd=run_dir,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RunFailure(f"the host build of {out_dir} did not finish within "
                             f"{timeout:g} s (hang?)") from None
        console = proc.stdout
        report = parse_console(console)
        if proc.returncode < 0:
            try:
                name = signal.Signals(-proc.returncode).name
            except ValueError:
                name = f"signal {-proc.returncode}"
            raise RunFailure(f"the host build of {out_dir} crashed ({name})")
        if proc.returncode != 0:
            why = "; ".join(report.errors) or console.strip()[-300:] or "no output"
            raise RunFailure(f"the host build of {out_dir} failed (exit {proc.returncode}): {why}")
        output_file = run_dir / "output.bin"
        if not output_file.is_file():
            raise RunFailure(f"the host build of {out_dir} wrote no output file")
        return RunResult(output=output_file.read_bytes(), total_instructions=None,
                         layer_instructions=[], stdout=console)
