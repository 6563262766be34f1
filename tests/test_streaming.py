"""Streamed stages (mbgen/streaming): the band arithmetic on row numbers, random chains
compiled streamed against the numpy reference on the unfused graph, person_detect against
numpy and TFLM on the host and once in QEMU."""

from __future__ import annotations

import json
from dataclasses import dataclass
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers_c import build_folder, run
from test_codegen import A, GraphBuilder
from mbgen import codegen, ir, streaming
from mbgen.reference import run_int8
from mbgen.streaming.schedule import Band, LayerRows, Move, schedule, write_order
from mbgen.streaming.stage import fuse, layer_rows


# ----------------------------------------------------------------------------- band arithmetic


def _random_rows(rng: np.random.Generator) -> tuple[LayerRows, ...]:
    """A chain of 2..5 layers with kernels 1/3/5, strides 1/2, SAME or VALID, odd heights."""
    h = int(rng.integers(5, 30))
    layers = []
    for _ in range(int(rng.integers(2, 6))):
        k = int(rng.choice([1, 3, 5]))
        s = int(rng.choice([1, 2]))
        if rng.random() < 0.5 and h >= k:        # VALID
            pad_top, out = 0, (h - k) // s + 1
        else:                                     # SAME (TF: the extra row at the bottom)
            p = ir.Padding.same(h, 1, k, 1, s, 1)
            pad_top, out = p.top, -(-h // s)
        width = int(rng.integers(1, 4))
        row_in = layers[-1].out_row_bytes if layers else width
        layers.append(LayerRows(h, out, k, s, pad_top, row_in, int(rng.integers(1, 5))))
        h = out
    return tuple(layers)


def _replay(plan) -> None:
    """Run the steps on row numbers: every row of every tensor is computed at most once,
    in ascending order (a row no later call reads, under a 1x1 stride-2 layer, may be
    skipped); a call reads only rows already written and still held, where they are held."""
    layers = plan.layers
    windows = [[None] * c for c in plan.capacities]    # the row held in each window slot
    written = [0] * len(layers)                        # rows each layer has computed
    for step in plan.steps:
        if isinstance(step, Move):
            w = windows[step.window]
            w[:step.rows] = w[step.src_row:step.src_row + step.rows]
            continue
        assert isinstance(step, Band)
        rows = layers[step.layer]
        assert step.first >= written[step.layer], "rows computed out of order or twice"
        assert (step.in_first, step.in_end) == rows.input_rows(step.first, step.end)
        top, bottom = rows.band_padding(step.first, step.end)
        assert top >= 0 and bottom >= 0
        assert (step.end - step.first - 1) * rows.stride + rows.kernel == \
            top + (step.in_end - step.in_first) + bottom
        if step.layer == 0:
            assert step.in_row == step.in_first      # the whole stage input
        else:
            held = windows[step.layer - 1][step.in_row:step.in_row + step.in_end - step.in_first]
            assert held == list(range(step.in_first, step.in_end)), "read a row not held"
            assert written[step.layer - 1] >= step.in_end
        if step.layer < len(layers) - 1:
            w = windows[step.layer]
            assert step.out_row + step.end - step.first <= len(w), "window overflow"
            w[step.out_row:step.out_row + step.end - step.first] = range(step.first, step.end)
        else:
            assert step.out_row == step.first        # the whole stage output
        written[step.layer] = step.end
    # The last layer computes all of its output (in order, each row once: checked above);
    # the others up to the last row their consumer reads.
    assert written[-1] == layers[-1].out_h
    for j in range(1, len(layers)):
        assert written[j - 1] == layers[j].input_rows(0, written[j])[1]


def test_band_arithmetic_computes_every_row_once_and_reads_only_held_rows():
    rng = np.random.default_rng(11)
    cases = 0
    for _ in range(60):
        layers = _random_rows(rng)
        for band, slack, chunk in ((1, 0, 1), (1, 0, 0), (2, 2, 0), (3, 1, 2), (8, 0, 1)):
            plan = schedule(layers, band, slack, chunk)
            _replay(plan)
            order = write_order(plan)     # validates itself (ascending, covers the output)
            assert order.output_bytes == layers[-1].out_h * layers[-1].out_row_bytes
            cases += 1
    assert cases == 300


def test_write_order_never_promises_input_still_read():
    """Simulate the stage on one byte array with its output at the planner's delta: no
    input row is overwritten before the last read of it."""
    rng = np.random.default_rng(3)
    for _ in range(40):
        layers = _random_rows(rng)
        plan = schedule(layers, int(rng.integers(1, 4)), 0, 1)
        order = write_order(plan)
        delta = order.highest_safe_delta()
        first, last = layers[0], layers[-1]
        clobbered = set()     # input bytes overwritten so far
        for step in plan.steps:
            if not isinstance(step, Band):
                continue
            if step.layer == 0:
                lo, hi = step.in_first * first.in_row_bytes, step.in_end * first.in_row_bytes
                assert not clobbered & set(range(lo, hi)), "read input the output overwrote"
            if step.layer == len(layers) - 1:
                lo, hi = step.first * last.out_row_bytes, step.end * last.out_row_bytes
                clobbered |= {delta + b for b in range(lo, hi)}


# ----------------------------------------------------------------------------- random chains


def _random_chain(seed: int) -> tuple[ir.Graph, list[int]]:
    """conv -> [stage: conv k3/k5 s2, dw k5/k3 (multiplier 2 for seed 1), pw, dw s2, pw,
    SAME or VALID by seed] -> dw, odd sizes and random channels; returns the graph and the
    indices of the stage's nodes."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder(seed, f"chain{seed}")
    x = b.input((1, 2 * int(rng.integers(8, 13)) + 1, 2 * int(rng.integers(4, 8)) + 1, 3))
    t = b.conv(x, 5, k=(1, 1))                        # before the stage: arena input

    def padding(valid: bool) -> ir.Padding | None:
        return ir.Padding() if valid else None        # None: TF 'SAME'

    acts = [A.RELU6, A.RELU, A.NONE]
    k = (3, 5)[seed % 2]
    t = b.conv(t, int(rng.integers(3, 9)), k=(k, k), stride=(2, 2),
               padding=padding(seed % 2 == 1), act=acts[seed % 3])
    k = (5, 3)[seed % 2]
    t = b.depthwise(t, multiplier=2 if seed == 1 else 1, k=(k, k), padding=padding(seed == 2),
                    act=acts[(seed + 1) % 3])
    t = b.conv(t, int(rng.integers(3, 9)), k=(1, 1), act=acts[(seed + 2) % 3])
    t = b.depthwise(t, k=(3, 3), stride=(2, 2), padding=padding(seed == 0))
    t = b.conv(t, int(rng.integers(3, 9)), k=(1, 1))
    t = b.depthwise(t)                                # after: the stage output in the arena
    graph = b.graph(t)
    return graph, list(range(1, len(graph.nodes) - 1))


def _compile_and_compare(graph: ir.Graph, lowered: ir.Graph, kernels: str, out: Path,
                         inputs: list[np.ndarray], io: str = "external") -> dict:
    shutil.rmtree(out, ignore_errors=True)
    report = codegen.generate(lowered, out, kernels=kernels, io=io)
    exe = build_folder(out)
    for x in inputs:
        got = np.frombuffer(run(exe, x.tobytes()), np.int8)
        want = run_int8(graph, x)[graph.outputs[0]].reshape(-1)
        np.testing.assert_array_equal(got, want, err_msg=f"{graph.name} {kernels}")
    return report


@pytest.mark.parametrize("kernels", ["portable", "mbgen"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_chain_streamed_equals_reference(seed, kernels, tmp_path):
    graph, stage = _random_chain(seed)
    rng = np.random.default_rng(seed + 100)
    shape = graph.tensors[graph.inputs[0]].shape
    inputs = [rng.integers(-128, 128, size=shape).astype(np.int8) for _ in range(2)]
    # the whole middle as one stage, with band/slack/chunk the seed picks
    band, slack, chunk = [(1, 0, 1), (2, 1, 0), (3, 0, 2)][seed]
    lowered = fuse(graph, stage, band, slack, chunk, "stage")
    assert sum(isinstance(n.op, ir.StreamedStage) for n in lowered.nodes) == 1
    _compile_and_compare(graph, lowered, kernels, tmp_path / "fused", inputs)
    # the stage straight from the model input to the model output (input + row offsets),
    # the caller's buffers and the arena's (there its output may overlay its input)
    edge = fuse(graph, list(range(len(graph.nodes))), 1, 0, 1, "edge")
    for io in ("external", "arena"):
        _compile_and_compare(graph, edge, kernels, tmp_path / f"edge-{io}", inputs, io)


def test_pass_picks_stages_that_shrink_the_arena(tmp_path):
    b = GraphBuilder(7, "wide")
    x = b.input((1, 40, 24, 3))
    t = b.conv(x, 8, stride=(2, 2))
    t = b.depthwise(t)
    t = b.conv(t, 16, k=(1, 1))
    t = b.depthwise(t, stride=(2, 2))
    t = b.conv(t, 8, k=(1, 1))
    graph = b.graph(t)
    plan_of = codegen.program.planner_for("portable")
    lowered = streaming.streamed(graph, "portable", plan_of=plan_of)
    assert any(isinstance(n.op, ir.StreamedStage) for n in lowered.nodes)
    assert [n.name for n in graph.nodes] == [n.name for n in b.nodes]   # input untouched
    before = codegen.build_program(graph).plan.arena_size
    program = codegen.build_program(lowered)
    after = program.plan.arena_size
    assert after < before
    x_in = np.random.default_rng(0).integers(-128, 128, size=(1, 40, 24, 3)).astype(np.int8)
    report = _compile_and_compare(graph, lowered, "portable", tmp_path / "out", [x_in])
    assert report["arena_bytes"] == after
    stages = streaming.stages_report(lowered)
    assert stages and all(layer["recompute_macs"] == 0
                          for s in stages for layer in s["layers"])
    # the planner's view of a stage: it reads its input and writes its output in ascending rows
    for node in lowered.nodes:
        if isinstance(node.op, ir.StreamedStage):
            order = streaming.stage_write_order(lowered, node.op)
            assert order.input_bytes == lowered.tensors[node.inputs[0]].nbytes
            assert order.output_bytes == lowered.tensors[node.outputs[0]].nbytes
    # a stage is ONE kernel instance: one scratch request (its windows and band kernels'),
    # and its walk over its input (so its output may overlay consumed input)
    for instance in program.instances:
        if isinstance(instance.node.op, ir.StreamedStage):
            windows = streaming.stages_report(lowered)[0]["window_bytes"]
            assert instance.scratch_bytes >= windows
            assert instance.walks and instance.walks[0][0] == instance.node.inputs[0]
            assert {b.name: b.size for b in program.plan.buffers}[
                "scratch:" + instance.node.name] == instance.scratch_bytes
    # the pipeline streams when asked, judging stages with its own planner (io arena too)
    for io in ("external", "arena"):
        streamed = codegen.build_program(graph, io=io,
                                         stream=streaming.options_for("portable"))
        assert any(isinstance(n.op, ir.StreamedStage) for n in streamed.graph.nodes)
        assert streamed.plan.arena_size < codegen.build_program(graph, io=io).plan.arena_size
    # off: the same graph back
    assert streaming.streamed(graph, "portable", enabled=False, plan_of=plan_of) is graph
    # no overhead allowed: no stage
    assert not any(isinstance(n.op, ir.StreamedStage)
                   for n in streaming.streamed(graph, "portable", max_recompute=0.0,
                                                plan_of=plan_of).nodes)



def test_mbgen_calls_cost_what_they_repeat():
    """An extra mbgen call of a GEMM layer re-widens its int8 weights, of a depthwise layer
    re-transposes the rows its window shares with the previous band: the stage's overhead
    counts both, and the pass then takes bands no shorter than at the fixed cost."""
    from mbgen.streaming import choose
    b = GraphBuilder(8, "wide")
    x = b.input((1, 32, 16, 8))
    t = b.depthwise(x)
    t = b.conv(t, 32, k=(1, 1))
    t = b.depthwise(t, stride=(2, 2))
    graph = b.graph(t)
    dw, pw, dw2 = graph.nodes
    mbgen, fixed = streaming.options_for("mbgen"), streaming.options_for("cmsis-nn")
    assert mbgen.dsp_calls and not fixed.dsp_calls and not streaming.options_for("portable").dsp_calls
    assert choose.call_costs(graph.tensors, graph.nodes, fixed) == (choose.SIMD_CALL_COST_MACS,) * 3
    extra = [c - choose.SIMD_CALL_COST_MACS
             for c in choose.call_costs(graph.tensors, graph.nodes, mbgen)]
    assert extra == [2 * 16 * 8,              # 3x3 stride 1: two rows of 16 x 8 again
                     int(1.25 * 8 * 32),       # every int8 weight widened again
                     1 * 16 * 32]              # 3x3 stride 2: one row of 16 x 32 again
    with_dsp = choose.best_bands(graph, [0, 1, 2], mbgen)
    without = choose.best_bands(graph, [0, 1, 2], fixed)
    assert with_dsp is not None and without is not None
    assert with_dsp[0] >= without[0]
    plan = with_dsp[3]
    costs = choose.call_costs(graph.tensors, graph.nodes, mbgen)
    assert choose.overhead_macs(plan, costs) == -(-plan.moved_bytes() // 4) + sum(
        cost * (plan.calls(j) - 1) for j, cost in enumerate(costs))


def test_layer_rows_refuses_what_cannot_stream():
    b = GraphBuilder(1)
    x = b.input((1, 9, 9, 4))
    t = b.conv(x, 4, dilation=(2, 2))
    t = b.fully_connected(b.reshape(t, (1, b.tensors[t].size)), 3)
    graph = b.graph(t)
    assert all(layer_rows(graph.tensors, n) is None for n in graph.nodes)


# ----------------------------------------------------------------------------- person_detect


@pytest.fixture(scope="module")
def person_detect_streamed(tmp_path_factory, shared_dir: Path):
    from mbgen.compiler import CompileOptions, emit, prepare
    model = shared_dir / "models" / "person_detect.tflite"
    prepared = prepare(str(model), CompileOptions())
    out = tmp_path_factory.mktemp("pd") / "host"
    compiled = emit(prepared, CompileOptions(target="host", out_dir=out))
    return model, prepared.graph, compiled, out


@pytest.mark.slow
def test_person_detect_streamed_equals_numpy_and_tflm(person_detect_streamed, shared_dir):
    from mbgen.images import load_image
    from mbgen.tflm import run_tflm
    model, graph, compiled, out = person_detect_streamed
    report = json.loads((out / "report.json").read_text())
    assert report["streaming"], "person_detect's first layers should stream"
    assert any(layer["op"] == "StreamedStage" for layer in report["layers"])
    exe = build_folder(out)
    inputs = [load_image(shared_dir / "images" / "person.bmp", (1, 96, 96, 1),
                         "uint8_minus128", xor_0x80=True).astype(np.int8),
              np.random.default_rng(5).integers(-128, 128, (1, 96, 96, 1)).astype(np.int8)]
    for x in inputs:
        got = np.frombuffer(run(exe, x.tobytes()), np.int8)
        np.testing.assert_array_equal(got, run_int8(graph, x)[graph.outputs[0]].reshape(-1))
        np.testing.assert_array_equal(got, np.asarray(run_tflm(model, x)).reshape(-1))


@pytest.mark.slow
@pytest.mark.qemu
def test_person_detect_streamed_in_qemu_cortex_m7(person_detect_streamed, tmp_path):
    from mbgen import targets
    from mbgen.compiler import CompileOptions, emit, prepare
    from mbgen.runner import run_qemu
    if shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("no qemu-system-arm / arm-none-eabi-gcc")
    model, graph, _, _ = person_detect_streamed
    target = targets.get("cortex-m7")
    compiled = emit(prepare(str(model), CompileOptions()),
                    CompileOptions(target="cortex-m7", out_dir=tmp_path / "m7"))
    assert compiled.report["streaming"]
    x = np.random.default_rng(9).integers(-128, 128, (1, 96, 96, 1)).astype(np.int8)
    result = run_qemu(tmp_path / "m7", target, x.tobytes())
    np.testing.assert_array_equal(result.output_int8().ravel(),
                                  run_int8(graph, x)[graph.outputs[0]].ravel())
    assert len(result.layer_instructions) == len(compiled.report["layers"])


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="needs arm-none-eabi-gcc")
def test_streamed_folders_build_with_werror_for_every_arm_kernel_set(tmp_path):
    """A stage's band calls through the DSP, Helium and CMSIS-NN lowerings (the stand-in
    headers for CMSIS-NN) compile warning-free with each target's flags."""
    from test_warnings_clean import build_commands, run_command
    from mbgen import targets
    graph, stage = _random_chain(4)
    commands = []
    for target_name, kernels in (("cortex-m4", "mbgen"), ("cortex-m55", "mbgen"),
                                 ("cortex-m7", "cmsis-nn")):
        target = targets.get(target_name)
        lowered = fuse(graph, stage, 1, 0, 1, "stage")
        folder = tmp_path / f"{target_name}-{kernels}"
        report = codegen.generate(lowered, folder, target=target_name, kernels=kernels)
        assert report["layers"][1]["op"] == "StreamedStage"
        commands += build_commands(folder, target, "c99")
    failures = [f for f in map(run_command, commands) if f]
    assert not failures, "\n\n".join(failures[:3])


