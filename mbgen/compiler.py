"""The pipeline of architecture.md: model in, int8 graph, memory plan, generated C folder out.

Each step is a call into the module that owns it; this file only strings them together and
checks the result against the target's budget.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mbgen import ir
from mbgen.errors import UserError

MODEL_SUFFIXES = (".pt2", ".onnx", ".tflite")
GENERATOR_TAG = "mbgen"


@dataclass(frozen=True)
class ModelSource:
    """What the user named: a zoo model or a file of a known kind."""

    spec: str
    kind: str            # "zoo" | "pt2" | "onnx" | "tflite"
    path: Path | None    # None for zoo models

    @property
    def display_name(self) -> str:
        return self.spec if self.kind == "zoo" else self.path.stem


@dataclass
class CompileOptions:
    target: str = "host"
    out_dir: Path | None = None
    name: str = "model"
    kernels: str | None = None          # None: the target's default kernel set
    calib_dir: Path | None = None
    calib_percentile: float | None = None
    calib_count: int = 16
    force: bool = False
    ram_bytes: int | None = None        # override the target's budget
    flash_bytes: int | None = None
    emit_tflite: Path | None = None
    weight_layout: str = "auto"         # mbgen kernels: "int16" pairs, "int8", or by budget


@dataclass
class CompiledModel:
    source: ModelSource
    float_graph: ir.Graph | None       # None when the model arrived already int8 (TFLite)
    graph: ir.Graph                    # the int8 graph the C computes
    plan: object                       # planner.GraphPlan
    report: dict
    out_dir: Path
    budget: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- loading


def resolve_model(spec: str) -> ModelSource:
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix in MODEL_SUFFIXES or path.exists():
        if not path.exists():
            raise UserError(f"model file not found: {spec}")
        if path.is_dir():
            raise UserError(f"{spec} is a directory, not a model file")
        if suffix not in MODEL_SUFFIXES:
            raise UserError(f"{spec}: unknown model file type {suffix or '(none)'}; "
                            "mbgen reads .pt2 (torch.export), .onnx and .tflite")
        return ModelSource(spec, suffix[1:], path)
    from mbgen import zoo
    if spec not in zoo.names():
        close = zoo.suggest(spec)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `mbgen models` lists them"
        raise UserError(f"unknown model {spec!r} (not a zoo name or an existing file){hint}")
    return ModelSource(spec, "zoo", None)


def load_graph(source: ModelSource) -> ir.Graph:
    """The model as an IR graph: float for zoo/.pt2/.onnx/float .tflite, int8 for int8 .tflite."""
    if source.kind == "zoo":
        from mbgen import zoo
        from mbgen.frontends.torch_frontend import from_module
        import torch
        module = zoo.get(source.spec)
        example = torch.zeros(zoo.input_shape(source.spec))
        return from_module(module, example, source.spec)
    if source.kind == "pt2":
        from mbgen.frontends.torch_frontend import load_pt2
        return load_pt2(source.path)
    if source.kind == "onnx":
        from mbgen.frontends.onnx_frontend import load_onnx
        return load_onnx(source.path)
    from mbgen.frontends.tflite_frontend import load_tflite
    return load_tflite(source.path)


def input_shape(graph: ir.Graph) -> tuple[int, ...]:
    return tuple(graph.tensors[graph.inputs[0]].shape)


def calibration_inputs(graph: ir.Graph, options: CompileOptions) -> list[np.ndarray]:
    from mbgen.quantize import calibration
    shape = input_shape(graph)
    if options.calib_dir is not None:
        return calibration.load_calibration_dir(options.calib_dir, shape)
    return calibration.synthetic_inputs(shape, count=options.calib_count, seed=0)


def to_int8_graph(float_graph: ir.Graph, options: CompileOptions) -> ir.Graph:
    """Canonicalise a float graph and quantise it with calibration data."""
    from mbgen import passes
    from mbgen.quantize.quantizer import quantize
    optimized = passes.optimize(float_graph)
    return quantize(optimized, calibration_inputs(optimized, options),
                    percentile=options.calib_percentile)


@dataclass(frozen=True)
class PreparedModel:
    """A model loaded and quantised: everything target-independent."""

    source: ModelSource
    float_graph: ir.Graph | None   # None when the model arrived already int8 (TFLite)
    graph: ir.Graph                # the int8 graph the C computes


def prepare(spec: str, options: CompileOptions) -> PreparedModel:
    """Load `spec` and bring it to the int8 graph (calibrating float models)."""
    from mbgen import passes
    from mbgen.passes.strip_float_io import strip_float_io
    source = resolve_model(spec)
    graph = strip_float_io(load_graph(source))
    if graph.is_quantized:
        return PreparedModel(source, None, passes.optimize(graph))
    return PreparedModel(source, graph, to_int8_graph(graph, options))


# ----------------------------------------------------------------------------- output folder


def default_out_dir(source: ModelSource, target: str) -> Path:
    return Path("out") / f"{source.display_name}-{target}"


def prepare_out_dir(out_dir: Path, force: bool) -> None:
    """Refuse to write into a non-empty folder that mbgen did not create, unless forced."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output path {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        report = out_dir / "report.json"
        ours = False
        if report.is_file():
            try:
                ours = json.loads(report.read_text()).get("generator") == GENERATOR_TAG
            except (ValueError, OSError):
                ours = False
        if not ours and not force:
            raise UserError(f"output folder {out_dir} is not empty and was not made by mbgen; "
                            "choose another -o or pass --force to overwrite it")
        # Regenerating: clear what is there so no stale kernel file is left behind.
        for child in out_dir.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


