"""The `mbgen` command: parses arguments, calls the pipeline, prints. No logic of its own."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from mbgen.errors import RunFailure, UserError

EXIT_OK, EXIT_FAILED, EXIT_USER_ERROR = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad arguments already; keep its message to one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"mbgen: error: {message} (see `mbgen --help`)\n")


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KB"


# ----------------------------------------------------------------------------- commands


def cmd_models(args: argparse.Namespace) -> int:
    from mbgen import zoo
    for name in zoo.names():
        print(name)
    return EXIT_OK


def cmd_targets(args: argparse.Namespace) -> int:
    from mbgen import targets
    print(f"{'target':<12} {'core':<12} {'RAM':>9} {'flash':>9}  {'QEMU machine':<14} part")
    for t in targets.all_targets():
        ram = _kib(t.ram_bytes) if t.ram_bytes else "-"
        flash = _kib(t.flash_bytes) if t.flash_bytes else "-"
        print(f"{t.name:<12} {t.core:<12} {ram:>9} {flash:>9}  {t.qemu_machine or '-':<14} "
              f"{t.part or '-'}")
    return EXIT_OK


def _compile_options(args: argparse.Namespace):
    from mbgen.compiler import CompileOptions
    board = getattr(args, "board", None)
    target = args.target
    if target is None:   # a board brings its core; otherwise the host
        from mbgen import boards
        target = boards.get(board).target if board else "host"
    if getattr(args, "input", None) and not board:
        raise UserError("--input is the input a board runs on: give --board too")
    return CompileOptions(
        target=target, board=board,
        board_input=Path(args.input) if getattr(args, "input", None) else None,
        out_dir=Path(args.output) if args.output else None, name=args.name,
        kernels=args.kernels, calib_sources=tuple(args.calib or ()),
        range_method=args.range_method, bias_correction=args.bias_correction, cle=args.cle,
        adaround=args.adaround, augment=args.augment, holdout=args.holdout,
        calib_percentile=args.calib_percentile, force=args.force, ram_bytes=args.ram,
        flash_bytes=args.flash, weight_layout=args.weight_layout, optimize=args.optimize,
        cmsis_nn=Path(args.cmsis_nn) if args.cmsis_nn else None,
        emit_tflite=Path(args.emit_tflite) if getattr(args, "emit_tflite", None) else None,
        input_range=args.input_range, mean=args.mean, std=args.std,
        weights=Path(args.weights) if args.weights else None,
        io=getattr(args, "io", None),
        stream=not getattr(args, "no_stream", False),
        max_recompute=getattr(args, "max_recompute", 0.10))


def _room(used: int, budget: int | None) -> str:
    if not budget:
        return ""
    return (f" ({100.0 * used / budget:.1f}% of {_kib(budget)}; "
            f"{_kib(budget - used)} left for the application)")


def _model_layers(report: dict) -> int:
    """The model's layers: a streamed stage is one generated layer of several."""
    stages = report.get("streaming", [])
    return len(report["layers"]) - len(stages) + sum(len(s["layers"]) for s in stages)


