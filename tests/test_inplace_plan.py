"""In-place layers: outputs written over consumed input, from the walks kernels declare.

The real proof is the C: random chains and residual graphs, planned with in-place pairs,
give the numpy reference's output byte for byte although the kernels really overwrite their
inputs (host C for the portable kernels; QEMU for the mbgen ones). Beside it, pure checks:
no two live buffers share a byte except a declared pair at its delta, and every declared
walk, simulated on one byte array at the planned delta, never writes an input byte that it
or a later step still reads.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers_c import build_folder, run
from mbgen import codegen, ir, targets
from mbgen.arena import Buffer, Overlay, assert_valid_plan, plan
from mbgen.reference import run_int8
from test_codegen import GraphBuilder

A = ir.Activation


def random_graph(seed: int) -> ir.Graph:
    """A small MobileNet-like graph: a stem conv, then random blocks (inverted residuals
    with and without the skip, plain depthwise + pointwise pairs, strided convs)."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder(seed, f"inplace{seed}")
    x = b.input((1, int(rng.integers(7, 12)), int(rng.integers(6, 11)), int(rng.integers(1, 4))))
    x = b.conv(x, int(rng.integers(4, 9)), stride=(int(rng.integers(1, 3)),) * 2)
    for _ in range(int(rng.integers(3, 6))):
        c = b.shape(x)[3]
        kind = rng.integers(0, 4)
        if kind == 0:    # inverted residual with its skip (an Add in place)
            y = b.conv(x, c * int(rng.integers(2, 4)), k=(1, 1))
            y = b.depthwise(y)
            y = b.conv(y, c, k=(1, 1), act=A.NONE)
            x = b.add(y, x) if rng.integers(0, 2) else b.add(x, y)
        elif kind == 1:  # depthwise (stride 1 or 2) + pointwise
            x = b.depthwise(x, stride=(int(rng.integers(1, 3)),) * 2)
            x = b.conv(x, int(rng.integers(3, 13)), k=(1, 1))
        elif kind == 2:  # a 3x3 conv, maybe strided
            x = b.conv(x, int(rng.integers(3, 10)), stride=(int(rng.integers(1, 3)),) * 2)
        else:            # an expanding pointwise, then a depthwise with multiplier
            x = b.conv(x, c + int(rng.integers(1, 6)), k=(1, 1))
            x = b.depthwise(x, multiplier=int(rng.integers(1, 3)))
    return b.graph(x)


SEEDS = range(6)


def _overlap(o: Overlay, sizes: dict[str, int]) -> bool:
    """The output really shares bytes with its input."""
    return o.delta < sizes[o.input] and o.delta + sizes[o.output] > 0


def test_random_graphs_in_place_give_the_reference_output(tmp_path: Path):
    """Portable kernels on the host, with the input and output in the arena or outside."""
    shared = 0
    for seed in SEEDS:
        graph = random_graph(seed)
        io = "arena" if seed % 2 else "external"
        program = codegen.build_program(graph, io=io)
        sizes = {b.name: b.size for b in program.plan.buffers}
        shared += sum(_overlap(o, sizes) for o in program.plan.overlays)
        out = tmp_path / f"s{seed}"
        report = codegen.generate(graph, out, io=io)
        over = {b["tensor"]: b["over"] for b in report["buffers"] if b["over"]}
        assert len(over) == len(program.plan.overlays) and report["io"] == io
        if seed == 1:   # report.html draws them in their own colour, named in the tooltip
            from mbgen import html_report
            assert html_report.render(report).count("written in place over") == len(over) + 1
        exe = build_folder(out)
        for k in range(2):
            x = np.random.default_rng(100 * seed + k).integers(
                -128, 128, size=graph.tensors[graph.inputs[0]].shape).astype(np.int8)
            expected = run_int8(graph, x)[graph.outputs[0]].tobytes()
            assert run(exe, x.tobytes()) == expected, f"seed {seed}, input {k}"
    assert shared >= 10, "the cases must really write outputs over their inputs"


