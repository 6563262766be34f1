"""mbgen never destroys a user's files: it writes and removes only what it generated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mbgen import output_folder
from mbgen.errors import UserError


def staged(tmp_path: Path, files: dict[str, str]) -> tuple[Path, list[str]]:
    """A staging folder holding ``files`` and a report.json of ours listing them."""
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    for old in staging.iterdir():
        old.unlink()
    for name, text in files.items():
        (staging / name).write_text(text)
    names = [*files, "report.json"]
    (staging / "report.json").write_text(json.dumps({"generator": "mbgen", "files": names}))
    return staging, names


def user_content(out: Path) -> None:
    (out / "my_main.c").write_text("int main(void) { return 0; }\n")
    (out / "lib").mkdir()
    (out / "lib" / "keep.h").write_text("#define KEEP 1\n")


def test_rerun_replaces_only_its_own_files_and_removes_only_its_stale_ones(tmp_path):
    out = tmp_path / "out"
    staging, files = staged(tmp_path, {"model.c": "v1", "old_kernels.c": "v1"})
    first = output_folder.install(staging, out, files, force=False)
    assert first.summary() == "wrote 3 files"
    user_content(out)
    staging, files = staged(tmp_path, {"model.c": "v2", "new_kernels.c": "v2"})
    change = output_folder.install(staging, out, files, force=False)
    assert (out / "model.c").read_text() == "v2" and (out / "new_kernels.c").is_file()
    assert not (out / "old_kernels.c").exists()
    assert (out / "my_main.c").is_file() and (out / "lib" / "keep.h").is_file()
    assert change.replaced == ("model.c", "report.json") and change.removed == ("old_kernels.c",)
    assert change.summary() == ("replaced 2 files of the previous mbgen run, added 1, removed 1 "
                                "no longer generated (old_kernels.c); left 2 other entries "
                                "untouched")
    assert json.loads((out / "report.json").read_text())["files"] == files


def test_a_foreign_folder_needs_force_and_then_only_gains_files(tmp_path):
    out = tmp_path / "project"
    out.mkdir()
    user_content(out)
    staging, files = staged(tmp_path, {"model.c": "v1"})
    with pytest.raises(UserError, match="--force"):
        output_folder.install(staging, out, files, force=False)
    change = output_folder.install(staging, out, files, force=True)
    assert (out / "my_main.c").is_file() and (out / "lib" / "keep.h").is_file()
    assert change.untouched == 2


def test_a_user_file_in_the_way_is_never_overwritten_even_with_force(tmp_path):
    out = tmp_path / "project"
    out.mkdir()
    (out / "main.c").write_text("mine")
    staging, files = staged(tmp_path, {"main.c": "generated", "model.c": "generated"})
    with pytest.raises(UserError, match="refusing to overwrite main.c"):
        output_folder.install(staging, out, files, force=True)
    assert (out / "main.c").read_text() == "mine" and not (out / "model.c").exists()


def test_a_doctored_report_cannot_make_mbgen_delete_other_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "precious.txt").write_text("keep")
    (out / "sub").mkdir()
    (out / "sub" / "x.c").write_text("keep")
    (out / "report.json").write_text(json.dumps(
        {"generator": "mbgen", "files": ["../precious.txt", "sub", "sub/x.c", "/etc/hostname"]}))
    staging, files = staged(tmp_path, {"model.c": "v1"})
    output_folder.install(staging, out, files, force=False)
    assert (tmp_path / "precious.txt").read_text() == "keep"
    assert (out / "sub" / "x.c").read_text() == "keep"


def test_root_home_and_repositories_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    for folder, why in ((Path("/"), "root"), (tmp_path / "home", "home folder"),
                        (tmp_path / "repo", ".git")):
        for force in (False, True):
            with pytest.raises(UserError, match=why):
                output_folder.check_destination(folder, force)


# ----------------------------------------------------------------------------- the command


def mbgen(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mbgen.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600, env={**os.environ, **(env or {})})


def one_line_error(proc: subprocess.CompletedProcess, words: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and words in proc.stderr, proc.stderr


def test_compile_keeps_users_files_and_refuses_dangerous_folders(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    user_content(work)
    # -o . in a folder of other files: refused without --force, and nothing is touched.
    proc = mbgen("compile", "mbv1_0.25_96", "-o", ".", cwd=work)
    one_line_error(proc, "--force")
    # With --force it adds its files and keeps the user's, subfolder included.
    proc = mbgen("compile", "mbv1_0.25_96", "-o", ".", "--force", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert (work / "my_main.c").is_file() and (work / "lib" / "keep.h").is_file()
    assert (work / "model.c").is_file()
    # A rerun without --force (the folder is now ours) replaces only mbgen's files.
    proc = mbgen("compile", "mbv1_0.25_96", "-o", ".", "--name", "net", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "removed 6 no longer generated" in proc.stdout and "untouched" in proc.stdout
    assert not (work / "model.c").exists() and (work / "net.c").is_file()
    assert (work / "my_main.c").is_file() and (work / "lib" / "keep.h").is_file()
    # $HOME and a repository root are refused with one line, before any slow work.
    home = tmp_path / "home"
    home.mkdir()
    one_line_error(mbgen("compile", "mbv1_0.25_96", "-o", str(home), "--force", cwd=work,
                         env={"HOME": str(home)}), "home folder")
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    one_line_error(mbgen("compile", "mbv1_0.25_96", "-o", str(tmp_path / "repo"), "--force",
                         cwd=work), ".git")