@pytest.mark.slow
def test_cli_flags_switch_streaming(shared_dir, tmp_path, capsys):
    from mbgen.cli import main
    model = str(shared_dir / "models" / "person_detect.tflite")
    assert main(["compile", model, "-o", str(tmp_path / "on")]) == 0
    summary = capsys.readouterr().out
    on = json.loads((tmp_path / "on" / "report.json").read_text())
    assert on["streaming"] and "  stream  " in summary
    assert f"layers  {len(on['layers']) - 1 + len(on['streaming'][0]['layers'])}" in summary
    assert main(["compile", model, "-o", str(tmp_path / "off"), "--no-stream"]) == 0
    off = json.loads((tmp_path / "off" / "report.json").read_text())
    assert off["streaming"] == [] and "  stream  " not in capsys.readouterr().out
    assert on["arena_bytes"] < off["arena_bytes"]
    assert main(["compile", model, "-o", str(tmp_path / "zero"), "--max-recompute", "0"]) == 0
    assert json.loads((tmp_path / "zero" / "report.json").read_text())["streaming"] == []
    with pytest.raises(SystemExit) as exit_:
        main(["compile", model, "--max-recompute", "lots"])
    assert exit_.value.code == 2


def test_fold_loops_makes_the_same_calls():
    """Folding steady-state runs into loops keeps every call and every pointer."""
    from mbgen.codegen.lower_stage import BandCall, MoveCall
    from mbgen.codegen.records import BufferKind, BufferRef
    from mbgen.codegen.stage_loops import StepLoop, fold_loops, unfold

    @dataclass(frozen=True)
    class FakeCall:
        input: BufferRef
        output: BufferRef

    def band(ident: str, src: int, dst: int, kind=BufferKind.ARENA) -> BandCall:
        return BandCall(1, ident, ident, FakeCall(BufferRef(kind, src),
                                                  BufferRef(BufferKind.ARENA, dst)))

    def move(size: int) -> MoveCall:
        return MoveCall(BufferRef(BufferKind.ARENA, 0), BufferRef(BufferKind.ARENA, 64), size)

    rng = np.random.default_rng(0)
    for _ in range(30):
        steps = [band("first", 0, 100, BufferKind.INPUT)]
        period = int(rng.integers(1, 5))
        for i in range(int(rng.integers(0, 9))):
            for j in range(period):
                steps.append(band(f"k{j}", 10 * i + j, 1000 + 7 * i))
            if rng.random() < 0.7:
                steps.append(move(32))
        steps += [band("last", int(rng.integers(0, 50)), 5, BufferKind.INPUT), move(16)]
        folded = fold_loops(tuple(steps))
        assert unfold(folded) == unfold(tuple(steps))
        assert len(folded) <= len(steps)
    # a long steady state becomes one loop
    steps = [band("a", 40 * i, 8 * i) for i in range(20)]
    folded = fold_loops(tuple(steps))
    assert len(folded) == 1 and isinstance(folded[0], StepLoop) and folded[0].count == 20


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.parametrize("target_name", ["cortex-m7", "cortex-m55"])
def test_random_chains_streamed_with_mbgen_kernels_in_qemu(target_name, tmp_path):
    """The DSP (M7) and Helium (M55) kernels on row bands, where they really run."""
    from mbgen import targets
    from mbgen.runner import run_qemu
    if shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("no qemu-system-arm / arm-none-eabi-gcc")
    target = targets.get(target_name)
    for seed in (0, 1, 2):
        graph, stage = _random_chain(seed)
        lowered = fuse(graph, stage, *[(1, 0, 1), (2, 1, 0), (3, 0, 2)][seed], "stage")
        out = tmp_path / f"chain{seed}"
        report = codegen.generate(lowered, out, target=target_name, kernels="mbgen")
        assert report["layers"][1]["kernel"] == "mbgen"
        x = np.random.default_rng(seed).integers(
            -128, 128, graph.tensors[graph.inputs[0]].shape).astype(np.int8)
        result = run_qemu(out, target, x.tobytes())
        np.testing.assert_array_equal(result.output_int8().ravel(),
                                      run_int8(graph, x)[graph.outputs[0]].ravel(),
                                      err_msg=f"{target_name} seed {seed}")


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="needs arm-none-eabi-gcc")
def test_mbv1_128_fits_the_cortex_m4_budget_once_streamed(prepared, tmp_path):
    """Unstreamed with external I/O it needs about 148 KB of the part's 128 KB
    (tests/test_budget.py); streamed, with the input in the arena, under issue 11's 64 KiB."""
    from mbgen import targets
    from mbgen.compiler import CompileOptions, emit
    compiled = emit(prepared("mbv1_0.25_128"),
                    CompileOptions(target="cortex-m4", out_dir=tmp_path / "m4"))
    memory = compiled.report["memory"]
    assert compiled.report["streaming"]
    assert memory["sram_bytes"] <= targets.get("cortex-m4").ram_bytes
    assert memory["sram_bytes"] <= 65_536
    # the arena holds the 49,152-byte input; the stage's output overlays its consumed rows
    assert memory["arena_bytes"] < 49_152 + 8_192


def test_band_contexts_print_shared_code_once(prepared):
    """A stage lowers each band shape with a copy of the model's context: a helper printed
    by one band (or layer) is printed by no other, or the folder would not compile
    (person_detect on the M4 kept its 8-deep 1x1 per-layer in two band shapes)."""
    from dataclasses import replace
    from mbgen.codegen.lowering import LoweringContext
    graph = prepared("mbv1_0.25_128").graph
    ctx = LoweringContext(graph, "model")
    band = replace(ctx, graph=graph, scratch_requests={})
    assert band.prints_first("shared int8 GEMM k8")
    assert not ctx.prints_first("shared int8 GEMM k8")
    assert not replace(ctx).prints_first("shared int8 GEMM k8")
    assert LoweringContext(graph, "model").prints_first("shared int8 GEMM k8")   # a new one