def test_cmsis_nn_add_in_place_gives_the_reference_output(tmp_path: Path):
    """arm_elementwise_add_s8 over its input (the test stand-in on the host; the real
    library's loops read each block before writing it, see CmsisNNKernels.walks): a
    residual whose Add is the busiest layer, so writing in place is what shrinks the arena."""
    from mbgen.runner import build_host
    standin = Path(__file__).resolve().parent / "cmsis_nn_standin"
    b = GraphBuilder(5, "residual")
    x = b.input((1, 8, 8, 16))
    graph = b.graph(b.add(x, b.conv(x, 16, k=(1, 1))))
    program = codegen.build_program(graph, kernels="cmsis-nn", io="arena")
    assert [i.kernel_set for i in program.instances] == ["cmsis-nn", "cmsis-nn"]
    assert list(program.plan.in_place or {}) == [graph.nodes[1].name]
    assert program.plan.arena_size < 3 * 8 * 8 * 16   # two tensors (+ scratch), not three
    out = tmp_path / "out"
    codegen.generate(graph, out, kernels="cmsis-nn", io="arena")
    exe = build_host(out, tmp_path / "build", cmsis_nn=standin)
    for seed in range(2):
        x = np.random.default_rng(seed).integers(-128, 128, size=(1, 8, 8, 16)).astype(np.int8)
        assert run(exe, x.tobytes()) == run_int8(graph, x)[graph.outputs[0]].tobytes()


def _buffers_share_bytes(a: Buffer, b: Buffer, offsets: dict[str, int]) -> bool:
    return offsets[a.name] < offsets[b.name] + b.size and \
        offsets[b.name] < offsets[a.name] + a.size


# (kernels, target, weight layout): "size" lowers the mbgen GEMM layers to the compact kernel
KERNEL_CASES = [("portable", "host", "auto"), ("mbgen", "cortex-m7", "auto"),
                ("mbgen", "cortex-m7", "size")]


@pytest.mark.parametrize("kernels,target,layout", KERNEL_CASES)
def test_live_buffers_share_bytes_only_as_declared_pairs(kernels: str, target: str,
                                                         layout: str):
    for seed in SEEDS:
        graph = random_graph(seed)
        gplan = codegen.build_program(graph, kernels=kernels, target=target, io="arena",
                                      weight_layout=layout).plan
        offsets = {b.name: gplan.offsets.get(b.name, gplan.scratch_offsets.get(
            b.name.removeprefix("scratch:"))) for b in gplan.buffers}
        declared = {(o.input, o.output): o.delta for o in gplan.overlays}
        buffers = list(gplan.buffers)
        for i, a in enumerate(buffers):
            for b in buffers[i + 1:]:
                if a.size and b.size and a.overlaps_in_time(b) and \
                        _buffers_share_bytes(a, b, offsets):
                    pair = (a.name, b.name) if (a.name, b.name) in declared else (b.name, a.name)
                    assert pair in declared, f"seed {seed}: {a.name} and {b.name} collide"
                    assert offsets[pair[1]] - offsets[pair[0]] == declared[pair]
        assert all(offsets[b.name] + b.size <= gplan.arena_size for b in buffers)


def test_random_overlay_chains_are_placed_at_their_deltas():
    """The placement core alone: random lifetimes, random chains of overlays."""
    rng = np.random.default_rng(7)
    for _ in range(30):
        n = int(rng.integers(2, 12))
        overlaid = [bool(rng.integers(0, 2)) for _ in range(n - 1)]
        # a layer's input dies where its output is made, as in a graph; others live on
        buffers = [Buffer(f"b{i}", int(rng.integers(1, 200)), i,
                          i + (1 if i < n - 1 and overlaid[i] else int(rng.integers(1, 4))))
                   for i in range(n)]
        overlays = [Overlay(f"b{i}", f"b{i + 1}", 16 * int(rng.integers(-8, 5)))
                    for i in range(n - 1) if overlaid[i]]
        result = plan(buffers, 16, overlays)
        assert_valid_plan(buffers, result, 16, overlays)   # raises on a collision


