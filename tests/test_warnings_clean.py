"""Every generated folder builds with its target's own flags plus -Wall -Wextra -Werror, as
C99 and C11: arm-none-eabi-gcc for each Cortex-M target and kernel set, gcc and clang on the
host. Firmware projects build with -Werror; a warning there is a broken build for the user."""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mbgen import codegen, targets
from mbgen.codegen.generator import WARNING_FLAGS

from conftest import SHARED_DIR

STANDIN_INCLUDE = Path(__file__).resolve().parent / "cmsis_nn_standin" / "Include"
MODELS = ["mbv1_0.25_96", "mbv2_0.35_96", "person_detect", "shufflenetv2_0.5_96"]
STANDARDS = ("c99", "c11")


def kernel_sets(target) -> list[str]:
    if target.is_host:
        return ["portable"]
    return ["portable", *(["mbgen"] if target.dsp else []), "cmsis-nn"]


def compilers(target) -> list[list[str]]:
    if target.is_host:
        return [[cc] for cc in ("gcc", "clang") if shutil.which(cc)]
    return [["arm-none-eabi-gcc"]]


def model_spec(name: str) -> str:
    if name == "person_detect":
        path = SHARED_DIR / "models" / "person_detect.tflite"
        if not path.is_file():
            pytest.skip(f"needs {path}")
        return str(path)
    return name


def build_commands(folder: Path, target, std: str) -> list[list[str]]:
    """One command per source. C99 builds each file whole (-c, the optimiser's warnings
    included); C11 differs only in the language, so the front end alone checks it. The
    weights (pure const arrays, the slowest to compile) are front-end checked in both."""
    commands = []
    for cc in compilers(target):
        for source in sorted(folder.glob("*.c")):
            whole = std == "c99" and not source.name.endswith("_weights.c")
            mode = ["-c", "-o", "/dev/null"] if whole else ["-fsyntax-only"]
            commands.append([*cc, *target.cflags, f"-std={std}", *WARNING_FLAGS,
                             f"-I{folder}", f"-I{STANDIN_INCLUDE}", *mode, str(source)])
    return commands


def run_command(command: list[str]) -> str | None:
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode == 0 and not proc.stderr.strip():
        return None
    return " ".join(command[:1] + command[-1:]) + "\n" + "\n".join(
        proc.stderr.strip().splitlines()[:8])


@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="needs arm-none-eabi-gcc")
@pytest.mark.parametrize("model", MODELS)
def test_every_folder_builds_with_werror(model, tmp_path, prepared):
    graph = prepared(model_spec(model)).graph
    commands = []
    for target in targets.all_targets():
        for kernels in kernel_sets(target):
            folder = tmp_path / f"{target.name}-{kernels}"
            codegen.generate(graph, folder, target=target.name, kernels=kernels)
            for std in STANDARDS:
                commands += build_commands(folder, target, std)
    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [f for f in pool.map(run_command, commands) if f]
    print(f"{model}: {len(commands)} builds, {len(failures)} with warnings")
    assert not failures, "\n\n".join(failures[:5])
