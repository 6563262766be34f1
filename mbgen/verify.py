"""`mbgen verify`: compile once, run everywhere, compare with independent references.

Bit-exact comparisons (they decide the exit code): the generated C on the host, the same model
compiled for the target and run in QEMU, the numpy int8 reference, and TFLM (or, for .onnx
files, onnxruntime) when asked. The
float model (PyTorch, or the float graph) is compared by cosine similarity and top-1 only, as
int8 cannot equal float.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from mbgen import ir
from mbgen.compiler import (CompileOptions, CompiledModel, ModelSource, emit, prepare,
                            resolve_model)
from mbgen.errors import UserError
from mbgen.preprocessing import Preprocessing


@dataclass(frozen=True)
class Comparison:
    label: str          # which input
    what: str           # "host vs numpy", ...
    exact: bool | None  # None: informational (float model)
    detail: str


@dataclass
class VerifyOutcome:
    comparisons: list[Comparison] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.exact is not False for c in self.comparisons)


@dataclass(frozen=True)
class VerifyInput:
    label: str
    float_nhwc: np.ndarray | None   # None when the input only exists as int8
    int8_nhwc: np.ndarray


def _quant(graph: ir.Graph, name: str) -> tuple[float, int]:
    qp = graph.tensors[name].quant
    return qp.scalar_scale, qp.scalar_zero_point


def make_inputs(graph: ir.Graph, images: Path | None, count: int,
                preprocessing: Preprocessing | None = None) -> list[VerifyInput]:
    """Deterministic synthetic inputs, plus the photos in `images` when given, made as
    `run --image` makes them (the preprocessing recorded at compile time)."""
    from mbgen.images import IMAGE_SUFFIXES, load_pixels
    from mbgen.preprocessing import interface_of
    from mbgen.quantize.calibration import synthetic_inputs

    name = graph.inputs[0]
    interface = interface_of(graph, name)  # int8, or uint8 for a uint8 interface
    preprocessing = preprocessing or Preprocessing("range", "minus1_1")
    made: list[VerifyInput] = []
    if images is not None:
        if not images.is_dir():
            raise UserError(f"image folder not found: {images}")
        for path in sorted(images.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                pixels = load_pixels(path, interface.shape)
                x = None if preprocessing.kind == "quantized" else \
                    preprocessing.float_input(pixels)
                made.append(VerifyInput(path.name, x,
                                        preprocessing.model_input(pixels, interface)))
    # A different seed from calibration's, so verification does not reuse calibration data.
    for i, x in enumerate(synthetic_inputs(interface.shape, count=count, seed=1234)):
        x = x if preprocessing.kind == "quantized" else preprocessing.from_unit(x)
        made.append(VerifyInput(f"synthetic{i}", x, interface.quantize(x)))
    return made


def dequantize(graph: ir.Graph, q: np.ndarray) -> np.ndarray:
    scale, zero_point = _quant(graph, graph.outputs[0])
    return scale * (q.astype(np.float64) - zero_point)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom else float(np.array_equal(a, b))


def float_model(source: ModelSource, float_graph: ir.Graph | None, weights: Path | None = None
                ) -> Callable[[np.ndarray], np.ndarray] | None:
    """The float model as the user knows it: PyTorch for zoo models (with the trained weights
    of --weights), else the float graph."""
    if source.kind == "zoo":
        import torch
        from mbgen import zoo
        if weights is not None:
            from mbgen.weights_tflite import zoo_module_with_weights
            module = zoo_module_with_weights(source.spec, weights)
        else:
            module = zoo.get(source.spec)

        def run_torch(x_nhwc: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
                return module(x.float()).numpy()
        return run_torch
    if float_graph is None:
        return None
    from mbgen.float_interp import run_float

    def run_graph(x_nhwc: np.ndarray) -> np.ndarray:
        return run_float(float_graph, x_nhwc)[float_graph.outputs[0]]
    return run_graph


def _exact(label: str, what: str, got: np.ndarray, want: np.ndarray) -> Comparison:
    got, want = got.ravel().astype(np.int32), want.ravel().astype(np.int32)
    if got.shape != want.shape:
        return Comparison(label, what, False, f"sizes differ: {got.size} vs {want.size}")
    diff = np.flatnonzero(got != want)
    if diff.size == 0:
        return Comparison(label, what, True, f"bit-exact ({got.size} values)")
    i = diff[0]
    return Comparison(label, what, False, f"{diff.size} of {got.size} values differ, "
                      f"first at {i}: {got[i]} vs {want[i]}")


def _tflm_model(compiled: CompiledModel, work: Path) -> Path:
    if compiled.source.kind == "tflite" and compiled.float_graph is None:
        return compiled.source.path
    from mbgen.export.tflite_writer import write_tflite
    return write_tflite(compiled.graph, work / "model_int8.tflite")


def _onnxruntime(compiled: CompiledModel):
    """onnxruntime on the user's own .onnx file (the reference for int8 ONNX models)."""
    from mbgen.onnxruntime_runner import OnnxRuntimeReference
    return OnnxRuntimeReference(compiled.source.path, compiled.graph)


def _litert(compiled: CompiledModel):
    """LiteRT's reference kernels on the user's own .tflite (legacy uint8 files included)."""
    from mbgen.litert_runner import LiteRtReference
    return LiteRtReference(compiled.source.path)


