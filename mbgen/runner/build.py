"""Building a generated folder: sources, build directories and skipping unchanged rebuilds."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from mbgen import progress
from mbgen.errors import RunFailure, UserError


def folder_sources(out_dir: Path) -> list[Path]:
    """The generated folder's C files; UserError if it is not one."""
    if not out_dir.is_dir():
        raise UserError(f"{out_dir} is not a folder (expected one written by `mbgen compile`)")
    sources = sorted(out_dir.glob("*.c"))
    if not any(p.name == "main.c" for p in sources):
        raise UserError(f"{out_dir} has no main.c to run; compile the model again with mbgen")
    return sources


# Cached builds kept under ~/.cache/mbgen/build, oldest dropped first; one in use within the
# last CACHE_GRACE_SECONDS is never dropped (another process may be building or running it).
CACHE_ENTRIES = 32
CACHE_GRACE_SECONDS = 600


def default_build_dir(out_dir: Path, flavour: str) -> Path:
    """A per-folder cache under ~/.cache/mbgen: builds never go into the user's folder.

    Reusing it skips rebuilding an unchanged folder; the cache keeps the CACHE_ENTRIES most
    recently used builds, so temporary folders (``mbgen verify``) do not pile up.
    """
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mbgen" / "build"
    key = hashlib.sha256(str(out_dir.resolve()).encode()).hexdigest()[:16]
    build_dir = cache / f"{out_dir.resolve().name}-{flavour}-{key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    os.utime(build_dir)  # mark as recently used
    _prune(cache, keep=build_dir)
    return build_dir


def _last_used(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile by another process
        return 0.0


def _prune(cache: Path, keep: Path) -> None:
    entries = sorted((p for p in cache.iterdir() if p.is_dir() and p != keep),
                     key=_last_used, reverse=True)
    now = time.time()
    for old in entries[CACHE_ENTRIES - 1:]:
        if now - _last_used(old) > CACHE_GRACE_SECONDS:
            shutil.rmtree(old, ignore_errors=True)


def inputs_digest(command: Sequence[str], files: Sequence[Path]) -> str:
    """Hash of a build command and the contents of every file it reads."""
    digest = hashlib.sha256()
    for part in command:
        digest.update(part.encode() + b"\0")
    for path in files:
        digest.update(str(path).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def header_files(directories: Sequence[Path]) -> list[Path]:
    return sorted(p for d in directories for p in d.glob("*.h"))


def compile_once(command: list[str], inputs: Sequence[Path], product: Path,
                 what: str) -> None:
    """Run ``command`` to make ``product`` unless the same command and inputs made it last."""
    stamp = product.with_name(product.name + ".inputs")
    digest = inputs_digest(command, inputs)
    if product.is_file() and stamp.is_file() and stamp.read_text() == digest:
        return
    product.parent.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    progress.command(command)
    with progress.stage(f"building {what}"):
        proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        shown = "\n".join(lines[:30]) + ("\n..." if len(lines) > 30 else "")
        raise RunFailure(f"building {what} failed:\n{shown}")
    stamp.write_text(digest)


def library_inputs(out_dir: Path, target, cmsis_nn: Path | None = None
                   ) -> tuple[list[Path], list[Path]]:
    """Sources and include dirs of the libraries a folder's kernels call, from its report.json:
    CMSIS-NN for layers of kernel set cmsis-nn (the tree ``cmsis_nn``, else $CMSIS_NN_PATH;
    UserError when neither is set)."""
    try:
        report = json.loads((Path(out_dir) / "report.json").read_text())
    except (OSError, ValueError):
        return [], []
    from mbgen.codegen import cmsis_nn_library
    if not isinstance(report, dict) or not cmsis_nn_library.uses_library(report):
        return [], []
    library = cmsis_nn_library.library_build(target, cmsis_nn)
    return list(library.sources), list(library.include_dirs)


def library_cflags(out_dir: Path, target, cmsis_nn: Path | None = None) -> list[str]:
    """Compiler flags the folder's libraries need on ``target`` (after the target's own)."""
    try:
        report = json.loads((Path(out_dir) / "report.json").read_text())
    except (OSError, ValueError):
        return []
    from mbgen.codegen import cmsis_nn_library
    if not isinstance(report, dict) or not cmsis_nn_library.uses_library(report):
        return []
    return list(cmsis_nn_library.library_build(target, cmsis_nn).cflags)
