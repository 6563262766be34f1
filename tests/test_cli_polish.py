"""CLI polish (issue 14, item 5): examples in --help, --json, -v, progress only on a terminal."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from mbgen import progress
from mbgen.cli import build_parser


def mbgen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mbgen.cli", *args], capture_output=True,
                          text=True, timeout=600)


def test_every_command_has_an_example_in_its_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"compile", "run", "verify", "bench", "models", "targets"} <= set(sub.choices)
    for name, command in sub.choices.items():
        text = command.format_help()
        assert "example:" in text and f"mbgen {name}" in text.split("example:")[1], name


def test_status_line_only_on_a_terminal(monkeypatch):
    for status, drawn in ((True, True), (False, False)):
        err = io.StringIO()
        monkeypatch.setattr(sys, "stderr", err)
        progress.configure(verbose=False, status=status)
        with progress.stage("calibrating"):
            progress.update("image 3")
        progress.command(["cc", "-O2", "a file.c"])
        assert ("\r" in err.getvalue()) is drawn
        assert ("mbgen: calibrating... image 3" in err.getvalue()) is drawn
        assert "cc -O2" not in err.getvalue()
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    progress.configure(verbose=True, status=False)
    progress.command(["cc", "-O2", "a file.c"])
    assert err.getvalue() == "+ cc -O2 'a file.c'\n"
    progress.configure()


@pytest.mark.slow
def test_json_and_verbose_in_a_pipe(tmp_path):
    out = str(tmp_path / "m")
    proc = mbgen("compile", "mbv1_0.25_96", "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["model"] == "mbv1_0.25_96" and summary["layers"] >= 28
    assert summary["preprocessing"]["input_range"] == "-1,1"
    assert "\r" not in proc.stderr            # no status line in a pipe
    proc = mbgen("run", out, "--host", "--json", "-v")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert len(result["output"]) == 1000 and len(result["top"]) == 5
    commands = [line for line in proc.stderr.splitlines() if line.startswith("+ ")]
    assert any(" -o " in c and "model_host" in c for c in commands), proc.stderr   # the build
    assert any("input.bin output.bin" in c for c in commands), proc.stderr          # the run
    assert "\r" not in proc.stderr
    proc = mbgen("verify", "mbv1_0.25_96", "--count", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    verdict = json.loads(proc.stdout)
    assert verdict["ok"] is True and verdict["comparisons"][0]["exact"] is True