def verify_model(spec: str, options: CompileOptions, reference: str = "numpy",
                 images: Path | None = None, count: int = 3,
                 echo: Callable[[str], None] = print, float_layers: bool = False
                 ) -> VerifyOutcome:
    from mbgen import runner, targets
    from mbgen.reference import run_int8

    target = targets.get(options.target)
    if reference == "onnxruntime" and resolve_model(spec).kind != "onnx":
        raise UserError("--reference onnxruntime needs an .onnx model file")
    if reference == "litert" and resolve_model(spec).kind != "tflite":
        raise UserError("--reference litert needs a .tflite model file")
    with tempfile.TemporaryDirectory(prefix="mbgen-verify-") as tmp:
        work = Path(tmp)
        out_dir = options.out_dir or work / "target"
        prepared = prepare(spec, options)
        compiled = emit(prepared, replace(options, out_dir=out_dir))
        # The host build is the same int8 graph through the host target's (portable) kernels.
        host = compiled if target.is_host else emit(
            prepared, replace(options, target="host", out_dir=work / "host", kernels=None,
                              force=True, emit_tflite=None))
        inputs = make_inputs(compiled.graph, images, count, prepared.preprocessing)
        run_float_model = float_model(compiled.source, compiled.float_graph, options.weights)
        tflm_path = _tflm_model(compiled, work) if reference == "tflm" else None
        onnxruntime = _onnxruntime(compiled) if reference == "onnxruntime" else None
        litert = _litert(compiled) if reference == "litert" else None
        echo(f"verify {compiled.report['model']} on {target.name} "
             f"({len(inputs)} inputs, kernels {compiled.report['kernels']})")
        if tflm_path is not None:
            from mbgen.tflm import tflm_arena_bytes
            # Like with like: TFLM's arena holds the input and output tensors too.
            memory = compiled.report["memory"]
            ours = memory["arena_bytes"] + memory["io_bytes"]
            echo(f"  RAM: mbgen arena + input/output {ours} bytes (sram_bytes with statics "
                 f"and stack {memory['sram_bytes']}), TFLM arena (input and output inside) "
                 f"{tflm_arena_bytes(tflm_path)} bytes")

        outcome = VerifyOutcome()
        out_dtype = compiled.graph.tensors[compiled.graph.outputs[0]].dtype

        def _output(raw: bytes) -> np.ndarray:  # uint8 for a uint8 interface
            return np.frombuffer(raw, dtype=out_dtype)

        def record(c: Comparison) -> None:
            outcome.comparisons.append(c)
            verdict = {True: "ok  ", False: "FAIL", None: "info"}[c.exact]
            echo(f"  {verdict} {c.label:<18} {c.what:<27} {c.detail}")

        for item in inputs:
            want = run_int8(compiled.graph, item.int8_nhwc)[compiled.graph.outputs[0]]
            on_host = runner.run_host(host.out_dir, item.int8_nhwc.tobytes())
            record(_exact(item.label, "host C vs numpy", _output(on_host.output), want))
            if not target.is_host:
                on_target = runner.run_qemu(out_dir, target, item.int8_nhwc.tobytes())
                record(_exact(item.label, f"QEMU {target.name} vs numpy",
                              _output(on_target.output), want))
                record(_exact(item.label, "QEMU vs host C", _output(on_target.output),
                              _output(on_host.output)))
            if tflm_path is not None:
                from mbgen.tflm import run_tflm
                by_tflm = run_tflm(tflm_path, item.int8_nhwc)
                record(_exact(item.label, "host C vs TFLM", _output(on_host.output), by_tflm))
                record(_exact(item.label, "numpy vs TFLM", want, by_tflm))
            if onnxruntime is not None and item.float_nhwc is not None:
                by_ort = onnxruntime.run_int8(item.float_nhwc)
                record(_exact(item.label, "host C vs onnxruntime", _output(on_host.output),
                              by_ort))
                record(_exact(item.label, "numpy vs onnxruntime", want, by_ort))
            if litert is not None:
                by_litert = litert.run_int8(item.int8_nhwc)
                record(_exact(item.label, "host C vs LiteRT (ref)", _output(on_host.output),
                              by_litert))
                record(_exact(item.label, "numpy vs LiteRT (ref)", want, by_litert))
            if run_float_model is not None and item.float_nhwc is not None:
                reference_float = run_float_model(item.float_nhwc)
                got = dequantize(compiled.graph, want)
                same_top1 = int(np.argmax(got)) == int(np.argmax(reference_float))
                record(Comparison(item.label, "int8 vs float model", None,
                                  f"cosine {cosine(got, reference_float):.4f}, top-1 "
                                  f"{'same' if same_top1 else 'differs'}"))
        if float_layers:
            _print_layer_sqnr(compiled, options, inputs, echo)
        failed = sum(c.exact is False for c in outcome.comparisons)
        exact = sum(c.exact is True for c in outcome.comparisons)
        echo(f"{exact} bit-exact, {failed} mismatched" + ("" if failed else ": OK"))
        return outcome



def _print_layer_sqnr(compiled: CompiledModel, options: CompileOptions,
                      inputs: list[VerifyInput], echo: Callable[[str], None]) -> None:
    """``verify --float``: per-layer SQNR of the int8 graph against the float graph, worst
    layers first, on the verify inputs (the photos of --images and the synthetic ones)."""
    from mbgen import passes
    from mbgen.fidelity import layer_table, measure
    if compiled.float_graph is None:
        raise UserError("--float needs a float model (this one arrived already int8)")
    float_graph = passes.optimize(compiled.float_graph)
    layer_graph = float_graph
    if options.cle:   # compare like with like: the tensors between equalised layers rescale
        from mbgen.quantize.equalize import equalize
        layer_graph = equalize(float_graph)[0]
    floats = [item.float_nhwc for item in inputs if item.float_nhwc is not None]
    result = measure(float_graph, compiled.graph, floats, layer_graph)
    echo(f"per-layer SQNR against the float graph on {len(floats)} inputs (worst first):")
    for line in layer_table(result["layers"]):
        echo(line)