def simulate(order, delta: int) -> None:
    """Run a WriteOrder on one byte array with the output ``delta`` bytes from the input;
    fail if a step writes an input byte that it or a later step still reads."""
    base = max(0, -delta)
    span = order.span(delta)
    owner = np.full(span, -1, dtype=np.int64)    # which input byte each address holds
    owner[base:base + order.input_bytes] = np.arange(order.input_bytes)
    written = 0
    for end, start in zip(order.write_end, order.read_start):
        owner[base + delta + written:base + delta + end] = -2    # this step's writes
        written = end
        intact = owner[base + start:base + order.input_bytes]
        assert (intact == np.arange(start, order.input_bytes)).all(), \
            f"input byte {start + int(np.argmax(intact != np.arange(start, order.input_bytes)))}" \
            " overwritten while still read"


@pytest.mark.parametrize("kernels,target,layout", KERNEL_CASES)
def test_every_declared_walk_is_safe_at_its_planned_delta(kernels: str, target: str,
                                                          layout: str):
    walks = refuted = 0
    for seed in SEEDS:
        program = codegen.build_program(random_graph(seed), kernels=kernels, target=target,
                                        weight_layout=layout)
        for instance in program.instances:
            for _, order in instance.walks:
                delta = order.best_delta() // 16 * 16
                simulate(order, delta)
                walks += 1
                safe = order.highest_safe_delta()
                if any(w > 0 and r - w == safe and r < order.input_bytes
                       for w, r in zip(order.write_end, order.read_start)):
                    # one past the safe delta must fail: the simulation can catch a bad walk
                    with pytest.raises(AssertionError):
                        simulate(order, safe + 1)
                    refuted += 1
    assert walks >= 20 and refuted >= 10


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None
                    or shutil.which("qemu-system-arm") is None,
                    reason="needs arm-none-eabi-gcc and qemu-system-arm")
def test_mbgen_kernels_in_place_in_qemu(tmp_path: Path):
    """The mbgen gemm and depthwise kernels write over their inputs on Cortex-M7, and the
    Helium pointwise and depthwise ones on Cortex-M55."""
    from mbgen.runner import run_qemu
    in_place = 0
    for seed, target in ((1, "cortex-m7"), (2, "cortex-m7"), (3, "cortex-m7"),
                         (2, "cortex-m55"), (4, "cortex-m55")):
        target = targets.get(target)
        graph = random_graph(seed)
        program = codegen.build_program(graph, kernels="mbgen", target=target.name)
        in_place += sum(1 for i in program.instances if i.kernel_set == "mbgen"
                        and i.node.name in (program.plan.in_place or {}))
        out = tmp_path / f"s{seed}-{target.name}"
        codegen.generate(graph, out, target=target.name, kernels="mbgen")
        x = np.random.default_rng(seed).integers(
            -128, 128, size=graph.tensors[graph.inputs[0]].shape).astype(np.int8)
        result = run_qemu(out, target, x.tobytes(), timeout=120)
        assert result.output == run_int8(graph, x)[graph.outputs[0]].tobytes(), f"seed {seed}"
    assert in_place >= 10


def test_compile_counts_the_input_and_output_once(tmp_path: Path):
    """--io arena: model_input()/model_output() in the arena, no caller's buffers counted;
    --io external: the caller's buffers, counted beside the arena."""
    from mbgen.compiler import CompileOptions, ModelSource, PreparedModel, emit
    graph = random_graph(4)
    prepared = PreparedModel(ModelSource("inplace4", "zoo", None), None, graph)
    io_bytes = graph.tensors[graph.inputs[0]].nbytes + graph.tensors[graph.outputs[0]].nbytes
    memory = {}
    for io in ("arena", "external"):
        compiled = emit(prepared, CompileOptions(target="host", out_dir=tmp_path / io, io=io))
        memory[io] = compiled.report["memory"]
        header = (tmp_path / io / "model.h").read_text()
        assert ("int model_invoke(void);" in header) == (io == "arena")
        assert ("int8_t *model_input(void);" in header) == (io == "arena")
    assert memory["arena"]["io_bytes"] == 0 and memory["external"]["io_bytes"] == io_bytes
    assert memory["arena"]["sram_bytes"] == memory["arena"]["arena_bytes"]
    assert memory["arena"]["sram_bytes"] <= memory["external"]["sram_bytes"]
