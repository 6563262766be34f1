"""Build generated C folders with the host's `cc` and run them, for the codegen tests."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CFLAGS = ("-std=c99", "-O2", "-Wall", "-Wextra", "-Werror")


def host_cc() -> str:
    """The system C compiler, or skip the calling test."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no host C compiler (cc) on PATH")
    return cc


def build(sources: list[Path], include_dirs: list[Path], exe: Path,
          defines: tuple[str, ...] = (), flags: tuple[str, ...] = CFLAGS) -> Path:
    """Compile and link ``sources`` into ``exe``; fail the test with the compiler's output."""
    cmd = [host_cc(), *flags, *(f"-D{d}" for d in defines),
           *(f"-I{d}" for d in include_dirs), *map(str, sources), "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"C build failed ({' '.join(cmd)}):\n{proc.stderr}")
    return exe


def build_folder(out_dir: Path, exe_name: str = "prog", defines: tuple[str, ...] = ()) -> Path:
    """`cc -std=c99 -O2 -Wall -Wextra -Werror -I OUT OUT/*.c`, as a user would build it."""
    return build(sorted(out_dir.glob("*.c")), [out_dir], out_dir / exe_name, defines)


def run(exe: Path, input_bytes: bytes, timeout: float = 60.0) -> bytes:
    """Run a host harness (`prog in.bin out.bin`) and return the output bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.bin", Path(tmp) / "out.bin"
        src.write_bytes(input_bytes)
        proc = subprocess.run([str(exe), str(src), str(dst)], capture_output=True,
                              text=True, timeout=timeout)
        if proc.returncode != 0:
            pytest.fail(f"{exe} exited {proc.returncode}: {proc.stderr}")
        return dst.read_bytes()
