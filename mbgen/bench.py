"""``mbgen bench``: instructions per layer in QEMU, side by side for each kernel set.

One int8 graph, one seeded random input; per kernel set: plan (with the set's scratch),
generate, build the firmware, run it once in QEMU and check the output is bit-exact with
``mbgen.reference.run_int8`` (numbers of a wrong kernel mean nothing, so a mismatch is a
RunFailure). Instruction counts are exact: the runner counts them with QEMU's ``-icount``
(see firmware/README.md); a layer's count includes about 45 instructions of profiling hooks.
They are instructions, not cycles. ``flash_bytes`` is the whole firmware's text + data
(harness and startup code included, about the same for every kernel set).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mbgen.errors import RunFailure, UserError

ORDER = ("portable", "mbgen", "cmsis-nn")
# A kernel set name with a weight layout: "mbgen-int8" runs the mbgen set with int8 weights;
# "mbgen-unstreamed" its default layout without streamed stages (compile --no-stream: a
# larger arena, no band overhead).
LAYOUT_VARIANTS = {"mbgen-int8": ("mbgen", "int8"), "mbgen-int16": ("mbgen", "int16"),
                   "mbgen-size": ("mbgen", "size"), "mbgen-unstreamed": ("mbgen", "auto")}
UNSTREAMED = frozenset({"mbgen-unstreamed"})
FLASH_SCOPE = "whole firmware: text + data from arm-none-eabi-size"
INPUT_SEED = 0
QEMU_TIMEOUT = 600.0


def _kernel_set_names(requested: Sequence[str] | None, cmsis_nn: str | os.PathLike | None
                      ) -> list[str]:
    """The sets to compare: as requested, or every one available here (cmsis-nn only with a
    library path)."""
    from mbgen.codegen import kernel_sets
    if requested:
        names = list(dict.fromkeys(requested))
        for name in names:
            kernel_sets.get(LAYOUT_VARIANTS.get(name, (name,))[0])  # UserError naming the choices
        return names
    names = []
    for name in ORDER:
        if name == "cmsis-nn" and cmsis_nn is None and not os.environ.get("CMSIS_NN_PATH"):
            continue
        try:
            kernel_sets.get(name)
        except UserError:
            continue
        names.append(name)
    return names


def _bench_one(graph, target, kernels: str, x: np.ndarray, expected: np.ndarray,
               cmsis_nn: str | os.PathLike | None) -> dict:
    from mbgen import codegen, streaming
    from mbgen.codegen.kernels_mbgen_policy import fewer_shallow_budget
    from mbgen.runner import build_firmware, run_elf
    label = kernels
    kernels, layout = LAYOUT_VARIANTS.get(label, (label, "auto"))
    layout_flash = None
    while True:   # as compile: one shallow layer fewer while the linked model passes half
        with tempfile.TemporaryDirectory(prefix="mbgen-bench-") as tmp:
            out = Path(tmp) / "out"
            # streamed as compile streams them (the default options)
            report = codegen.generate(graph, out, target=target.name, kernels=kernels,
                                      weight_layout=layout, flash_budget=layout_flash,
                                      stream=streaming.options_for(kernels,
                                                                   label not in UNSTREAMED))
            firmware = build_firmware(out, target, Path(tmp) / "build",
                                      cmsis_nn=Path(cmsis_nn) if cmsis_nn is not None else None)
            fewer = (fewer_shallow_budget(graph, layout, target.flash_bytes,
                                          firmware.model.flash_bytes,
                                          layout_flash or target.flash_bytes)
                     if kernels == "mbgen" and target.flash_bytes and firmware.model else None)
            if fewer is not None:
                layout_flash = fewer
                continue
            result = run_elf(firmware.elf, target, x.tobytes(), timeout=QEMU_TIMEOUT)
        break
    got = np.frombuffer(result.output, dtype=expected.dtype)
    if not np.array_equal(got, expected):
        wrong = int(np.count_nonzero(got != expected))
        raise RunFailure(f"{label} kernels on {target.name}: {wrong} of {expected.size} "
                         "outputs differ from the numpy int8 reference; no benchmark")
    counts = [count for _, count in result.layer_instructions]
    if len(counts) != len(report["layers"]):
        raise RunFailure(f"{kernels} kernels: {len(counts)} layer counts for "
                         f"{len(report['layers'])} layers")
    return {
        "kernels": label,
        "instructions": int(result.total_instructions),
        "arena_bytes": int(report["arena_bytes"]),
        "flash_bytes": int(firmware.flash_bytes),
        "weights_bytes": int(report["weights_bytes"]),
        "fallback_layers": list(report["fallback_layers"]),
        "layers": [{"name": layer["name"], "op": layer["op"], "macs": int(layer["macs"]),
                    "instructions": int(count)}
                   for layer, count in zip(report["layers"], counts)],
    }


def bench_model(model: str, target: str, kernel_sets: Sequence[str] | None = None,
                cmsis_nn: str | os.PathLike | None = None,
                echo: Callable[[str], None] | None = print) -> dict:
    """Benchmark ``model`` (zoo name or file) on ``target`` for each kernel set; see the module
    docstring. Returns {"model", "target", "macs", "flash_scope", "results": [...]}."""
    from mbgen import compiler, targets
    from mbgen.reference import run_int8
    t = targets.get(target)
    if not t.runs_in_qemu:
        raise UserError(f"bench counts instructions in QEMU; target {t.name} has no QEMU board "
                        "(try --target cortex-m7)")
    names = _kernel_set_names(kernel_sets, cmsis_nn)
    prepared = compiler.prepare(model, compiler.CompileOptions(target=t.name))
    graph = prepared.graph
    shape = graph.tensors[graph.inputs[0]].shape
    info = np.iinfo(graph.tensors[graph.inputs[0]].dtype)  # int8, or uint8 (uint8 interface)
    x = np.random.default_rng(INPUT_SEED).integers(info.min, info.max + 1,
                                                   size=shape).astype(info.dtype)
    expected = run_int8(graph, x)[graph.outputs[0]].reshape(-1)
    results = []
    for name in names:
        if echo is not None:
            echo(f"building and running {name} kernels ...")
        results.append(_bench_one(graph, t, name, x, expected, cmsis_nn))
    outcome = {
        "model": prepared.source.display_name,
        "target": t.name,
        "macs": sum(layer["macs"] for layer in results[0]["layers"]) if results else 0,
        "flash_scope": FLASH_SCOPE,
        "results": results,
    }
    if echo is not None:
        for line in format_table(outcome):
            echo(line)
    return outcome


# ----------------------------------------------------------------------------- printing


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 10_000 else str(n)


def _per(macs: int, instructions: int) -> str:
    return f"{macs / instructions:.3f}" if macs and instructions else "-"


def format_table(outcome: dict) -> list[str]:
    """Per layer: op, MACs, then instructions and MACs/instruction for each kernel set;
    then totals, ratio to the first set, arena, flash and fallback layers."""
    results = outcome["results"]
    if not results:
        return ["no kernel set to benchmark"]
    layers = results[0]["layers"]
    name_w = max(len(layer["name"]) for layer in layers)  # whole names: none is cut
    head = f"{'layer':<{name_w}} {'op':<16} {'MACs':>9}"
    sub = f"{'':<{name_w}} {'':<16} {'':>9}"
    for r in results:
        head += f" | {r['kernels']:^19}"
        sub += f" | {'instr':>10} {'MAC/ins':>8}"
    lines = [f"{outcome['model']} on {outcome['target']}: {len(layers)} layers, "
             f"{outcome['macs'] / 1e6:.2f} M MACs; outputs bit-exact with the numpy reference",
             "", head, sub]
    # by name: a set streamed otherwise (mbgen-unstreamed) has other layers
    counts = [{x["name"]: x["instructions"] for x in r["layers"]} for r in results]
    for layer in layers:
        row = f"{layer['name']:<{name_w}} {layer['op']:<16} {_millions(layer['macs']):>9}"
        for count in (c.get(layer["name"]) for c in counts):
            row += (f" | {_millions(count):>10} {_per(layer['macs'], count):>8}"
                    if count is not None else f" | {'-':>10} {'':>8}")
        lines.append(row)
    base = results[0]["instructions"]
    lines.append("")
    rows = [("total instructions", lambda r: f"{_millions(r['instructions']):>10} "
             f"{_per(outcome['macs'], r['instructions']):>8}"),
            (f"speed vs {results[0]['kernels']}", lambda r: f"{base / r['instructions']:>18.2f}x"),
            ("arena bytes", lambda r: f"{r['arena_bytes']:>19,d}"),
            ("flash bytes (firmware)", lambda r: f"{r['flash_bytes']:>19,d}"),
            ("fallback layers", lambda r: f"{len(r['fallback_layers']):>19d}")]
    for label, cell in rows:
        lines.append(f"{label:<{name_w + 27}}" + "".join(f" | {cell(r)}" for r in results))
    return lines