# ----------------------------------------------------------------------------- compile


def kernel_preference(target) -> list[str]:
    """Kernel sets to try, best first: our specialised SIMD kernels where the core has the DSP
    extension, then portable C (the smallest code) when those do not fit the flash budget."""
    return ["mbgen", "portable"] if target.dsp and not target.is_host else ["portable"]


def constant_bytes(graph: ir.Graph) -> int:
    """Bytes of weights and biases: what the model puts in flash before code."""
    return sum(t.nbytes for t in graph.tensors.values() if t.is_const)


def check_budget(arena_bytes: int, weights_bytes: int, target, options: CompileOptions) -> dict:
    """Arena against RAM and weights against flash; UserError saying by how much on overflow."""
    ram = options.ram_bytes if options.ram_bytes is not None else target.ram_bytes
    flash = options.flash_bytes if options.flash_bytes is not None else target.flash_bytes
    if ram and arena_bytes > ram:
        raise UserError(f"model does not fit {target.name}: the activation arena needs "
                        f"{arena_bytes} bytes but the RAM budget is {ram} bytes "
                        f"({arena_bytes - ram} bytes over); use a smaller model or --ram")
    if flash and weights_bytes > flash:
        raise UserError(f"model does not fit {target.name}: weights need {weights_bytes} bytes "
                        f"of flash but the budget is {flash} bytes "
                        f"({weights_bytes - flash} bytes over); use a smaller model or --flash")
    return {"ram_bytes": ram, "flash_bytes": flash}


def emit(prepared: PreparedModel, options: CompileOptions) -> CompiledModel:
    """Plan the arena and write the C folder of a prepared model for `options.target`.

    Without --kernels the target's preferred kernel set is tried first; when its firmware
    (weights + specialised code) overflows the flash budget, the next one (portable C, the
    smallest) is used instead, and the budget note says why.
    """
    from mbgen import targets

    target = targets.get(options.target)
    candidates = [options.kernels] if options.kernels else kernel_preference(target)
    out_dir = options.out_dir or default_out_dir(prepared.source, target.name)
    if options.emit_tflite is not None and options.emit_tflite.exists() and not options.force:
        raise UserError(f"{options.emit_tflite} already exists; pass --force to overwrite it")
    for attempt, kernels in enumerate(candidates):
        try:
            compiled = _emit_with(prepared, options, target, kernels, out_dir,
                                  force=options.force or attempt > 0)
        except FlashOverflow as overflow:
            if attempt + 1 == len(candidates):
                raise UserError(str(overflow)) from None
            note = f"{kernels} kernels need {overflow.needed} bytes of flash, over the budget"
            continue
        if attempt > 0:
            compiled.budget["note"] = note
        break
    if options.emit_tflite is not None:
        from mbgen.export.tflite_writer import write_tflite
        write_tflite(prepared.graph, options.emit_tflite)
    return compiled


class FlashOverflow(Exception):
    def __init__(self, message: str, needed: int) -> None:
        super().__init__(message)
        self.needed = needed


def _emit_with(prepared: PreparedModel, options: CompileOptions, target, kernels: str,
               out_dir: Path, force: bool) -> CompiledModel:
    from mbgen import codegen, planner

    graph = prepared.graph
    plan = planner.plan_graph(graph, scratch=codegen.scratch_requirements(graph, kernels))
    # Check the budget before anything is written, so a model that does not fit leaves no folder.
    budget = check_budget(plan.arena_size, constant_bytes(graph), target, options)
    prepare_out_dir(out_dir, force)
    report = codegen.generate(graph, plan, out_dir, name=options.name, target=target.name,
                              kernels=kernels, flash_budget=budget["flash_bytes"],
                              weight_layout=options.weight_layout)
    firmware_flash = measure_firmware_flash(out_dir, target)
    if firmware_flash is not None:
        budget["firmware_flash_bytes"] = firmware_flash
        flash = budget["flash_bytes"]
        if flash and firmware_flash > flash:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise FlashOverflow(
                f"model does not fit {target.name}: weights + code need {firmware_flash} bytes "
                f"of flash but the budget is {flash} bytes ({firmware_flash - flash} bytes "
                "over); use a smaller model or --flash", firmware_flash)
    return CompiledModel(prepared.source, prepared.float_graph, graph, plan, report, out_dir,
                         budget)


def measure_firmware_flash(out_dir: Path, target) -> int | None:
    """Flash bytes (text + data) of the whole firmware, when the Arm toolchain is here.

    Code size is only known after linking, so compile builds the firmware once for Cortex-M
    targets; without the toolchain (or without CMSIS-NN for a cmsis-nn folder: the build says
    so with a UserError) the budget check falls back to the weights alone.
    """
    if target.is_host or not target.runs_in_qemu:
        return None
    from mbgen.errors import RunFailure
    from mbgen.runner import build_firmware
    try:
        return build_firmware(out_dir, target).flash_bytes
    except (UserError, RunFailure):
        return None


def compile_model(spec: str, options: CompileOptions) -> CompiledModel:
    from mbgen import targets
    targets.get(options.target)  # an unknown target is reported before any slow work
    return emit(prepare(spec, options), options)
