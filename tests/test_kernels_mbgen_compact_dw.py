"""--kernels mbgen --optimize size: the compact 3x3 depthwise body, bit-exact with the reference.

One chain of depthwise layers covers the cases (stride 1 and 2, odd widths whose last
columns take the asm tail group, SAME / VALID / one-sided / fully padded rows, 10 channels: two groups
of 4 and two alone, a clamped output) in one build; it runs in QEMU with and without the
entry table in the scratch and at -O0 (the C twin on the target), and on the host. Every
output is compared with ``mbgen.reference.run_int8`` (numpy, sharing nothing with the C).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from helpers_c import build_folder, run
from mbgen import codegen, ir, targets
from mbgen.codegen import kernels_mbgen_compact_dw as cdw
from mbgen.codegen.kernels_mbgen_records import DepthwiseCall
from mbgen.codegen.lowering import LoweringContext
from mbgen.reference import run_int8

HAVE_ARM = bool(shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm"))
needs_arm = pytest.mark.skipif(not HAVE_ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")
A = ir.Activation


def _qp(scale, zero_point, axis=None) -> ir.QuantParams:
    return ir.QuantParams(np.atleast_1d(np.asarray(scale, np.float32)),
                          np.atleast_1d(np.asarray(zero_point, np.int32)), axis)


# (stride, padding top/bottom/left/right, output): "relu6" spans all of int8 (no clamp, the
# asm path); "narrow" clamps inside int8 (asm, then the clamp pass); "none" keeps negative outputs with
# a random zero point (FAST_SIGNED: the specialised fallback).
CHAIN = [(1, (1, 1, 1, 1), "relu6"),      # 17x19: 4 asm groups + a tail of 3
         (2, (1, 1, 1, 1), "relu6"),      # 9x10
         (1, (0, 0, 0, 0), "narrow"),     # 7x8, VALID, clamped
         (2, (0, 1, 0, 1), "relu6"),      # 3x4, one-sided SAME
         (1, (2, 0, 1, 1), "relu6")]      # 3x4, the top rows wholly padding


def chain_graph(hwc=(17, 19, 10), layers=CHAIN, seed=0, gain=1.0) -> ir.Graph:
    """Depthwise 3x3 layers one after the other, random weights, output scales aimed at a
    wide spread (test data; the expected values come from the reference). ``gain`` scales
    the "relu6" layers' weights: at 1 most of their outputs saturate."""
    rng = np.random.default_rng(seed)
    h, w, c = hwc
    scale, zp = 0.03, int(rng.integers(-128, 128))
    tensors = {"x0": ir.Tensor("x0", (1, h, w, c), "int8", None, _qp(scale, zp))}
    nodes = []
    for i, (stride, (pt, pb, pl, pr), out) in enumerate(layers):
        h, w = (h + pt + pb - 3) // stride + 1, (w + pl + pr - 3) // stride + 1
        w_scale = rng.uniform(0.5, 2.0, size=c).astype(np.float32) * np.float32(0.01)
        spread = float(3 * 74 * 73 * scale * w_scale.mean())
        if out == "relu6":
            out_scale, out_zp, act = 6 / 255, -128, A.RELU6
            w_scale = (w_scale * np.float32(2.5 * gain / spread)).astype(np.float32)
        elif out == "narrow":
            out_scale, out_zp, act = spread / 60, -128, A.RELU6
        else:
            out_scale, out_zp, act = spread / 45, int(rng.integers(-30, 31)), A.NONE
        b_scale = (np.float32(scale) * w_scale).astype(np.float32)
        tensors[f"w{i}"] = ir.Tensor(f"w{i}", (1, 3, 3, c), "int8",
                                     rng.integers(-127, 128, size=(1, 3, 3, c)).astype(np.int8),
                                     _qp(w_scale, np.zeros(c), 3))
        tensors[f"b{i}"] = ir.Tensor(f"b{i}", (c,), "int32",
                                     (rng.integers(-40, 41, size=c) * 74 * 73).astype(np.int32),
                                     _qp(b_scale, np.zeros(c), 0))
        tensors[f"x{i + 1}"] = ir.Tensor(f"x{i + 1}", (1, h, w, c), "int8", None,
                                         _qp(out_scale, out_zp))
        op = ir.DepthwiseConv2D((stride, stride), ir.Padding(pt, pb, pl, pr), 1, (1, 1), act)
        nodes.append(ir.Node(f"dw{i}", op, [f"x{i}", f"w{i}", f"b{i}"], [f"x{i + 1}"]))
        scale, zp = out_scale, out_zp
    graph = ir.Graph("chain", tensors, nodes, ["x0"], [f"x{len(layers)}"])
    ir.verify(graph)
    return graph


