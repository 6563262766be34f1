"""Benchmark every kernel set on the reference models and write benchmarks/RESULTS.md.

    CMSIS_NN_PATH=/path/to/CMSIS-NN python benchmarks/run.py [--cmsis-nn-version V]

Runs ``mbgen bench`` (mbgen.bench.bench_model) for mbv1_0.25_128, mbv2_0.35_96 and
../shared/models/person_detect.tflite on cortex-m7, m4, m33 and m55, one kernel set at a
time: portable, CMSIS-NN (when CMSIS_NN_PATH is set), mbgen with the default options and
without streamed stages, mbgen's per-layer kernels with int8 weights, its shared compact
kernels (--optimize size) and its per-layer kernels with int16 pairs. A set that cannot
be built or run is reported as not measured, with the reason. With CMSIS-NN it also runs
tests/test_kernels_cmsis_nn.py against the real library and records the outcome.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ZOO_MODELS = ("mbv1_0.25_128", "mbv2_0.35_96")
SHARED_MODEL = "models/person_detect.tflite"  # in ../shared, next to the repository
TARGETS = ("cortex-m7", "cortex-m4", "cortex-m33", "cortex-m55")
KERNEL_SETS = ("portable", "cmsis-nn", "mbgen", "mbgen-unstreamed", "mbgen-int8", "mbgen-size",
               "mbgen-int16")
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def _first_line(command: list[str], cwd: Path | None = None) -> str | None:
    try:
        proc = subprocess.run(command, capture_output=True, text=True, cwd=cwd)
    except OSError:
        return None
    lines = proc.stdout.strip().splitlines()
    return lines[0].strip() if proc.returncode == 0 and lines else None


def versions(cmsis_nn: str | None, cmsis_nn_version: str | None) -> dict[str, str]:
    library = "not used (CMSIS_NN_PATH unset)"
    if cmsis_nn:
        library = (cmsis_nn_version
                   or _first_line(["git", "-C", cmsis_nn, "describe", "--tags", "--always"])
                   or os.environ.get("CMSIS_NN_VERSION") or "unknown (not a git checkout)")
    return {
        "mbgen": _first_line(["git", "describe", "--always", "--dirty"], ROOT) or "unknown",
        "arm-none-eabi-gcc": _first_line(["arm-none-eabi-gcc", "--version"]) or "missing",
        "qemu": _first_line(["qemu-system-arm", "--version"]) or "missing",
        "CMSIS-NN": library,
        "python": sys.version.split()[0],
    }


def _op_totals(result: dict) -> dict[str, int]:
    totals: dict[str, int] = {}
    for layer in result["layers"]:
        totals[layer["op"]] = totals.get(layer["op"], 0) + layer["instructions"]
    return totals


def model_section(outcome: dict) -> list[str]:
    from mbgen import targets
    results = outcome["results"]
    base = results[0]
    budget = targets.get(outcome["target"]).flash_bytes
    lines = [f"### {outcome['model']} on {outcome['target']}", "",
             f"{outcome['macs'] / 1e6:.2f} M MACs, {len(base['layers'])} layers; the target's "
             f"flash budget is {budget:,} bytes.", "",
             f"| kernels | instructions | speed vs {base['kernels']} | MACs / instruction "
             "| flash (text+data) | weights | code and the rest | fits the budget | arena "
             "| fallback layers |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for r in results:
        fallbacks = ", ".join(f"`{n}`" for n in r["fallback_layers"]) or "none"
        weights = r.get("weights_bytes")
        rest = f"{r['flash_bytes'] - weights:,}" if weights is not None else "-"
        lines.append(f"| {r['kernels']} | {r['instructions']:,} | "
                     f"{base['instructions'] / r['instructions']:.2f}x | "
                     f"{outcome['macs'] / r['instructions']:.3f} | {r['flash_bytes']:,} | "
                     f"{weights:,} | {rest} | {'yes' if r['flash_bytes'] <= budget else 'no'} | "
                     f"{r['arena_bytes']:,} | {fallbacks} |")
    for name, reason in outcome.get("not_measured", {}).items():
        lines.append(f"| {name} | not measured: {reason} | | | | | | | | |")
    # every set's ops (mbgen-unstreamed has no StreamedStage), each with its own MACs
    ops = list(dict.fromkeys(layer["op"] for r in results for layer in r["layers"]))
    totals = [_op_totals(r) for r in results]
    op_macs = [{op: sum(layer["macs"] for layer in r["layers"] if layer["op"] == op)
                for op in ops} for r in results]
    lines += ["", f"Instructions by op (MACs / instruction; MACs: {base['kernels']}'s):", "",
              "| op | MACs | " + " | ".join(r["kernels"] for r in results) + " |",
              "|---|---:|" + "---:|" * len(results)]
    for op in ops:
        cells = []
        for t, m in zip(totals, op_macs):
            per = f" ({m[op] / t[op]:.3f})" if m[op] and t.get(op) else ""
            cells.append(f"{t[op]:,}{per}" if op in t else "-")
        lines.append(f"| {op} | {op_macs[0][op]:,} | " + " | ".join(cells) + " |")
    return lines + [""]


def bench_sets(model: str, target: str, cmsis_nn: str | None) -> dict:
    """One bench_model outcome holding every kernel set that ran; the others under
    "not_measured" with the reason (a set's failure does not stop the others)."""
    from mbgen.bench import bench_model
    outcome: dict = {}
    results, skipped = [], {}
    for name in KERNEL_SETS:
        if name == "cmsis-nn" and not cmsis_nn:
            skipped[name] = "CMSIS_NN_PATH unset"
            continue
        try:
            one = bench_model(model, target, kernel_sets=[name], cmsis_nn=cmsis_nn, echo=None)
        except Exception as exc:   # noqa: BLE001  (reported in the table, run goes on)
            skipped[name] = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            continue
        outcome = one
        results += one["results"]
    outcome = {**outcome, "results": results, "not_measured": skipped}
    return outcome


def run_cmsis_nn_tests(cmsis_nn: str) -> str:
    env = dict(os.environ, CMSIS_NN_PATH=cmsis_nn)
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests/test_kernels_cmsis_nn.py",
                           "-q", "-p", "no:cacheprovider"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "no output"
    return f"{'passed' if proc.returncode == 0 else 'FAILED'}: {summary}"


def write_results(outcomes: list[dict], info: dict[str, str], tests: str | None) -> None:
    today = datetime.date.today().isoformat()
    lines = [
        "# Benchmarks", "",
        f"Written by `benchmarks/run.py` on {today}; rerun it rather than editing this file.", "",
        "| component | version |", "|---|---|",
        *(f"| {name} | {value} |" for name, value in info.items()), "",
        "## How these numbers are measured", "",
        "- `mbgen bench MODEL --target T`: each kernel set's folder is built as firmware with",
        "  the target's flags (-O2) and run once in QEMU on one seeded random int8 input.",
        "- **Instructions**, not cycles: QEMU's `-icount` makes the SysTick counter exact to",
        "  one instruction (firmware/README.md). It does not model pipelines, wait states or",
        "  multi-cycle instructions (an `SMLAD`, two MACs, counts as one instruction).",
        "  Per-op figures include about 45 instructions of profiling hooks per layer.",
        "- **Speed** is the baseline's instruction count (the first kernel set, portable)",
        "  divided by the set's, in the same run. MACs / instruction uses the model's MACs.",
        "- **Arena**: the static activation arena, scratch buffers included. **Flash**: the",
        "  whole firmware's text + data (`arm-none-eabi-size`), harness and startup included.",
        "- **Correctness**: every run's output was compared with `mbgen.reference.run_int8`",
        "  and was bit-exact (`bench_model` refuses to report a run that is not).",
        "- mbgen kernels (`--kernels mbgen`): **mbgen** with the default options",
        "  (`--optimize balanced`: the shared compact kernels when the weights plus 192 KB",
        "  pass half the flash budget, else per-layer kernels with int8 weights);",
        "  **mbgen-unstreamed** the same without streamed stages (`--no-stream`: a larger",
        "  arena, none of the bands' recomputed rows and calls);",
        "  **mbgen-int8** the per-layer (specialised) kernels with int8 weights",
        "  (`--weight-layout int8`); **mbgen-size** the shared compact kernels (`--optimize",
        "  size`: one GEMM and one 3x3 depthwise body, a params struct per layer);",
        "  **mbgen-int16** per-layer kernels with int16 weight pairs (`--weight-layout int16`,",
        "  what `--optimize speed` picks when the flash budget allows). CMSIS-NN kernels:",
        "  `--kernels cmsis-nn`, the library built with its default double rounding (TFLite's",
        "  reference arithmetic).",
        "- **Weights**: the constant arrays as the kernels store them; **code and the rest**:",
        "  flash minus weights (kernels, runtime, harness, startup).", "",
    ]
    if tests is not None:
        lines += ["## CMSIS-NN correctness with the real library", "",
                  f"With CMSIS-NN {info['CMSIS-NN']}, every cmsis-nn run below was bit-exact with",
                  "the numpy int8 reference, and `tests/test_kernels_cmsis_nn.py` (odd-shape",
                  "layers and mbv1_0.25_96 on the host and cortex-m7 in QEMU, buffer-size",
                  f"formulas against the library's own functions) {tests}.", ""]
    lines += ["## Results", ""]
    for outcome in outcomes:
        lines += model_section(outcome)
    RESULTS.write_text("\n".join(lines).rstrip() + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cmsis-nn-version", help="how to name the CMSIS-NN tree when it is "
                        "not a git checkout (e.g. v7.0.0-43-g99f736a6)")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared",
                        help="the shared test data folder (default: ../shared)")
    parser.add_argument("--skip-tests", action="store_true",
                        help="do not run tests/test_kernels_cmsis_nn.py against CMSIS-NN")
    args = parser.parse_args(argv)
    cmsis_nn = os.environ.get("CMSIS_NN_PATH") or None
    outcomes = []
    models = [*ZOO_MODELS, str(args.shared / SHARED_MODEL)]
    for model in models:
        for target in TARGETS:
            print(f"== {Path(model).name} on {target}", flush=True)
            outcome = bench_sets(model, target, cmsis_nn)
            if not outcome["results"]:
                print(f"   nothing ran: {outcome['not_measured']}", flush=True)
                continue
            outcomes.append(outcome)
            for r in outcome["results"]:
                print(f"   {r['kernels']:<12} {r['instructions']:>12,d} instructions "
                      f"{r['flash_bytes']:>10,d} B flash", flush=True)
            for name, reason in outcome["not_measured"].items():
                print(f"   {name:<12} not measured: {reason}", flush=True)
    tests = None
    if cmsis_nn and not args.skip_tests:
        print("== tests/test_kernels_cmsis_nn.py with the real CMSIS-NN", flush=True)
        tests = run_cmsis_nn_tests(cmsis_nn)
        print("   " + tests)
    write_results(outcomes, versions(cmsis_nn, args.cmsis_nn_version), tests)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
