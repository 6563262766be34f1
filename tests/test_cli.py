"""The `mbgen` command as a user runs it: summaries, exit codes, one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn


def mbgen(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mbgen.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def assert_user_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_compile_host_prints_summary_of_paper_magnitude(tmp_path):
    proc = mbgen("compile", "mbv1_0.25_128", "--target", "host", "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    print(proc.stdout)
    fields = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines()[1:]}
    assert 13.0 <= float(fields["MACs"]) <= 14.5          # paper: about 14 M mult-adds
    assert 0.45 <= float(fields["params"]) <= 0.49        # paper: 0.47 M parameters
    assert int(fields["layers"]) >= 28
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"] == "mbv1_0.25_128" and report["target"] == "host"
    assert {"arena_bytes", "weights_bytes", "macs", "params", "layers"} <= set(report)
    # Per-layer calibrated ranges are reported, and always include 0 (int8.md).
    for layer in report["layers"]:
        q = layer["output_quant"]
        assert q["min"] <= 0.0 <= q["max"] and q["scale"] > 0, layer["name"]


def test_refuses_to_overwrite_a_folder_it_did_not_make(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    proc = mbgen("compile", "mbv1_0.25_96", "-o", str(out))
    assert_user_error(proc, "--force")
    assert (out / "notes.txt").read_text() == "precious"
    assert mbgen("compile", "mbv1_0.25_96", "-o", str(out), "--force").returncode == 0
    # Its own folder it may regenerate without --force.
    assert mbgen("compile", "mbv1_0.25_96", "-o", str(out)).returncode == 0


def test_unknown_model_suggests_close_names():
    assert_user_error(mbgen("compile", "mbv1_0.25_129"), "mbv1_0.25_128")


def test_missing_model_file():
    assert_user_error(mbgen("compile", "no/such/model.tflite"), "not found")


def test_unknown_target_lists_known_ones():
    assert_user_error(mbgen("compile", "mbv1_0.25_96", "--target", "cortex-z9"), "cortex-m7")


def test_unsupported_layer_is_named(tmp_path):
    class Leaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.act = nn.LeakyReLU()

        def forward(self, x):
            return self.act(self.conv(x))

    path = tmp_path / "leaky.pt2"
    torch.export.save(torch.export.export(Leaky().eval(), (torch.zeros(1, 3, 8, 8),)), path)
    assert_user_error(mbgen("compile", str(path), "-o", str(tmp_path / "o")), "LeakyReLU", "act")


def test_corrupt_model_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage" * 10)
    assert_user_error(mbgen("compile", str(bad), "-o", str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def test_models_and_targets_listed():
    models = mbgen("models")
    assert models.returncode == 0 and "mbv2_0.35_96" in models.stdout.split()
    targets = mbgen("targets")
    assert targets.returncode == 0
    for name in ("cortex-m7", "cortex-m4", "cortex-m33", "cortex-m55", "cortex-m3", "host"):
        assert name in targets.stdout
    assert "320.0 KB" in targets.stdout and "1024.0 KB" in targets.stdout  # STM32F746 budget


def test_bad_arguments_exit_2():
    proc = mbgen("compile")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("qemu-system-arm") is None, reason="no qemu-system-arm")
def test_verify_on_cortex_m_compares_host_qemu_and_numpy():
    proc = mbgen("verify", "mbv1_0.25_96", "--target", "cortex-m4", "--count", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for what in ("host C vs numpy", "QEMU cortex-m4 vs numpy", "QEMU vs host C",
                 "int8 vs float model"):
        assert what in proc.stdout
    assert "0 mismatched" in proc.stdout


def test_verify_with_tflm_reference_prints_both_arenas(shared_dir):
    model = shared_dir / "models" / "person_detect.tflite"
    proc = mbgen("verify", str(model), "--target", "host", "--reference", "tflm",
                 "--images", str(shared_dir / "images"), "--count", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "host C vs TFLM" in proc.stdout
    # Like with like: TFLM's arena holds the input and output, so ours is shown with them.
    line = next(l for l in proc.stdout.splitlines() if l.strip().startswith("RAM:"))
    assert "arena + input/output" in line and "TFLM arena (input and output inside) 85264" in line
    assert "0 mismatched" in proc.stdout


def test_run_on_a_host_folder_with_qemu_is_refused_and_pipes_close_quietly(tmp_path):
    out = tmp_path / "host"
    assert mbgen("compile", "mbv1_0.25_96", "--target", "host", "-o", str(out)).returncode == 0
    assert_user_error(mbgen("run", str(out), "--qemu"), "host", "--host")
    # `mbgen run OUT | head`: the reader is gone before mbgen writes a line.
    proc = subprocess.Popen([sys.executable, "-m", "mbgen.cli", "run", str(out), "--host"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=600) == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
