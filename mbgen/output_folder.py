"""The user's output folder: mbgen writes only the files it generates and removes only its own.

A generated folder's report.json lists the files mbgen wrote there. On a rerun mbgen replaces
exactly the files it generates again, removes those of the previous list it no longer
generates, and never touches anything else: not the user's files, not subfolders. ``--force``
only allows writing into a non-empty folder mbgen did not make; even then a user's file in
the way is an error, never overwritten. Folders that are never a sensible destination (``/``,
the home folder, a folder holding ``.git``) are refused outright.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from mbgen.errors import UserError

GENERATOR_TAG = "mbgen"
REPORT = "report.json"


@dataclass(frozen=True)
class FolderChange:
    """What installing a generated folder did."""

    out_dir: Path
    written: tuple[str, ...]    # files written (new or replacing our own)
    replaced: tuple[str, ...]   # of those, files of the previous mbgen run
    removed: tuple[str, ...]    # files of the previous run no longer generated
    untouched: int              # other entries of the folder, left as they were

    def summary(self) -> str:
        """One line: what was replaced, removed and left alone."""
        if not self.replaced and not self.removed:
            text = f"wrote {len(self.written)} files"
        else:
            text = f"replaced {len(self.replaced)} files of the previous mbgen run"
            new = len(self.written) - len(self.replaced)
            if new:
                text += f", added {new}"
            if self.removed:
                text += f", removed {len(self.removed)} no longer generated " \
                        f"({', '.join(self.removed)})"
        if self.untouched:
            text += f"; left {self.untouched} other entries untouched"
        return text


def _is_plain_name(name: object) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and "\\" not in name and "\0" not in name)


def previous_files(out_dir: Path) -> list[str] | None:
    """The files the previous mbgen run wrote here, from its report.json; None when the
    folder holds no report of ours. Only plain file names count (never paths)."""
    try:
        report = json.loads((out_dir / REPORT).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("generator") != GENERATOR_TAG:
        return None
    files = report.get("files", [])
    listed = [f for f in files if _is_plain_name(f)] if isinstance(files, list) else []
    return listed + ([REPORT] if REPORT not in listed else [])


def check_destination(out_dir: Path, force: bool) -> None:
    """Refuse, before any slow work, a destination mbgen must not write into."""
    resolved = out_dir.resolve()
    if resolved == Path(resolved.anchor):
        raise UserError(f"refusing to write into {out_dir}: it is the file system root")
    if resolved == Path.home().resolve():
        raise UserError(f"refusing to write into {out_dir}: it is your home folder; "
                        "choose a folder of its own with -o")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output path {out_dir} exists and is not a folder")
    if not out_dir.is_dir():
        return
    if (out_dir / ".git").exists():
        raise UserError(f"refusing to write into {out_dir}: it holds a .git (a repository "
                        "root); choose a subfolder with -o")
    if previous_files(out_dir) is None and any(out_dir.iterdir()) and not force:
        raise UserError(f"output folder {out_dir} is not empty and was not made by mbgen; "
                        "choose another -o, or pass --force to add mbgen's files to it "
                        "(nothing of yours is removed or overwritten)")


def install(staging: Path, out_dir: Path, files: list[str], force: bool) -> FolderChange:
    """Copy ``files`` from ``staging`` into ``out_dir`` under the rules above."""
    check_destination(out_dir, force)
    previous = set(previous_files(out_dir) or []) if out_dir.is_dir() else set()
    in_the_way = [f for f in files if _occupied(out_dir / f)
                  and (f not in previous or not _is_file(out_dir / f))]
    if in_the_way:
        raise UserError(f"refusing to overwrite {', '.join(sorted(in_the_way))} in {out_dir}: "
                        "not written by mbgen; move it away or choose another -o")
    stale = sorted(f for f in previous - set(files) if _is_file(out_dir / f))
    out_dir.mkdir(parents=True, exist_ok=True)
    # Record ownership of every file about to be written before writing it, so that an
    # interrupted run leaves no file of ours unlisted.
    _write_atomically(out_dir / REPORT, _report_listing(staging, sorted(previous | set(files))))
    for name in files:
        if name != REPORT:
            _copy_atomically(staging / name, out_dir / name)
    _copy_atomically(staging / REPORT, out_dir / REPORT)
    for name in stale:
        (out_dir / name).unlink()
    untouched = sum(1 for entry in out_dir.iterdir() if entry.name not in files)
    return FolderChange(out_dir, tuple(files), tuple(f for f in files if f in previous),
                        tuple(stale), untouched)


def _occupied(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _is_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _report_listing(staging: Path, files: list[str]) -> str:
    report = json.loads((staging / REPORT).read_text())
    report["files"] = files
    return json.dumps(report, indent=2) + "\n"


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.mbgen-tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _copy_atomically(source: Path, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.mbgen-tmp")
    shutil.copyfile(source, temporary)
    os.replace(temporary, path)