def _inputs(graph: ir.Graph) -> list[np.ndarray]:
    """A random input and one of extremes only (accumulators at the edges of their range)."""
    rng = np.random.default_rng(1)
    shape = graph.tensors[graph.inputs[0]].shape
    return [rng.integers(-128, 128, size=shape).astype(np.int8),
            rng.choice(np.array([-128, 127], np.int8), size=shape)]


def _expected(graph: ir.Graph, x: np.ndarray) -> bytes:
    return run_int8(graph, x)[graph.outputs[0]].tobytes()


def _calls(graph: ir.Graph, target: str = "cortex-m7") -> list:
    program = codegen.build_program(graph, kernels="mbgen", target=target,
                                    weight_layout="size")
    return [layer.call for layer in program.layers]


@pytest.fixture(params=["table", "no-table"])
def table(request, monkeypatch) -> bool:
    """The entry table in the scratch (as if the arena had room beside every layer), or
    the entries unpacked per row (no room)."""
    room = 1 << 20 if request.param == "table" else 0
    monkeypatch.setattr(LoweringContext, "spare", lambda self, node_name: room)
    return request.param == "table"


def test_layers_take_the_compact_path_with_21_bytes_per_channel(table):
    graph = chain_graph()
    calls = _calls(graph)
    assert all(isinstance(c, cdw.CompactDepthwiseCall) for c in calls)
    assert [c.clamped for c in calls] == [False, False, True, False, False]
    assert all((c.table_offset >= 0) == table for c in calls)
    for c in calls:
        assert (c.records.nbytes + c.shifts.nbytes) == 21 * c.channels
        assert c.scratch is not None


@pytest.mark.parametrize("layer,why", [
    ((1, (1, 1, 1, 1), "none"), "FAST_SIGNED requantisation"),
    ((2, (1, 1, 1, 1), "none"), "FAST_SIGNED requantisation"),
])
def test_other_requantisation_falls_back_to_the_specialised_kernel(layer, why):
    call = _calls(chain_graph(layers=[layer]))[0]
    assert isinstance(call, DepthwiseCall), why


def test_other_shapes_fall_back_and_other_layouts_keep_the_specialised_kernel():
    graph = chain_graph(layers=CHAIN[:1])
    node = graph.nodes[0]
    for change in (dict(dilation=(2, 2)), dict(stride=(2, 1)), dict(depth_multiplier=2)):
        from dataclasses import replace
        op = replace(node.op, **change)
        assert not cdw.eligible(graph, ir.Node(node.name, op, node.inputs, node.outputs))
    assert cdw.eligible(graph, node)
    program = codegen.build_program(graph, kernels="mbgen", target="cortex-m7",
                                    weight_layout="int8")
    assert isinstance(program.layers[0].call, DepthwiseCall)


def _tail_read_end(stride: int, groups: int) -> int:
    """One past the last byte the asm loop's extra (tail) iteration reads, from its channel's
    ring row: the iteration starts stride * groups blocks of 24 bytes in; every kernel row's
    slot lies 0, 8 or 16 bytes into a block and is read as depthwise_compact.c.j2's asm_row
    does (stride 1: LDRD in the first block, LDR in the next; stride 2: LDRD, LDRD, LDR over
    three)."""
    loads = ((0, 8), (24, 4)) if stride == 1 else ((0, 8), (24, 8), (48, 4))
    first = stride * groups * 24
    return max(first + block + slot + size for block, size in loads for slot in (0, 8, 16))


def test_ring_covers_every_column_the_loops_read():
    """The asm groups read up to column 4 * stride * groups + 1, the C columns up to
    stride * (out_w - 1) + 2; every input column sits at pad_left + x. The last channel's
    tail iteration reads past its ring row: the ring and its slack hold every byte of it
    (a channel before the last reads the next one's row there)."""
    tails = 0
    for in_w, stride, pad_left in ((19, 1, 1), (8, 2, 0), (10, 2, 1), (3, 1, 2), (4, 2, 0),
                                   (6, 1, 1), (6, 2, 1), (3, 2, 1), (12, 1, 1), (22, 1, 0)):
        out_w = (in_w + 2 * pad_left - 3) // stride + 1
        blocks = cdw.ring_blocks(in_w, out_w, stride, pad_left)
        groups = out_w // 4
        last = max(stride * (out_w - 1) + 2, 4 * stride * groups + 1 if groups else 0,
                   pad_left + in_w - 1)
        assert 4 * blocks > last and 4 * (blocks - 1) <= last
        slack = cdw.tail_slack_bytes(out_w, stride, blocks)
        if out_w % 4:
            tails += 1
            assert blocks * 24 + slack >= _tail_read_end(stride, groups), (in_w, stride)
        else:
            assert slack == 0
    assert tails >= 6


