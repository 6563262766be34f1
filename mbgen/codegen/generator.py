"""``generate``: an int8 graph in, the flat C folder of architecture.md out.

``program.build_program`` lowers, plans and binds; ``render`` feeds the bound records to the
Jinja templates; nothing here writes C text itself.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import jinja2
import numpy as np

import mbgen
from mbgen import ir, output_folder, targets
from mbgen.codegen.kernels_layout import input_is_nchw
from mbgen.codegen.program import IO_CTYPES, Program, build_program, check_graph
from mbgen.codegen.records import ConstArray, Layer, constants_of
from mbgen.codegen.report import build_report
from mbgen.output_folder import REPORT

HOST_HARNESS = "harness/host_main.c.j2"
CORTEXM_HARNESS = "harness/cortexm_main.c.j2"
_VALUES_PER_LINE = 16


# ----------------------------------------------------------------------------- jinja


def _c_rows(values: np.ndarray) -> list[str]:
    """Initializer rows of integers; INT32_MIN spelled so C does not see a long literal."""
    text = ["(-2147483647 - 1)" if v == -2147483648 else str(v) for v in values.tolist()]
    return [", ".join(text[i:i + _VALUES_PER_LINE]) + ","
            for i in range(0, len(text), _VALUES_PER_LINE)]


def _c_float(value: float) -> str:
    text = f"{float(np.float32(value)):.9g}"
    if not any(ch in text for ch in ".eEn"):
        text += ".0"
    return text + "f"


def _c_string(text: str) -> str:
    """Contents of a C string literal: escape what C would misread, drop the rest."""
    out = []
    for ch in text:
        if ch in "\\\"":
            out.append("\\" + ch)
        elif ch == "?":
            out.append("\\?")  # no trigraphs
        elif 32 <= ord(ch) < 127:
            out.append(ch)
        else:
            out.append("_")
    return "".join(out)


def _c_comment(text: str) -> str:
    return "".join(ch if 32 <= ord(ch) < 127 else "_" for ch in str(text)).replace("*/", "* /")


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(mbgen.TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters.update(c_rows=_c_rows, c_float=_c_float, c_string=_c_string,
                       c_comment=_c_comment)
    return env


# ----------------------------------------------------------------------------- lowering


def _unique_constants(layers: list[Layer]) -> list[ConstArray]:
    seen: set[str] = set()
    constants = []
    for layer in layers:
        inner = getattr(layer.call, "kernels", ())   # a streamed stage's band kernels
        for array in constants_of(layer.call) + [a for k in inner for a in constants_of(k.call)]:
            if array.symbol not in seen:
                seen.add(array.symbol)
                constants.append(array)
    return constants


def default_io(target: str) -> str:
    """Cortex-M folders keep the input and output in the arena (TFLM style: one block of
    RAM, the input's bytes reused once consumed); host folders take the caller's buffers,
    the simplest API to link on a PC."""
    return "external" if targets.get(target).is_host else "arena"


def generate(graph: ir.Graph, out_dir: Path, *, name: str = "model",
             target: str = "host", kernels: str = "portable", io: str | None = None,
             harness: bool = True, flash_budget: int | None = None,
             weight_layout: str = "auto", harness_template: str | None = None,
             harness_context: dict | None = None, stream=None) -> dict:
    """Write model.h/.c, model_weights.h/.c, model_kernels.h/.c, main.c and report.json
    (``model`` replaced by ``name``) into ``out_dir``; return the report.

    ``io``: "arena" (``<name>_input()``/``<name>_output()`` point into the arena,
    ``<name>_invoke(void)``) or "external" (the caller's buffers); None: ``default_io``.
    ``flash_budget`` overrides the target's flash for layout decisions; ``weight_layout``
    forces a kernel set's weight format ("int16" pairs: faster, "int8": half the flash).
    ``harness_template`` (with ``harness_context``) replaces the target's main.c template,
    e.g. a board port's (mbgen/board_project.py). ``stream``: mbgen.streaming's options
    (None: no streamed stages)."""
    program = build_program(graph, prefix=name, kernels=kernels, target=target,
                            io=io or default_io(target), flash_budget=flash_budget,
                            weight_layout=weight_layout, stream=stream)
    return render(program.graph, program, out_dir, name=name, target=target, kernels=kernels,
                  harness=harness, harness_template=harness_template,
                  harness_context=harness_context)


def render(graph: ir.Graph, program: Program, out_dir: Path, *, name: str = "model",
           target: str = "host", kernels: str = "portable", harness: bool = True,
           harness_template: str | None = None, harness_context: dict | None = None) -> dict:
    """The templates fed with a bound program (``program.build_program``): the folder."""
    out_dir = Path(out_dir)
    check_graph(graph, name)
    layers, plan = list(program.layers), program.plan
    constants = _unique_constants(layers)
    io_arena = plan.io == "arena"
    x_name, y_name = graph.inputs[0], graph.outputs[0]

    env = environment()
    x, y = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    base = {"prefix": name, "PREFIX": name.upper()}
    template_names = list(dict.fromkeys(
        t for layer in layers
        for t in (*getattr(layer.call, "inner_templates", ()), layer.call.template)))
    kernel_templates = {t: env.get_template(t).make_module(base) for t in template_names}
    context = dict(
        base,
        version=mbgen.__version__, model_name=graph.name, target=target, kernels=kernels,
        layers=layers, constants=constants, kernel_templates=kernel_templates,
        input_size=x.nbytes, output_size=y.nbytes,
        input_ctype=IO_CTYPES[x.dtype], output_ctype=IO_CTYPES[y.dtype],
        input_nchw=input_is_nchw(graph),
        input_shape=list(x.shape), output_shape=list(y.shape),
        input_scale=x.quant.scalar_scale, input_zero_point=x.quant.scalar_zero_point,
        output_scale=y.quant.scalar_scale, output_zero_point=y.quant.scalar_zero_point,
        arena_size=int(plan.arena_size), num_layers=len(layers), io_arena=io_arena,
        input_offset=plan.offsets.get(x_name, 0), output_offset=plan.offsets.get(y_name, 0),
        layer_names=[layer.name for layer in layers],
        weights_bytes=sum(c.nbytes for c in constants),
        **(harness_context or {}),
    )
    build_flags = folder_build_flags(target, layers)
    context["build_command"] = " ".join([build_flags["compiler"], *build_flags["cflags"]])

    sources = {
        f"{name}.h": "model.h.j2",
        f"{name}.c": "model.c.j2",
        f"{name}_weights.h": "model_weights.h.j2",
        f"{name}_weights.c": "model_weights.c.j2",
        f"{name}_kernels.h": "model_kernels.h.j2",
        f"{name}_kernels.c": "model_kernels.c.j2",
    }
    if harness:
        harness_template = harness_template or (
            HOST_HARNESS if target == "host" else CORTEXM_HARNESS)
        if (mbgen.TEMPLATES_DIR / harness_template).is_file():
            sources["main.c"] = harness_template

    files = list(sources) + [REPORT]
    rendered = {path: env.get_template(t).render(context) for path, t in sources.items()}
    report = build_report(graph, layers, constants, name=name, target=target,
                          kernels=kernels, arena_bytes=int(plan.arena_size), files=files,
                          build=build_flags, plan=plan)
    with tempfile.TemporaryDirectory(prefix="mbgen-render-") as staging:
        for path, text in rendered.items():
            (Path(staging) / path).write_text(text)
        write_report(Path(staging), report)
        output_folder.install(Path(staging), out_dir, files, force=False)
    return report


# What every generated folder is checked to build with, on top of its target's flags.
WARNING_FLAGS = ("-Wall", "-Wextra", "-Werror")


def folder_build_flags(target_name: str, layers: list[Layer]) -> dict:
    """The compiler and flags the folder is built and checked with for its target (CMSIS-NN's
    extra core flags when a layer calls it), recorded so a user's build can use the same."""
    target = targets.get(target_name)
    cflags = list(target.cflags)
    if any(layer.kernel_set == "cmsis-nn" for layer in layers):
        from mbgen.codegen import cmsis_nn_library
        cflags += cmsis_nn_library.core_cflags(target)
    compiler = "cc" if target.is_host else "arm-none-eabi-gcc"
    return {"compiler": compiler, "cflags": cflags + list(WARNING_FLAGS)}


def write_report(folder: Path, report: dict) -> None:
    (folder / REPORT).write_text(json.dumps(report, indent=2) + "\n")
