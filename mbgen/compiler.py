"""The pipeline of architecture.md: model in, int8 graph, memory plan, generated C folder out.

Each step is a call into the module that owns it; this file only strings them together and
checks the result against the target's budget.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from mbgen import budget, ir, output_folder, progress
from mbgen.budget import BudgetOverflow
from mbgen.errors import RunFailure, UserError
from mbgen.preprocessing import Preprocessing

MODEL_SUFFIXES = (".pt2", ".onnx", ".tflite")


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
    optimize: str = "balanced"          # mbgen kernels: "speed" | "size" | "balanced" (layout)
    cmsis_nn: Path | None = None        # CMSIS-NN tree for cmsis-nn folders ($CMSIS_NN_PATH)
    # What the model expects of an image (mbgen.preprocessing): --input-range, or --mean/--std
    # in pixel units; None: the model kind's default.
    input_range: str | None = None
    mean: str | None = None
    std: str | None = None
    weights: Path | None = None         # a zoo model's trained weights from a float .tflite
    board: str | None = None            # a board port: a complete firmware project for it
    board_input: Path | None = None     # raw input its harness runs on (default: test pattern)
    io: str | None = None               # "arena" | "external"; None: the target's default
    # Calibration (mbgen.calibrate): more sources after calib_dir, the methods (None: the
    # default for the data given), augmented copies (None: automatic), held-back fraction.
    calib_sources: tuple[str, ...] = ()
    range_method: str | None = None
    bias_correction: bool | None = None
    cle: bool = False
    adaround: bool = False
    augment: int | None = None
    holdout: float = 0.2
    stream: bool = True                 # streamed stages (mbgen.streaming); --no-stream: off
    max_recompute: float = 0.10         # their extra work, as a fraction of their MACs


@dataclass
class CompiledModel:
    source: ModelSource
    float_graph: ir.Graph | None       # None when the model arrived already int8 (TFLite)
    graph: ir.Graph                    # the int8 graph the C computes
    plan: object                       # planner.GraphPlan (of ``lowered``)
    report: dict
    out_dir: Path
    budget: dict = field(default_factory=dict)
    # ``graph`` with its streamed stages (mbgen.streaming): what the plan and the C follow;
    # ``graph`` itself when nothing streams
    lowered: ir.Graph | None = None


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


def preprocessing_of(graph: ir.Graph, options: CompileOptions) -> Preprocessing:
    """The options' preprocessing, else the default for this graph's input (mbgen.preprocessing)."""
    from mbgen.preprocessing import resolve
    shape = input_shape(graph)
    return resolve(options.input_range, options.mean, options.std,
                   quantized_input=graph.is_quantized, channels=int(shape[-1]))


def to_int8_graph(float_graph: ir.Graph, options: CompileOptions,
                  preprocessing: Preprocessing | None = None, trained: bool = False
                  ) -> ir.Graph:
    """Canonicalise a float graph and quantise it with calibration data."""
    return quantize_float_model(float_graph, options, preprocessing, trained).graph


def quantize_float_model(float_graph: ir.Graph, options: CompileOptions,
                         preprocessing: Preprocessing | None = None, trained: bool = False):
    """mbgen.calibrate.Quantized: the int8 graph and its fidelity record."""
    from mbgen import passes
    from mbgen.calibrate import quantize_model
    optimized = passes.optimize(float_graph)
    preprocessing = preprocessing or preprocessing_of(optimized, options)
    with progress.stage("calibrating"):
        return quantize_model(optimized, options, preprocessing, trained)


@dataclass(frozen=True)
class PreparedModel:
    """A model loaded and quantised: everything target-independent."""

    source: ModelSource
    float_graph: ir.Graph | None   # None when the model arrived already int8 (TFLite)
    graph: ir.Graph                # the int8 graph the C computes
    preprocessing: Preprocessing | None = None   # what the model expects of an image
    fidelity: dict | None = None   # mbgen.calibrate: int8 vs float on held-back inputs


def prepare(spec: str, options: CompileOptions) -> PreparedModel:
    """Load `spec` and bring it to the int8 graph (calibrating float models)."""
    from mbgen import passes
    from mbgen.passes.strip_float_io import strip_float_io
    from mbgen.validate import check_int8_graph
    source = resolve_model(spec)
    if options.weights is not None:
        from mbgen.weights_tflite import zoo_graph_with_weights
        graph = strip_float_io(zoo_graph_with_weights(source, options.weights))
    else:
        graph = strip_float_io(load_graph(source))
    preprocessing = preprocessing_of(graph, options)
    if graph.is_quantized:
        prepared = PreparedModel(source, None, passes.optimize(graph), preprocessing)
    else:
        # Trained weights: a model file, or a zoo model given --weights (not a seeded one).
        trained = source.kind != "zoo" or options.weights is not None
        quantized = quantize_float_model(graph, options, preprocessing, trained)
        prepared = PreparedModel(source, graph, quantized.graph, preprocessing,
                                 quantized.fidelity)
    check_int8_graph(prepared.graph)  # what no kernel set can compute is refused here, once
    return prepared


# ----------------------------------------------------------------------------- compile


def default_out_dir(source: ModelSource, target: str) -> Path:
    return Path("out") / f"{source.display_name}-{target}"


def kernel_preference(target) -> list[str]:
    """Kernel sets to try, best first: our specialised SIMD kernels where the core has the DSP
    extension, then portable C (the smallest code) when those do not fit the budget."""
    return ["mbgen", "portable"] if target.dsp and not target.is_host else ["portable"]


def constant_bytes(graph: ir.Graph) -> int:
    """Bytes of weights and biases: what the model puts in flash before code."""
    return sum(t.nbytes for t in graph.tensors.values() if t.is_const)


def io_bytes(graph: ir.Graph, io: str = "external") -> int:
    """The caller's input and output buffers: 0 when they live in the arena (``io`` "arena"),
    so they are never counted twice."""
    if io == "arena":
        return 0
    return (graph.tensors[graph.inputs[0]].nbytes
            + sum(graph.tensors[name].nbytes for name in graph.outputs))


def emit(prepared: PreparedModel, options: CompileOptions) -> CompiledModel:
    """Plan the arena and write the C folder of a prepared model for `options.target`.

    Without --kernels the target's preferred kernel set is tried first; when it overflows
    the budget (its scratch in RAM, its specialised code in flash), the next one (portable C,
    the smallest) is used instead, and the budget note says why. Nothing is written to the
    output folder unless the model fits.
    """
    from mbgen import targets

    target = targets.get(options.target)
    candidates = [options.kernels] if options.kernels else kernel_preference(target)
    out_dir = options.out_dir or default_out_dir(prepared.source, options.board or target.name)
    output_folder.check_destination(out_dir, options.force)
    if options.emit_tflite is not None and options.emit_tflite.exists() and not options.force:
        raise UserError(f"{options.emit_tflite} already exists; pass --force to overwrite it")
    tflite_bytes = None
    if options.emit_tflite is not None:  # a graph TFLite cannot hold is refused before any write
        from mbgen.export.tflite_writer import tflite_bytes as serialise
        tflite_bytes = serialise(prepared.graph)
    for attempt, kernels in enumerate(candidates):
        try:
            compiled = _emit_fitting_half(prepared, options, target, kernels, out_dir)
        except BudgetOverflow as overflow:
            if attempt + 1 == len(candidates):
                raise
            note = (f"{kernels} kernels need {overflow.needed} bytes of {overflow.kind}, "
                    "over the budget")
            continue
        if attempt > 0:
            compiled.budget["note"] = note
        break
    if tflite_bytes is not None:
        options.emit_tflite.write_bytes(tflite_bytes)
    return compiled


class _OverHalf(Exception):
    """The linked model passed half the flash budget with shallow layers per-layer: build
    again with the layout budget ``layout_flash`` (one layer fewer)."""

    def __init__(self, layout_flash: int) -> None:
        super().__init__(layout_flash)
        self.layout_flash = layout_flash


def _emit_fitting_half(prepared: PreparedModel, options: CompileOptions, target, kernels: str,
                       out_dir: Path) -> CompiledModel:
    """_emit_with, again with one shallow layer fewer while the linked figure says the
    ``balanced`` estimate kept too many (kernels_mbgen_policy.fewer_shallow_budget)."""
    layout_flash = None
    while True:
        try:
            return _emit_with(prepared, options, target, kernels, out_dir, layout_flash)
        except _OverHalf as over:
            layout_flash = over.layout_flash


def _emit_with(prepared: PreparedModel, options: CompileOptions, target, kernels: str,
               out_dir: Path, layout_flash: int | None = None) -> CompiledModel:
    from mbgen import board_project, codegen, streaming
    from mbgen.codegen.generator import write_report
    from mbgen.codegen.kernels_mbgen_policy import (fewer_shallow_budget, layout_note,
                                                    lowering_layout)

    graph = prepared.graph
    layout = lowering_layout(options.weight_layout, options.optimize)
    project = board_project.for_options(options)   # None without --board
    limits = budget.budget_for(project.board if project else target, options.ram_bytes,
                               options.flash_bytes)
    # Lower, plan, bind: the one pipeline (codegen.build_program); render below.
    program = codegen.build_program(
        graph, prefix=options.name, kernels=kernels, target=target.name,
        io=options.io or codegen.default_io(target.name),
        flash_budget=layout_flash or limits.flash_bytes or None,
        weight_layout=layout,
        stream=streaming.options_for(kernels, options.stream, options.max_recompute))
    plan, lowered = program.plan, program.graph
    use = budget.MemoryUse(arena_bytes=int(plan.arena_size), io_bytes=io_bytes(graph, plan.io),
                           weights_bytes=constant_bytes(graph))
    budget.check(use, limits)  # what is known before generating: refuse early
    with tempfile.TemporaryDirectory(prefix="mbgen-") as tmp:
        staging = Path(tmp) / (out_dir.resolve().name or "out")
        # the C computes ``program.graph`` (with its streamed stages, bit-identical to
        # ``graph``, which the references and the exporters keep seeing)
        report = codegen.render(program.graph, program, staging, name=options.name,
                                target=target.name, kernels=kernels,
                                **(project.generate_options() if project else {}))
        if project:
            report["files"] += project.write_sources(staging, options.name,
                                                     graph.tensors[graph.inputs[0]])
        # The weights as the kernels store them (int16 layouts are larger than the raw int8).
        use = replace(use, weights_bytes=int(report["weights_bytes"]))
        firmware = None
        if not target.is_host:
            # The linked firmware is the only true measure of code, statics and stack; a
            # build that fails is an error, never a skipped check.
            from mbgen.runner import build_firmware
            firmware = build_firmware(staging, target, Path(tmp) / "build",
                                      cmsis_nn=options.cmsis_nn,
                                      platform=(project.platform(staging, Path(tmp) / "ld")
                                                if project else None))
            if firmware.model is None:
                raise RunFailure(f"the linked firmware has no {options.name}_invoke")
            use = use.linked(firmware.model)
            if kernels == "mbgen" and limits.flash_bytes:
                fewer = fewer_shallow_budget(graph, layout, limits.flash_bytes, use.flash_bytes,
                                             layout_flash or limits.flash_bytes)
                if fewer is not None:
                    raise _OverHalf(fewer)
        budget.check(use, limits)
        if project:
            project.check_image(firmware)
        report["memory"] = budget.as_report(use, limits)
        report.update(io_report(prepared))
        report["streaming"] = streaming.stages_report(
            lowered, streaming.options_for(kernels))
        if firmware is not None:
            report["memory"]["example_firmware"] = {
                "text": firmware.text, "data": firmware.data, "bss": firmware.bss,
                "stack_reserve": firmware.stack_reserve}
        if project:
            report["files"] += project.write_build_files(staging, report,
                                                         firmware.stack_reserve)
        write_report(staging, report)
        change = output_folder.install(staging, out_dir, report["files"], options.force)
    summary = {"ram_bytes": limits.ram_bytes, "flash_bytes": limits.flash_bytes,
               "folder": change.summary()}
    if kernels == "mbgen":   # which weight layout, and what the other would cost
        summary["weight_layout"] = layout_note(
            graph, layout, layout_flash or limits.flash_bytes or target.flash_bytes)
    return CompiledModel(prepared.source, prepared.float_graph, graph, plan, report, out_dir,
                         summary, lowered)


def io_report(prepared: PreparedModel) -> dict:
    """report.json's "preprocessing" and "interface": how `run --image` makes an input."""
    from mbgen.preprocessing import interface_of
    graph = prepared.graph
    preprocessing = prepared.preprocessing or preprocessing_of(graph, CompileOptions())
    fidelity = {"fidelity": prepared.fidelity} if prepared.fidelity else {}
    return {**fidelity, "preprocessing": preprocessing.as_report(),
            "interface": {"input": interface_of(graph, graph.inputs[0]).as_report(),
                          "output": interface_of(graph, graph.outputs[0]).as_report(),
                          "output_op": ir.op_name(graph.producer(graph.outputs[0]).op)}}


def compile_model(spec: str, options: CompileOptions) -> CompiledModel:
    from mbgen import board_project, targets
    # An unknown target or board, a wrong --input or a forbidden output folder is reported
    # before any slow work.
    target = targets.get(options.target)
    board_project.for_options(options)
    out_dir = options.out_dir or default_out_dir(resolve_model(spec), options.board or target.name)
    output_folder.check_destination(out_dir, options.force)
    return emit(prepare(spec, options), options)