def print_summary(compiled) -> None:
    r = compiled.report
    memory = r["memory"]
    budget = compiled.budget
    print(f"{r['model']} -> {compiled.out_dir}  (target {r['target']}, kernels {r['kernels']})")
    print(f"  layers  {_model_layers(r)}")
    print(f"  MACs    {r['macs'] / 1e6:.2f} M")
    print(f"  params  {r['params'] / 1e6:.3f} M")
    parts = [f"arena {_kib(memory['arena_bytes'])}"
             + (" (input and output inside)" if r.get("io") == "arena" else ""),
             f"input+output {_kib(memory['io_bytes'])}"]
    if r.get("io") == "arena":
        parts.pop()
    if memory["other_static_ram_bytes"]:
        parts.append(f"other statics {_kib(memory['other_static_ram_bytes'])}")
    if memory["stack_bytes"] is not None:
        bound = "" if memory["stack_bounded"] else " (at least)"
        parts.append(f"stack {memory['stack_bytes']} B{bound}")
    print(f"  RAM     {_kib(memory['sram_bytes'])}{_room(memory['sram_bytes'], budget.get('ram_bytes'))}"
          f": {' + '.join(parts)}")
    if memory["flash_bytes"] is not None:
        print(f"  flash   {_kib(memory['flash_bytes'])}"
              f"{_room(memory['flash_bytes'], budget.get('flash_bytes'))}: weights "
              f"{_kib(memory['weights_bytes'])} + code {_kib(memory['code_bytes'])} "
              "(the example main.c not counted)")
    else:
        print(f"  weights {_kib(memory['weights_bytes'])}")
    if "weight_layout" in budget:
        print(f"  layout  {budget['weight_layout']}")
    for stage in r.get("streaming", []):
        layers = " -> ".join(layer["name"] for layer in stage["layers"])
        print(f"  stream  {layers}: {stage['band_rows']}-row bands, windows "
              f"{_kib(stage['window_bytes'])}, overhead {stage['overhead_macs']} MAC-eq")
    if "note" in budget:
        print(f"  note    {budget['note']}")
    if "board" in r:
        b, image = r["board"], memory["example_firmware"]
        flash = image["text"] + image["data"]
        ram = image["data"] + image["bss"] + image["stack_reserve"]
        print(f"  image   flash {_kib(flash)} of {_kib(b['flash_bytes'])}, RAM {_kib(ram)} of "
              f"{_kib(b['ram_bytes'])} on the {b['part']} (model, harness, port and input)")
        print(f"  board   {b['name']}: make -C {compiled.out_dir}, or cmake -B build "
              f"{compiled.out_dir} && cmake --build build; then mbgen flash {compiled.out_dir}")
    print(f"  folder  {budget['folder']}")


def compile_json(compiled) -> dict:
    r = compiled.report
    keys = ("model", "target", "kernels", "macs", "params", "memory", "preprocessing",
            "interface", "fallback_layers", "fidelity")
    return {"out_dir": str(compiled.out_dir), "layers": _model_layers(r),
            **{k: r.get(k) for k in keys}, "budget": compiled.budget}


