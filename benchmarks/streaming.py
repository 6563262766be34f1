"""Streamed stages (issue 11, item 5): RAM and instructions with and without streaming.

    python benchmarks/streaming.py [MODEL ...]

For each model (default: ../shared/models/person_detect.tflite, mbv1_0.25_128,
mbv2_0.35_160) on cortex-m7, with the mbgen and the portable kernels, compiles the folder
with and without streamed stages (``mbgen compile`` and ``--no-stream``, the RAM and flash
budgets lifted so the unstreamed folders build; the mbgen kernels with int8 weights, the
layout the default compile picks for every model here that fits the M7's flash), runs it once in QEMU on one seeded random
int8 input, checks the output against ``mbgen.reference.run_int8`` on the unfused graph and
prints one markdown row per folder: arena, SRAM (arena + I/O + measured stack), instructions
(and their ratio to the unstreamed run), flash, and the stages' window bytes.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mbgen import targets  # noqa: E402
from mbgen.compiler import CompileOptions, emit, prepare  # noqa: E402
from mbgen.reference import run_int8  # noqa: E402
from mbgen.runner import run_qemu  # noqa: E402

DEFAULT_MODELS = (str(ROOT.parent / "shared" / "models" / "person_detect.tflite"),
                  "mbv1_0.25_128", "mbv2_0.35_160")
TARGET = "cortex-m7"
NO_BUDGET = 16 << 20


def measure(spec: str) -> list[str]:
    target = targets.get(TARGET)
    prepared = prepare(spec, CompileOptions())
    graph = prepared.graph
    x = np.random.default_rng(1).integers(-128, 128, graph.tensors[graph.inputs[0]].shape
                                          ).astype(np.int8)
    want = run_int8(graph, x)[graph.outputs[0]].ravel()
    rows = []
    for kernels in ("mbgen", "portable"):
        baseline = None
        for stream in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "out"
                compiled = emit(prepared, CompileOptions(
                    target=TARGET, kernels=kernels, stream=stream, out_dir=out,
                    ram_bytes=NO_BUDGET, flash_bytes=NO_BUDGET, weight_layout="int8"))
                result = run_qemu(out, target, x.tobytes())
            if not np.array_equal(result.output_int8().ravel(), want):
                raise SystemExit(f"{spec} {kernels} stream={stream}: not bit-exact")
            memory = compiled.report["memory"]
            instructions = int(result.total_instructions)
            baseline = baseline or instructions
            windows = [s["window_bytes"] for s in compiled.report["streaming"]]
            name = Path(spec).stem if spec.endswith(".tflite") else spec
            rows.append(f"| {name} | {kernels} | {'yes' if stream else 'no'} | "
                        f"{memory['arena_bytes']:,} | {memory['io_bytes']:,} | "
                        f"{memory['stack_bytes']:,} | {memory['sram_bytes']:,} | "
                        f"{instructions:,} ({instructions / baseline:.3f}x) | "
                        f"{memory['flash_bytes']:,} | "
                        f"{len(windows)} ({sum(windows):,} B) |")
    return rows


def main(argv: list[str]) -> int:
    print("| model | kernels | streamed | arena | I/O | stack | SRAM | instructions | flash | "
          "stages (windows) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for spec in argv or DEFAULT_MODELS:
        for row in measure(spec):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