def test_declared_walk_is_safe_in_place():
    """The planner overlaps a compact layer's output with its input from the declared walk;
    replaying it on one byte array shows no input byte is overwritten before it is read."""
    from test_inplace_plan import random_graph, simulate
    walks = 0
    for graph in [chain_graph()] + [random_graph(seed) for seed in range(4)]:
        program = codegen.build_program(graph, kernels="mbgen", target="cortex-m7",
                                        weight_layout="size")
        for instance in program.instances:
            if isinstance(instance.call, cdw.CompactDepthwiseCall):
                for _, order in instance.walks:
                    simulate(order, order.best_delta() // 16 * 16)
                    simulate(order, order.highest_safe_delta())
                    walks += 1
    assert walks >= 6


def test_c_twin_is_bit_exact_on_the_host(tmp_path, table):
    graph = chain_graph()
    out = tmp_path / "chain"
    codegen.generate(graph, out, target="cortex-m7", kernels="mbgen", weight_layout="size")
    exe = build_folder(out)
    for x in _inputs(graph):
        assert run(exe, x.tobytes()) == _expected(graph, x)


# (input height, width, channels; layers; gain): the chain on 10 channels (two groups of 4
# and two alone); then single layers on 12 channels, whose rows the fill walks block by
# block (5 interior blocks, channels a multiple of 4) and whose last block is half filled
# (stride 1 and 2 SAME, where that block's columns are padding, and VALID 22 wide, where
# they are input pixels), at a gain that leaves most outputs unsaturated (a wrong ring
# column shows); last two clamped layers (22 and 11 wide: asm tails of 2 and 3) whose
# clamp most of the output shows.
CHAIN_CASES = [((17, 19, 10), CHAIN, 1.0), ((11, 23, 12), CHAIN[:1], 0.3),
               ((11, 23, 12), CHAIN[1:2], 0.3), ((11, 22, 12), [(1, (0, 0, 0, 0), "relu6")], 0.3),
               ((9, 22, 12), [(1, (1, 1, 1, 1), "narrow"), (2, (1, 1, 1, 1), "narrow")], 1.0)]


@needs_arm
@pytest.mark.qemu
@pytest.mark.parametrize("flags", ["-O2", "-O0"])
@pytest.mark.parametrize("case", CHAIN_CASES,
                         ids=["chain", "walk-s1", "walk-s2", "half-valid", "clamped-tails"])
def test_chain_is_bit_exact_in_qemu(tmp_path, table, flags, case):
    """-O2 runs the asm loops (every rotation and stride, both ring fills); -O0 their C twin
    on the core."""
    from mbgen.runner import build_firmware, run_elf
    if flags == "-O0" and not table:
        pytest.skip("the C twin reads the same entries either way: one -O0 build is enough")
    hwc, layers, gain = case
    graph = chain_graph(hwc, layers, gain=gain)
    target = targets.get("cortex-m7")
    out = tmp_path / "chain"
    codegen.generate(graph, out, target=target.name, kernels="mbgen", weight_layout="size")
    elf = build_firmware(out, target, tmp_path / "build", extra_cflags=[flags]).elf
    for i, x in enumerate(_inputs(graph)):
        got = np.frombuffer(run_elf(elf, target, x.tobytes(), timeout=60).output, np.int8)
        want = np.frombuffer(_expected(graph, x), np.int8)
        bad = np.flatnonzero(got != want)
        assert bad.size == 0, f"input {i}: {bad.size} outputs differ, first at {bad[:5]}"


@needs_arm
@pytest.mark.qemu
@pytest.mark.slow
def test_small_model_is_bit_exact_in_qemu(prepared, tmp_path):
    """mbv1_0.25_96 under --optimize size: every depthwise layer (streamed bands included)
    runs the compact body, and the whole model equals the reference."""
    from mbgen.compiler import CompileOptions, emit
    from mbgen.images import quantize_input
    from mbgen.quantize.calibration import synthetic_inputs
    from mbgen.runner import run_qemu
    model = prepared("mbv1_0.25_96")
    compiled = emit(model, CompileOptions(target="cortex-m7", out_dir=tmp_path / "out",
                                          kernels="mbgen", optimize="size"))
    model_c = (compiled.out_dir / "model.c").read_text()
    assert model_c.count("mbgen compact depthwise 3x3") >= 13
    graph = model.graph
    qp = graph.tensors[graph.inputs[0]].quant
    x = quantize_input(synthetic_inputs(graph.tensors[graph.inputs[0]].shape, count=1,
                                        seed=5)[0], qp.scalar_scale, qp.scalar_zero_point)
    result = run_qemu(compiled.out_dir, targets.get("cortex-m7"), x.tobytes(), timeout=300)
    assert result.output == _expected(graph, x)