def cmd_compile(args: argparse.Namespace) -> int:
    from mbgen.compiler import compile_model
    compiled = compile_model(args.model, _compile_options(args))
    if args.json:
        print(json.dumps(compile_json(compiled), indent=2))
        return EXIT_OK
    print_summary(compiled)
    from mbgen.fidelity import summary_lines
    for line in summary_lines(compiled.report.get("fidelity") or {}):
        print(line)
    if args.emit_tflite:
        print(f"  tflite  {args.emit_tflite}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from mbgen import runner
    out_dir = Path(args.folder)
    if args.input and not Path(args.input).is_file():
        raise UserError(f"input file not found: {args.input}")
    input_bytes = Path(args.input).read_bytes() if args.input else None
    if _board_of(out_dir) is not None:
        return _run_board_folder(out_dir, args)
    io = labels = None
    if args.image and args.input:
        raise UserError("give either --input (raw bytes) or --image (a photo), not both")
    if args.top is not None and args.top < 1:
        raise UserError(f"--top must be at least 1, got {args.top}")
    if args.image or args.labels or args.top is not None:
        from mbgen import classify
        io = classify.folder_io(out_dir)
        if args.labels:
            labels = classify.read_labels(Path(args.labels), math.prod(io.output.shape))
        if args.image:
            input_bytes = classify.image_input(io, Path(args.image))
    if args.qemu and not runner.folder_target(out_dir).runs_in_qemu:
        raise UserError(f"{out_dir} was compiled for {runner.folder_target(out_dir).name}, "
                        "which has no QEMU board; run it with --host, or compile for a "
                        "Cortex-M target")
    result = runner.run_folder(out_dir, qemu=not args.host, input_bytes=input_bytes,
                               timeout=args.timeout)
    if args.json:
        if io is None:  # a folder from an older mbgen has no interface record: raw int8
            from mbgen import classify
            try:
                io = classify.folder_io(out_dir)
            except UserError:
                pass
        print(json.dumps(run_json(result, io, labels, args.top), indent=2))
        if args.output:
            Path(args.output).write_bytes(result.output)
        return EXIT_OK
    if io is not None:
        from mbgen import classify
        ranked = classify.top_k(io, result.output, 5 if args.top is None else args.top, labels)
        print(f"top-{len(ranked)}" + (f" for {args.image}" if args.image else "") + ":")
        print("\n".join(classify.format_ranked(io, ranked)))
    if args.output:
        Path(args.output).write_bytes(result.output)
        print(f"output: {len(result.output)} bytes -> {args.output}")
    elif io is None:
        values = result.output_int8().ravel()
        top = values.argsort(kind="stable")[::-1][:5]
        head = " ".join(str(v) for v in values[:16]) + (" ..." if values.size > 16 else "")
        print(f"output: {values.size} int8 values: {head}")
        print("  top-5: " + ", ".join(f"[{i}] {values[i]}" for i in top))
    if result.total_instructions is not None:
        width = max((len(n) for n, _ in result.layer_instructions), default=5)
        for layer, count in result.layer_instructions:
            print(f"  {layer:<{width}} {count:>12,d} instructions")
        print(f"  {'total':<{width}} {result.total_instructions:>12,d} instructions")
    if result.stack_peak_bytes is not None:
        print(f"  stack peak {result.stack_peak_bytes:,d} bytes (measured, whole firmware)")
    return EXIT_OK


def run_json(result, io, labels, top) -> dict:
    """`run --json`: the output, the labelled top-K when the folder describes its output, and
    the instruction counts (QEMU)."""
    entry: dict = {"total_instructions": result.total_instructions,
                   "layer_instructions": [{"layer": n, "instructions": c}
                                          for n, c in result.layer_instructions]}
    import numpy as np
    if io is not None:
        from mbgen import classify
        entry["output"] = np.frombuffer(result.output, dtype=io.output.dtype).tolist()
        entry["scores_are_probabilities"] = io.scores_are_probabilities
        entry["top"] = [r.as_json() for r in
                        classify.top_k(io, result.output, 5 if top is None else top, labels)]
    else:
        entry["output"] = np.frombuffer(result.output, dtype=np.int8).tolist()
    return entry


def cmd_boards(args: argparse.Namespace) -> int:
    from mbgen import boards
    print(f"{'board':<14} {'part':<12} {'core':<10} {'RAM':>9} {'flash':>9} {'clock':>8}  QEMU")
    for b in boards.all_boards():
        print(f"{b.name:<14} {b.part:<12} {b.target:<10} {_kib(b.ram_bytes):>9} "
              f"{_kib(b.flash_bytes):>9} {b.sysclk_hz / 1e6:>4.0f} MHz  {b.qemu_machine or '-'}")
    return EXIT_OK


def cmd_flash(args: argparse.Namespace) -> int:
    import shlex

    from mbgen import flash
    out_dir = Path(args.folder)
    if args.dry_run:
        for command in flash.planned_commands(out_dir, args.probe):
            print(shlex.join(command))
        port = args.port or "the board's console port (--port)"
        print(f"# then read {port} at {flash.BAUD} baud until MBGEN_EXIT")
        return EXIT_OK
    from mbgen.runner.board import output_is_unsigned
    report = flash.flash(out_dir, args.probe, args.port, args.timeout)
    for line in flash.describe(report, signed=not output_is_unsigned(out_dir)):
        print(line)
    return EXIT_OK


def _board_of(out_dir: Path):
    """The board a folder was compiled for, or None (a plain folder)."""
    from mbgen.runner.board import folder_board
    try:
        return folder_board(out_dir)
    except UserError:
        return None


def _run_board_folder(out_dir: Path, args: argparse.Namespace) -> int:
    """A --board folder runs its own image (input in flash) where QEMU models the part."""
    from mbgen import flash
    from mbgen.runner.board import build_image, output_is_unsigned, run_in_qemu
    board = _board_of(out_dir)
    if args.host or args.input or args.output or getattr(args, "image", None):
        raise UserError(f"{out_dir} is a {board.name} project: its input is compiled into "
                        "flash (compile again with --input); run it with no options, or "
                        "`mbgen flash` it")
    if not board.qemu_machine:
        raise UserError(f"QEMU has no model of {board.name}'s {board.part}; run it on the "
                        f"board with `mbgen flash {out_dir} --port ...`")
    report = run_in_qemu(build_image(out_dir).bin, board, args.timeout)
    for line in flash.describe(report, signed=not output_is_unsigned(out_dir)):
        print(line)
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from mbgen.verify import verify_model
    outcome = verify_model(args.model, _compile_options(args), reference=args.reference,
                           images=Path(args.images) if args.images else None,
                           count=args.count, echo=(lambda _line: None) if args.json else print,
                           float_layers=args.float)
    if args.json:
        print(json.dumps({"ok": outcome.ok, "comparisons": [
            {"input": c.label, "what": c.what, "exact": c.exact, "detail": c.detail}
            for c in outcome.comparisons]}, indent=2))
    return EXIT_OK if outcome.ok else EXIT_FAILED


def cmd_report(args: argparse.Namespace) -> int:
    from mbgen.html_report import write_report
    path = write_report(Path(args.folder), Path(args.output) if args.output else None)
    print(f"report: {path}")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from mbgen.bench import bench_model
    result = bench_model(args.model, args.target, kernel_sets=args.kernels,
                         cmsis_nn=args.cmsis_nn, echo=None if args.json else print)
    if args.json:
        print(json.dumps(result, indent=2))
    return EXIT_OK


# ----------------------------------------------------------------------------- parser


def _add_compile_args(p: argparse.ArgumentParser, output_help: str) -> None:
    p.add_argument("model", help="zoo name (mbv1_0.25_128, ...) or a .pt2/.onnx/.tflite file")
    p.add_argument("--target", default=None,
                   help="host (default), cortex-m7, ... (`mbgen targets`)")
    p.add_argument("-o", "--output", help=output_help)
    p.add_argument("--name", default="model", help="C prefix of the API (default: model)")
    p.add_argument("--kernels", help="kernel set: portable, mbgen, cmsis-nn")
    p.add_argument("--calib", metavar="DIR|FILE|GLOB", action="append",
                   help="calibration images (png/jpg/bmp) or .npy: a folder, a file or a glob "
                        "pattern; repeat to combine")
    p.add_argument("--range-method", choices=["minmax", "percentile", "mse", "kl", "auto"],
                   help="activation ranges: auto picks per tensor by the error "
                        "(default with --calib: auto; without: minmax)")
    p.add_argument("--bias-correction", action=argparse.BooleanOptionalAction, default=None,
                   help="correct biases for weight rounding (default: on with --calib)")
    p.add_argument("--cle", action="store_true",
                   help="cross-layer equalisation of conv pairs without ReLU6 between them")
    p.add_argument("--adaround", action="store_true",
                   help="AdaRound weight rounding (PyTorch on CPU; about 2 minutes)")
    p.add_argument("--augment", type=int, metavar="N",
                   help="augmented copies per calibration photo (default: automatic for "
                        "fewer than 32; 0: none)")
    p.add_argument("--holdout", type=float, default=0.2, metavar="FRACTION",
                   help="share of --calib held back to measure fidelity (default 0.2; 0: none)")
    p.add_argument("--calib-percentile", type=float, metavar="P",
                   help="clip activation ranges at the P-th percentile instead of min/max")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty folder mbgen did not make (adds mbgen's files; "
                        "never removes or overwrites yours)")
    p.add_argument("--ram", type=int, metavar="BYTES", help="override the target's RAM budget")
    p.add_argument("--flash", type=int, metavar="BYTES", help="override the flash budget")
    p.add_argument("--weight-layout", choices=["auto", "int16", "int8"], default="auto",
                   help="mbgen kernels: weights as pre-interleaved int16 pairs (fastest), "
                        "int8 (half the flash), or auto: as --optimize says")
    p.add_argument("--optimize", choices=["balanced", "speed", "size"], default="balanced",
                   help="mbgen kernels: size keeps int8 weights; speed gives int16 pairs to the "
                        "layers the flash budget allows; balanced (default) int16 pairs only "
                        "when the model stays under half the flash budget with them")
    p.add_argument("--cmsis-nn", metavar="PATH",
                   help="CMSIS-NN source tree for --kernels cmsis-nn (default: $CMSIS_NN_PATH)")
    p.add_argument("--io", choices=["arena", "external"],
                   help="arena: the input and output live in the model's arena "
                        "(<name>_input()/<name>_output(), the Cortex-M default); external: "
                        "<name>_invoke(input, output) takes the caller's buffers (host default)")
    p.add_argument("--weights", metavar="FILE.tflite",
                   help="zoo models: trained weights from a float .tflite file of the same "
                        "architecture (TF padding and head, its classes kept)")
    p.add_argument("--input-range", choices=["-1,1", "0,1"], metavar="-1,1|0,1",
                   help="what the float model reads for a 0..255 pixel: [-1, 1] (p/127.5 - 1) "
                        "or [0, 1] (p/255). Default: -1,1 for float models, the input's own "
                        "quantised range for int8 .tflite files (q = p - 128)")
    p.add_argument("--mean", metavar="M[,M,M]",
                   help="instead of --input-range: input = (p - mean) / std, in pixel units")
    p.add_argument("--std", metavar="S[,S,S]", help="see --mean (default 1)")
    p.add_argument("--no-stream", action="store_true",
                   help="compute every layer whole (no streamed stages of conv/dw/pw chains)")
    p.add_argument("--max-recompute", type=_fraction, default=0.10, metavar="F",
                   help="streamed stages may add at most this fraction of their MACs in "
                        "extra work: recomputed MACs, row moves, extra calls (default 0.10)")
    _add_common(p)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 10.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction between 0 and 10")
    return value


def _add_common(p: argparse.ArgumentParser) -> None:
    """-v after the subcommand too (`mbgen run OUT -v`)."""
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="print the build and QEMU commands mbgen runs")


