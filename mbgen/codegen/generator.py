"""``generate``: an int8 graph and its memory plan in, the flat C folder of architecture.md out.

Lowering picks a call record per layer (chosen kernel set, else portable); rendering feeds
the records to the Jinja templates; nothing here writes C text itself.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import jinja2
import numpy as np

import mbgen
from mbgen import ir, output_folder, targets
from mbgen.codegen import kernel_sets
from mbgen.codegen.kernels_layout import input_is_nchw
from mbgen.codegen.lowering import LoweringContext, is_valid_c_name
from mbgen.codegen.records import ConstArray, Layer, constants_of
from mbgen.codegen.report import build_report, layer_macs, layer_params
from mbgen.errors import UserError
from mbgen.output_folder import REPORT
from mbgen.planner import GraphPlan

HOST_HARNESS = "harness/host_main.c.j2"
CORTEXM_HARNESS = "harness/cortexm_main.c.j2"
_VALUES_PER_LINE = 16
# C element type of the caller's buffers: int8, or uint8 for a uint8 interface (TF2 PTQ files).
_IO_CTYPES = {"int8": "int8_t", "uint8": "uint8_t"}


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


def _check_graph(graph: ir.Graph, name: str) -> None:
    if not is_valid_c_name(name):
        raise UserError(f"--name {name!r} is not a C identifier (letters, digits, _; "
                        "not starting with a digit)")
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise UserError(f"model {graph.name!r} has {len(graph.inputs)} inputs and "
                        f"{len(graph.outputs)} outputs; mbgen supports exactly one of each")
    for role, tensor_name in (("input", graph.inputs[0]), ("output", graph.outputs[0])):
        t = graph.tensors[tensor_name]
        if t.dtype not in _IO_CTYPES or t.quant is None or t.quant.scale.size != 1:
            raise UserError(f"model {graph.name!r}: {role} {tensor_name!r} is {t.dtype}; "
                            "codegen needs an int8 graph (quantize it first)")


def lower_graph(graph: ir.Graph, plan: GraphPlan, prefix: str, kernels: str,
                target: str = "host", flash_budget: int | None = None,
                weight_layout: str = "auto") -> list[Layer]:
    """One Layer per node: the chosen kernel set's call record, else the portable one."""
    chosen = kernel_sets.get(kernels)
    fallback = kernel_sets.portable()
    ctx = LoweringContext(graph, plan, prefix, target, flash_budget, weight_layout)
    layers = []
    for index, node in enumerate(graph.nodes):
        if isinstance(node.op, ir.StreamedStage):   # mbgen.streaming: band calls + moves
            from mbgen.codegen.lower_stage import lower_stage
            layers.append(lower_stage(ctx, index, node, chosen, fallback))
            continue
        call, used = chosen.lower(ctx, index, node), chosen.name
        if call is None and chosen is not fallback:
            call, used = fallback.lower(ctx, index, node), fallback.name
        if call is None:
            raise UserError(f"layer {node.name!r}: {ir.op_name(node.op)} with these shapes "
                            "has no int8 C kernel in mbgen")
        out = graph.tensors[node.outputs[0]]
        layers.append(Layer(
            index=index, name=node.name, op=ir.op_name(node.op), kernel_set=used, call=call,
            input_shape=tuple(graph.tensors[node.inputs[0]].shape),
            output_shape=tuple(out.shape),
            macs=layer_macs(graph, node), params=layer_params(graph, node),
            arena_offset=plan.offsets.get(node.outputs[0]),
            output_bytes=out.nbytes))
    return layers


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


def generate(graph: ir.Graph, plan: GraphPlan, out_dir: Path, *, name: str = "model",
             target: str = "host", kernels: str = "portable", harness: bool = True,
             flash_budget: int | None = None, weight_layout: str = "auto",
             harness_template: str | None = None, harness_context: dict | None = None) -> dict:
    """Write model.h/.c, model_weights.h/.c, model_kernels.h/.c, main.c and report.json
    (``model`` replaced by ``name``) into ``out_dir``; return the report.

    ``flash_budget`` overrides the target's flash for layout decisions; ``weight_layout``
    forces a kernel set's weight format ("int16" pairs: faster, "int8": half the flash).
    ``harness_template`` (with ``harness_context``) replaces the target's main.c template,
    e.g. a board port's (mbgen/board_project.py)."""
    out_dir = Path(out_dir)
    _check_graph(graph, name)
    layers = lower_graph(graph, plan, name, kernels, target, flash_budget, weight_layout)
    constants = _unique_constants(layers)

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
        input_ctype=_IO_CTYPES[x.dtype], output_ctype=_IO_CTYPES[y.dtype],
        input_nchw=input_is_nchw(graph),
        input_shape=list(x.shape), output_shape=list(y.shape),
        input_scale=x.quant.scalar_scale, input_zero_point=x.quant.scalar_zero_point,
        output_scale=y.quant.scalar_scale, output_zero_point=y.quant.scalar_zero_point,
        arena_size=int(plan.arena_size), num_layers=len(layers),
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
        from mbgen.codegen import kernels_cmsis_nn
        cflags += kernels_cmsis_nn.core_cflags(target)
    compiler = "cc" if target.is_host else "arm-none-eabi-gcc"
    return {"compiler": compiler, "cflags": cflags + list(WARNING_FLAGS)}


def write_report(folder: Path, report: dict) -> None:
    (folder / REPORT).write_text(json.dumps(report, indent=2) + "\n")
