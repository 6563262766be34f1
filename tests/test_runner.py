"""The runner on the host: console parsing, building a folder with cc, running it, and the
errors a user or a broken build meets. The QEMU side is in test_firmware.py.

The folder used here is the Cortex-M harness template (which also builds for the host)
rendered over a hand-written fake model (tests/fixtures/fake_model: output = input + 1).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import jinja2
import numpy as np
import pytest

from mbgen import TEMPLATES_DIR, runner
from mbgen.errors import RunFailure, UserError
from mbgen.runner import build as build_module
from mbgen.runner import tools
from mbgen.runner.result import parse_console

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FAKE_MODEL = FIXTURES / "fake_model"
TRIGGER_FAULT, TRIGGER_HANG, TRIGGER_ERROR = 0x7A, 0x7B, 0x7C

needs_cc = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc").split()[0]) is None,
                              reason="no host C compiler")


def make_fake_folder(folder: Path, target: str) -> Path:
    """A folder shaped like `mbgen compile` output: harness main.c, fake model, report.json."""
    folder.mkdir(parents=True, exist_ok=True)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
                             undefined=jinja2.StrictUndefined, trim_blocks=True)
    main_c = env.get_template("harness/cortexm_main.c.j2").render(
        prefix="model", PREFIX="MODEL", num_layers=3)
    (folder / "main.c").write_text(main_c)
    for name in ("model.c", "model.h"):
        shutil.copy(FAKE_MODEL / name, folder / name)
    (folder / "report.json").write_text(json.dumps({"model": "fake", "target": target}))
    return folder


def plus_one(data: bytes) -> bytes:
    return bytes((b + 1) % 256 for b in data)


SAMPLE = bytes([5, 127, 255, 128, 0]) + bytes((i * 37 + 11) % 256 for i in range(59))


# ----------------------------------------------------------------------------- console


def test_parse_console_reads_layers_total_errors_and_faults():
    report = parse_console(
        "hello\nMBGEN_LAYER 1 200 conv b\nMBGEN_LAYER 0 100 conv_a\n"
        "MBGEN_TOTAL 333\nMBGEN_ERROR bad input\r\n"
        "FAULT HardFault pc=0x00000010 cause=INVSTATE\nFAULT second\n")
    assert report.layers == [("conv_a", 100), ("conv b", 200)]
    assert report.total == 333
    assert report.errors == ["bad input"]
    assert report.fault == "FAULT HardFault pc=0x00000010 cause=INVSTATE"


def test_parse_console_without_profile_lines():
    report = parse_console("nothing to see\n")
    assert (report.layers, report.total, report.errors, report.fault) == ([], None, [], None)


def test_run_result_output_as_int8():
    result = runner.RunResult(output=bytes([0, 127, 128, 255]), total_instructions=None)
    assert result.output_int8().tolist() == [0, 127, -128, -1]
    assert result.output_int8().dtype == np.int8


# ----------------------------------------------------------------------------- host runs


@needs_cc
def test_run_host_computes_the_fake_model(tmp_path):
    folder = make_fake_folder(tmp_path / "out", "host")
    before = sorted(p.name for p in folder.iterdir())
    result = runner.run_host(folder, SAMPLE, build_dir=tmp_path / "build")
    assert result.output == plus_one(SAMPLE)
    assert result.total_instructions is None and result.layer_instructions == []
    # Nothing was built into the user's folder.
    assert sorted(p.name for p in folder.iterdir()) == before
    assert (tmp_path / "build" / "model_host").is_file()


@needs_cc
def test_host_build_is_reused_until_a_source_changes(tmp_path):
    folder = make_fake_folder(tmp_path / "out", "host")
    exe = runner.build_host(folder, tmp_path / "build")
    first = exe.stat().st_mtime_ns
    assert runner.build_host(folder, tmp_path / "build").stat().st_mtime_ns == first
    model_c = folder / "model.c"
    model_c.write_text(model_c.read_text().replace("+ 1u)", "+ 2u)"))
    runner.build_host(folder, tmp_path / "build")
    result = runner.run_host(folder, SAMPLE, build_dir=tmp_path / "build")
    assert result.output == bytes((b + 2) % 256 for b in SAMPLE)


@needs_cc
def test_host_failures_are_run_failures(tmp_path):
    folder = make_fake_folder(tmp_path / "out", "host")
    build = tmp_path / "build"
    with pytest.raises(RunFailure, match=r"failed \(exit 1\).*model_invoke returned an error"):
        runner.run_host(folder, bytes([TRIGGER_ERROR]) + bytes(63), build_dir=build)
    with pytest.raises(RunFailure, match=r"crashed \(SIG"):
        runner.run_host(folder, bytes([TRIGGER_FAULT]) + bytes(63), build_dir=build)
    with pytest.raises(RunFailure, match=r"did not finish within 1\.5 s \(hang\?\)"):
        runner.run_host(folder, bytes([TRIGGER_HANG]) + bytes(63), timeout=1.5, build_dir=build)
    with pytest.raises(RunFailure, match="cannot read exactly 64 bytes"):
        runner.run_host(folder, bytes(10), build_dir=build)


@needs_cc
def test_a_compile_error_is_a_run_failure_with_the_compiler_message(tmp_path):
    folder = make_fake_folder(tmp_path / "out", "host")
    (folder / "broken.c").write_text("int broken(void) { return undeclared_name; }\n")
    with pytest.raises(RunFailure, match=r"(?s)building .* failed:.*undeclared_name"):
        runner.build_host(folder, tmp_path / "build")


def test_default_build_dir_is_a_cache_outside_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "out"
    first = build_module.default_build_dir(folder, "cortex-m7")
    assert first.is_relative_to(tmp_path / "cache" / "mbgen")
    assert not first.is_relative_to(folder)
    assert first != build_module.default_build_dir(tmp_path / "other" / "out", "cortex-m7")
    assert first != build_module.default_build_dir(folder, "cortex-m4")


def test_build_cache_keeps_the_most_recent_builds(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache = tmp_path / "cache" / "mbgen" / "build"
    cache.mkdir(parents=True)
    hour_ago = time.time() - 3600
    for i in range(40):  # old builds, the higher i the more recent
        (cache / f"old{i:02d}").mkdir()
        os.utime(cache / f"old{i:02d}", (hour_ago + i, hour_ago + i))
    (cache / "fresh").mkdir()  # in use right now by someone else
    current = build_module.default_build_dir(tmp_path / "out", "host")
    left = {p.name for p in cache.iterdir()}
    assert current.name in left and "fresh" in left
    assert len(left) == build_module.CACHE_ENTRIES
    assert {f"old{i:02d}" for i in range(10, 40)} <= left  # the 30 most recent old ones


# ----------------------------------------------------------------------------- folders


def test_not_a_generated_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="is not a folder"):
        runner.build_host(tmp_path / "missing", tmp_path / "build")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no main.c"):
        runner.build_host(tmp_path / "empty", tmp_path / "build")
    with pytest.raises(UserError, match="has no report.json"):
        runner.run_folder(tmp_path / "empty")


def test_report_must_name_a_known_target(tmp_path):
    folder = make_fake_folder(tmp_path / "out", "cortex-m99")
    with pytest.raises(UserError, match="unknown target 'cortex-m99'"):
        runner.folder_target(folder)
    (folder / "report.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read"):
        runner.folder_target(folder)
    (folder / "report.json").write_text("{}")
    with pytest.raises(UserError, match="names no target"):
        runner.folder_target(folder)


def test_input_size_comes_from_the_header(tmp_path):
    folder = make_fake_folder(tmp_path / "out", "host")
    assert runner.input_size(folder) == 64
    with pytest.raises(UserError, match="the input has 3 bytes but the model .* takes 64"):
        runner.run_folder(folder, input_bytes=b"abc")


@needs_cc
def test_run_folder_runs_a_host_folder_natively_with_zero_input(tmp_path):
    folder = make_fake_folder(tmp_path / "out", "host")
    result = runner.run_folder(folder, qemu=True, build_dir=tmp_path / "build")
    assert result.output == bytes([1] * 64)
    assert result.total_instructions is None


@needs_cc
def test_run_folder_on_the_host_for_a_cortex_m_folder_when_asked(tmp_path):
    folder = make_fake_folder(tmp_path / "out", "cortex-m7")
    result = runner.run_folder(folder, qemu=False, input_bytes=SAMPLE,
                               build_dir=tmp_path / "build")
    assert result.output == plus_one(SAMPLE)


# ----------------------------------------------------------------------------- missing tools


def test_missing_cross_compiler_says_how_to_install_it(tmp_path, monkeypatch):
    folder = make_fake_folder(tmp_path / "out", "cortex-m4")
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    from mbgen import targets
    with pytest.raises(UserError, match=r"arm-none-eabi-gcc not found.*apt-get install "
                                         r"gcc-arm-none-eabi libnewlib-arm-none-eabi"):
        runner.build_firmware(folder, targets.get("cortex-m4"), tmp_path / "build")


def test_missing_qemu_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    from mbgen import targets
    with pytest.raises(UserError, match=r"qemu-system-arm not found.*apt-get install"):
        runner.run_elf(tmp_path / "firmware.elf", targets.get("cortex-m7"), bytes(64))


@pytest.mark.skipif(shutil.which("qemu-system-arm") is None, reason="qemu-system-arm missing")
def test_a_board_this_qemu_lacks_is_a_user_error(tmp_path, monkeypatch):
    from mbgen import targets
    monkeypatch.setattr(tools, "qemu_machines", lambda qemu: frozenset({"mps2-an385"}))
    with pytest.raises(UserError, match="no board 'mps3-an547'.*cortex-m55 cannot run"):
        runner.run_elf(tmp_path / "firmware.elf", targets.get("cortex-m55"), bytes(64))


def test_the_host_target_has_no_firmware(tmp_path):
    from mbgen import targets
    folder = make_fake_folder(tmp_path / "out", "host")
    with pytest.raises(UserError, match="has no QEMU board"):
        runner.build_firmware(folder, targets.get("host"), tmp_path / "build")