def _examples(*lines: str) -> dict:
    return {"epilog": "example:\n" + "\n".join(f"  {line}" for line in lines),
            "formatter_class": argparse.RawDescriptionHelpFormatter}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mbgen", description="MobileNet models to bit-exact int8 C for "
                     "Cortex-M microcontrollers.")
    from mbgen import __version__
    parser.add_argument("--version", action="version", version=f"mbgen {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print the build and QEMU commands mbgen runs")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("models", help="list the built-in model zoo",
                       **_examples("mbgen models"))
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("targets", help="list targets with their RAM/flash budgets",
                       **_examples("mbgen targets"))
    p.set_defaults(func=cmd_targets)

    p = sub.add_parser("compile", help="compile a model to a C folder", **_examples(
        "mbgen compile mbv1_0.25_128 --target cortex-m7 -o out/mbv1",
        "mbgen compile mobilenet_v1_0.25_128.tflite --calib photos/ --target cortex-m7 -o out/m",
        "mbgen compile mbv1_0.25_128 --weights mobilenet_v1_0.25_128.tflite --calib photos/"))
    _add_compile_args(p, "output folder (default: out/<model>-<target or board>)")
    p.add_argument("--emit-tflite", metavar="PATH", help="also write the int8 graph as .tflite")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--board", help="a complete firmware project for a board: "
                   "netduinoplus2, nucleo-f411re, nucleo-f746zg (`mbgen boards`)")
    p.add_argument("--input", metavar="in.bin",
                   help="with --board: the raw input compiled into flash that the board runs "
                        "on (default: a fixed test pattern)")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("run", help="build a generated folder and run it on the host or in QEMU",
                       **_examples("mbgen run out/m --image cat.jpg --labels labels.txt",
                                   "mbgen run out/m --host --input in.bin --output out.bin"))
    p.add_argument("folder")
    _add_common(p)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--qemu", action="store_true", help="run in QEMU (default for Cortex-M)")
    where.add_argument("--host", action="store_true", help="build with the host cc and run")
    p.add_argument("--input", metavar="in.bin", help="raw int8 input (default: zeros)")
    p.add_argument("--image", metavar="PHOTO",
                   help="a photo (png/jpg/bmp): cropped, resized and quantised as recorded at "
                        "compile time; prints the top-5")
    p.add_argument("--labels", metavar="labels.txt", help="class names, one per line")
    p.add_argument("--top", type=int, metavar="K", help="how many classes to print (default 5)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--output", metavar="out.bin", help="write the raw int8 output here")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds before a run is a hang")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("boards", help="list the boards `compile --board` writes projects for",
                       **_examples("mbgen boards"))
    p.set_defaults(func=cmd_boards)

    p = sub.add_parser("flash", help="build a --board folder, flash it with pyOCD or OpenOCD, "
                       "read its result over the UART",
                       **_examples("mbgen flash out/mbv1-f746 --probe openocd "
                                   "--port /dev/ttyACM0",
                                   "mbgen flash out/mbv1-f746 --dry-run"))
    p.add_argument("folder")
    _add_common(p)
    p.add_argument("--probe", choices=["pyocd", "openocd"], default="pyocd",
                   help="the flashing tool (default: pyocd)")
    p.add_argument("--port", metavar="/dev/ttyX", help="the board's console serial port")
    p.add_argument("--dry-run", action="store_true",
                   help="print the build and flash commands instead of running them")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for the board's result")
    p.set_defaults(func=cmd_flash)

    p = sub.add_parser("verify", help="compile, run on host and QEMU, compare with references",
                       **_examples("mbgen verify mbv1_0.25_128 --target cortex-m7",
                                   "mbgen verify model.tflite --target cortex-m4 --reference tflm "
                                   "--images photos/"))
    _add_compile_args(p, "output folder (default: a temporary folder)")
    p.add_argument("--reference", choices=["numpy", "tflm", "onnxruntime", "litert"],
                   default="numpy",
                   help="independent int8 reference to compare with (default: numpy; "
                        "onnxruntime for int8 .onnx files; litert, its reference kernels, "
                        "for .tflite files incl. legacy uint8 ones)")
    p.add_argument("--images", metavar="DIR", help="photos to use as inputs (and synthetic ones)")
    p.add_argument("--count", type=int, default=3, help="synthetic inputs (default: 3)")
    p.add_argument("--float", action="store_true",
                   help="also print the per-layer SQNR against the float graph, worst first")
    p.add_argument("--json", action="store_true", help="print the comparisons as one JSON object")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("report", help="write report.html: the memory plan as a picture, "
                       "the layers and the budget",
                       **_examples("mbgen report out/mbv1_0.25_128-cortex-m7"))
    p.add_argument("folder")
    p.add_argument("-o", "--output", metavar="FILE.html",
                   help="where to write it (default: OUT/report.html)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", help="instructions per layer and kernel set, in QEMU",
                       **_examples("mbgen bench mbv1_0.25_128 --target cortex-m7 --json"))
    p.add_argument("model")
    p.add_argument("--target", default="cortex-m7")
    p.add_argument("--kernels", nargs="*", help="kernel sets to compare (default: all available)")
    p.add_argument("--cmsis-nn", metavar="PATH", help="CMSIS-NN source tree (or CMSIS_NN_PATH)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_common(p)
    p.set_defaults(func=cmd_bench)
    return parser


def _join_negative_values(argv: list[str]) -> list[str]:
    """`--input-range -1,1` would read -1,1 as an option: pass it as `--input-range=-1,1`."""
    joined: list[str] = []
    for arg in argv:
        if joined and joined[-1] in ("--input-range", "--mean") and arg.startswith("-"):
            joined[-1] = f"{joined[-1]}={arg}"
        else:
            joined.append(arg)
    return joined


def main(argv: list[str] | None = None) -> int:
    argv = _join_negative_values(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    from mbgen import progress
    progress.configure(verbose=bool(getattr(args, "verbose", False)))
    try:
        status = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return status
    except UserError as exc:
        print(f"mbgen: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RunFailure as exc:
        print(f"mbgen: failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("mbgen: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`mbgen run ... | head`): stop quietly, as cat would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
