"""--kernels mbgen --optimize size: the compact GEMM (one shared runtime-parameterised kernel
for 1x1, im2col and fully connected layers), bit-exact with the numpy reference.

Each case is generated with weight_layout "size", built for Cortex-M7 (the inline asm) and
for the host (the plain-C twins), and compared byte for byte with ``mbgen.reference.run_int8``
(numpy from the TFLite spec, sharing nothing with the C). Layer cases come from
test_kernels_mbgen's table; a few more cover this kernel's own paths.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from helpers_c import build_folder, run
from mbgen import codegen, ir, targets
from mbgen.codegen import kernels_mbgen_compact as compact
from mbgen.codegen.kernels_mbgen_walks import compact_gemm_write_order
from mbgen.codegen.lowering import LoweringContext
from mbgen.reference import run_int8
from mbgen.quantize.requant_proofs import RequantScheme
from test_kernels_mbgen import CASES, Layer, build_graph, test_inputs

HAVE_ARM = bool(shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm"))
needs_arm = pytest.mark.skipif(not HAVE_ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")

# name -> (layer, flags the lowered call must have, flags it must not have)
COMPACT_CASES = {
    "pw_asm_block": (CASES["pw_asm_block"], {"ASM_STORE", "CONTIGUOUS"}, set()),
    "pw_odd_everything": (CASES["pw_odd_everything"], {"ASM_STORE"}, set()),   # in_c 13
    "pw_relu6_clamped": (CASES["pw_relu6_clamped"], {"ASM_STORE"}, set()),   # + clamp pass
    "pw_no_activation": (CASES["pw_no_activation"], {"SIGNED", "ASM_STORE"}, set()),
    "pw_multiplier_above_one": (CASES["pw_multiplier_above_one"], {"EXACT"}, set()),
    "conv_stem_3ch_s2": (CASES["conv_stem_3ch_s2"], set(), {"CONTIGUOUS"}),       # runs of 9
    "conv_same_one_side": (CASES["conv_same_one_side"], set(), set()),            # runs of 15
    "conv_5x3_dilated": (CASES["conv_5x3_dilated"], set(), set()),                # taps of 4
    "conv_1x1_s2_in3": (Layer("conv", (7, 9, 3), 5, stride=(2, 2), seed=31), set(),
                        {"CONTIGUOUS"}),                                          # runs of 3
    "conv_rgb_rows_dilated": (Layer("conv", (12, 10, 3), 6, (3, 3), (1, 1), (2, 2, 1, 1),
                                    dilation=(2, 1), out="relu", seed=35), set(),
                              {"CONTIGUOUS"}),                            # 3 rows of 9, 2 apart
    "fc_odd": (CASES["fc_odd"], {"ONE_PIXEL", "SIGNED"}, set()),
    "fc_relu6": (CASES["fc_relu6"], {"ONE_PIXEL", "ASM_STORE", "PER_CHANNEL"}, set()),
}
# Arena room beside the layer (as a model's plan leaves it): chunks of several blocks, and
# every pair's record widened once (RAM_RECORDS); odd channels, a partial pixel block.
SPARE_CASES = {
    "pw_chunked": (Layer("conv", (5, 7, 20), 9, seed=32), set(), {"RAM_RECORDS"}),
    "pw_ram_records": (Layer("conv", (11, 10, 24), 9, seed=33), {"RAM_RECORDS"}, set()),
    "pw_ram_whole_runs": (Layer("conv", (11, 10, 24), 8, seed=37),
                          {"RAM_RECORDS", "ASM_STORE", "CONTIGUOUS"}, set()),   # 110 pixels
    "conv_ram_records": (Layer("conv", (20, 19, 3), 6, (3, 3), (2, 2), (1, 1, 1, 1),
                               seed=34), {"RAM_RECORDS"}, set()),
    "conv_stem_ram_tail": (Layer("conv", (21, 19, 3), 8, (3, 3), (2, 2), (1, 1, 1, 1),
                                 seed=36), {"RAM_RECORDS", "ASM_STORE"}, set()),   # 110 pixels
    "pw_ram_clamped": (Layer("conv", (11, 10, 24), 8, out="relu6_narrow", seed=38),
                       {"RAM_RECORDS", "ASM_STORE", "CONTIGUOUS"}, set()),   # asm + clamp pass
    "pw_ram_signed": (Layer("conv", (11, 10, 24), 8, out="none", seed=39),
                      {"RAM_RECORDS", "ASM_STORE", "SIGNED"}, set()),   # the signed asm store
    "pw_chunked_signed": (Layer("conv", (5, 7, 20), 10, out="none", seed=40),
                          {"ASM_STORE", "SIGNED"}, {"RAM_RECORDS"}),
    "pw_chunked_single": (Layer("conv", (3, 11, 20), 9, seed=42), set(),
                          {"RAM_RECORDS"}),   # 33 pixels: the last one alone (1x4 dots)
    "conv_ram_signed": (Layer("conv", (20, 19, 3), 6, (3, 3), (2, 2), (1, 1, 1, 1), out="none",
                              seed=41), {"RAM_RECORDS", "ASM_STORE", "SIGNED"}, set()),
    # the asm store's SSAT tables end at R = 15 (ASM_STORE_MAX_SHIFT): its last entries, and
    # a layer shifting further stored in C
    "pw_shift_15": (Layer("conv", (4, 5, 16), 8, out="relu", gain=64.0, seed=43),
                    {"ASM_STORE"}, set()),
    "pw_shift_past_tables": (Layer("conv", (4, 5, 16), 8, out="relu", gain=256.0, seed=43),
                             set(), {"ASM_STORE"}),
}

# Arena room for only some records beside a block of columns: the records widened in passes
# of groups, the columns again each pass (spare bytes, passes). A 1x1 layer on the asm runs
# with a last group of 2 pairs and a 2-pixel tail (1x4 dots in the last pass only); odd
# channels (a last group of 3, C runs); the stem's asm runs.
GROUP_CASES = {
    "pw_groups": (Layer("conv", (11, 10, 24), 20, seed=44), 704, 3),
    "conv_groups_odd": (Layer("conv", (20, 19, 3), 7, (3, 3), (2, 2), (1, 1, 1, 1), seed=45),
                        560, 2),
    "conv_stem_groups": (Layer("conv", (21, 19, 3), 8, (3, 3), (2, 2), (1, 1, 1, 1), seed=46),
                         684, 2),
}


@pytest.fixture
def roomy(monkeypatch):
    """Every layer is offered 64 KB of arena beside it."""
    monkeypatch.setattr(LoweringContext, "spare", lambda self, name: 64 * 1024)


def _generate(graph: ir.Graph, out: Path, target: str) -> dict:
    return codegen.generate(graph, out, target=target, kernels="mbgen", weight_layout="size")


def _call(graph: ir.Graph):
    return codegen.build_program(graph, kernels="mbgen", target="cortex-m7",
                                 weight_layout="size").layers[0].call


def _check_takes_path(layer: Layer, present: set[str], absent: set[str]):
    graph = build_graph(layer)
    call = _call(graph)
    assert isinstance(call, compact.CompactGemmCall)
    assert present <= set(call.flag_names) and not absent & set(call.flag_names), call.flag_names
    return graph


def _check_bytes(graph: ir.Graph, out: Path, seed: int, target: str) -> None:
    report = _generate(graph, out, target)
    assert report["layers"][0]["kernel"] == "mbgen"
    if target == "host":
        exe = build_folder(out)
    for i, x in enumerate(test_inputs(graph, seed)):
        want = run_int8(graph, x)[graph.outputs[0]].tobytes()
        if target == "host":
            got = run(exe, x.tobytes())
        else:
            from mbgen.runner import run_qemu
            got = run_qemu(out, targets.get(target), x.tobytes(), timeout=60).output
        bad = np.flatnonzero(np.frombuffer(got, np.int8) != np.frombuffer(want, np.int8))
        assert bad.size == 0, f"input {i}: {bad.size} outputs differ, first at {bad[:5]}"


@needs_arm
@pytest.mark.qemu
@pytest.mark.parametrize("name", list(COMPACT_CASES))
def test_layer_is_bit_exact_in_qemu(name, tmp_path):
    layer, present, absent = COMPACT_CASES[name]
    graph = _check_takes_path(layer, present, absent)
    _check_bytes(graph, tmp_path / name, layer.seed, "cortex-m7")


@needs_arm
@pytest.mark.qemu
@pytest.mark.parametrize("name", list(SPARE_CASES))
def test_chunks_and_ram_records_are_bit_exact_in_qemu(name, tmp_path, roomy):
    layer, present, absent = SPARE_CASES[name]
    graph = _check_takes_path(layer, present, absent)
    _check_bytes(graph, tmp_path / name, layer.seed, "cortex-m7")


def _grouped(name: str, monkeypatch) -> ir.Graph:
    layer, spare, passes = GROUP_CASES[name]
    monkeypatch.setattr(LoweringContext, "spare", lambda self, node: spare)
    graph = build_graph(layer)
    call = _call(graph)
    assert "RAM_RECORDS" in call.flag_names and call.passes == passes, (call.flag_names,
                                                                        call.passes)
    assert call.scratch_bytes <= spare
    return graph


@needs_arm
@pytest.mark.qemu
@pytest.mark.parametrize("name", list(GROUP_CASES))
def test_record_groups_are_bit_exact_in_qemu(name, tmp_path, monkeypatch):
    _check_bytes(_grouped(name, monkeypatch), tmp_path / name, GROUP_CASES[name][0].seed,
                 "cortex-m7")


def _check_on_host(graph, folder, seed: int) -> None:
    """The cortex-m7 folder built on the host (the plain-C twins) gives the reference's bytes."""
    _generate(graph, folder, "cortex-m7")
    exe = build_folder(folder)
    for x in test_inputs(graph, seed):
        assert run(exe, x.tobytes()) == run_int8(graph, x)[graph.outputs[0]].tobytes()


@pytest.mark.parametrize("name", ["pw_odd_everything", "pw_multiplier_above_one",
                                  "conv_stem_3ch_s2", "conv_5x3_dilated", "conv_1x1_s2_in3",
                                  "fc_odd"])
def test_folder_for_cortex_m_builds_on_the_host(name, tmp_path):
    """The same folder off-target: the plain-C twins, the same bytes."""
    layer, present, absent = COMPACT_CASES[name]
    graph = _check_takes_path(layer, present, absent)
    _check_on_host(graph, tmp_path / "m7", layer.seed)


@pytest.mark.parametrize("name", list(SPARE_CASES))
def test_chunks_and_ram_records_on_the_host(name, tmp_path, roomy):
    layer, present, absent = SPARE_CASES[name]
    graph = _check_takes_path(layer, present, absent)
    _check_on_host(graph, tmp_path / "m7", layer.seed)


def test_record_group_passes_never_write_over_their_input(monkeypatch):
    """A second pass reads the input from its start after the first wrote every pixel: the
    walk lets the output start no higher than a whole output below the input."""
    call = _call(_grouped("pw_groups", monkeypatch))
    order = compact_gemm_write_order(call)
    assert order.highest_safe_delta() <= -order.output_bytes
    one_pass = compact_gemm_write_order(replace(call, record_group=0))
    assert one_pass.highest_safe_delta() > -order.output_bytes


def test_layers_laid_over_their_input_keep_one_pass(prepared, shared_dir, monkeypatch):
    """person_detect on the 512 KB M4: its 12x12 1x1 layers run in place and have room for
    some records only. Passes would read their input again after writing over it, so the
    plan's overlay would go, the arena grow and the lowering with spare bytes be dropped
    for every layer (12.1 M instructions instead of 8.3 M): those layers keep chunks."""
    from mbgen import streaming
    graph = prepared(str(shared_dir / "models" / "person_detect.tflite")).graph

    def compact_calls():
        program = codegen.build_program(graph, kernels="mbgen", target="cortex-m4",
                                        stream=streaming.options_for("mbgen"))
        in_place = program.plan.in_place or {}
        return [(i.call, i.node.name in in_place) for i in program.instances
                if isinstance(i.call, compact.CompactGemmCall)]

    faster = lambda calls: any(c.ram_records or c.chunk_blocks > 1 for c, _ in calls)
    calls = compact_calls()
    assert faster(calls) and any(in_place for _, in_place in calls)
    assert all(c.passes == 1 for c, in_place in calls if in_place)
    # the same with passes allowed in place: the spare lowering is lost
    plan = compact.widening_plan
    monkeypatch.setattr(compact, "widening_plan",
                        lambda draft, spare, in_place=False: plan(draft, spare))
    assert not faster(compact_calls())


@pytest.mark.parametrize("name", list(GROUP_CASES))
def test_record_groups_on_the_host(name, tmp_path, monkeypatch):
    _check_on_host(_grouped(name, monkeypatch), tmp_path / "m7", GROUP_CASES[name][0].seed)


# ----------------------------------------------------------------------------- layouts


def test_depth_order_widens_whole_words_then_leftovers():
    # 3 runs of 9 (the 3x3 stem on 3 channels): 2 whole words each, then one word of
    # the three last bytes, padded
    order = compact.depth_order(3, 9)
    assert order.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16,
                              18, 19, 20, 21, 22, 23, 24, 25, 8, 17, 26, -1]
    # runs of 6: a leftover word fills after the second run, in the middle of the stream
    assert compact.depth_order(3, 6).tolist() == [0, 1, 2, 3, 6, 7, 8, 9, 4, 5, 10, 11,
                                                  12, 13, 14, 15, 16, 17, -1, -1]
    for runs, run in ((1, 13), (5, 7), (4, 3), (2, 8)):
        order = compact.depth_order(runs, run)
        assert order.size == -(-runs * run // 4) * 4
        assert sorted(order[order >= 0].tolist()) == list(range(runs * run))


def test_stream_is_pairs_of_biases_and_interleaved_groups():
    w = np.arange(3 * 8).reshape(3, 8) - 12
    bias = np.array([1, -2, 70000])
    stream = compact.compact_stream(w, bias, compact.depth_order(1, 8))
    pair = np.concatenate([np.array([1, -2], "<i4").view(np.int8),
                           w[0, :4], w[1, :4], w[0, 4:], w[1, 4:]])
    odd = np.concatenate([np.array([70000], "<i4").view(np.int8), w[2]])
    np.testing.assert_array_equal(stream, np.concatenate([pair, odd]))


@pytest.mark.parametrize("name", ["pw_asm_block", "pw_odd_everything", "conv_stem_3ch_s2",
                                  "fc"])
def test_flash_is_at_most_the_portable_kernels(name):
    """int8 weights (depth padded to 4), int32 bias, int32 multiplier and int8 shift per
    channel (one each for a single scale): no more than the portable layout, except a
    single-scale layer whose depth is not a multiple of 4 (its padding is not paid for)."""
    graph = build_graph(CASES[name])
    ours = codegen.build_program(graph, kernels="mbgen", target="cortex-m7",
                                 weight_layout="size")
    portable = codegen.build_program(graph, kernels="portable", target="cortex-m7")
    size = lambda program: sum(a.nbytes for a in codegen.generator._unique_constants(
        list(program.layers)))
    assert size(ours) <= size(portable)


def test_scheme_chooses_the_store():
    """ASM_STORE for FAST and FAST_SIGNED (a clamp inside int8 is a pass over the stored
    bytes after it); the C store takes EXACT."""
    asm = (RequantScheme.FAST, RequantScheme.FAST_SIGNED)
    clamped = signed = 0
    for name, (layer, _, _) in COMPACT_CASES.items():
        call = _call(build_graph(layer))
        rq = call.requant
        assert ("ASM_STORE" in call.flag_names) == (rq.scheme in asm), name
        clamped += rq.scheme is RequantScheme.FAST and (rq.clamp_min or rq.clamp_max)
        signed += rq.scheme is RequantScheme.FAST_SIGNED and not call.one_pixel
    assert clamped >= 1 and signed >= 1


# ----------------------------------------------------------------------------- a model


@needs_arm
@pytest.mark.qemu
@pytest.mark.slow
def test_model_under_optimize_size_is_bit_exact_in_qemu(prepared, tmp_path):
    """mbv1_0.25_96 with --optimize size (streamed stages, chunks, widened records): every
    GEMM layer on the compact kernel, the output equal to the reference's."""
    from mbgen.compiler import CompileOptions, emit
    from mbgen.images import quantize_input
    from mbgen.quantize.calibration import synthetic_inputs
    from mbgen.runner import run_qemu

    model = prepared("mbv1_0.25_96")
    compiled = emit(model, CompileOptions(target="cortex-m7", out_dir=tmp_path / "out",
                                          kernels="mbgen", optimize="size"))
    source = (tmp_path / "out" / "model.c").read_text()
    gemm = [layer for layer in compiled.report["layers"]
            if layer["op"] in ("Conv2D", "FullyConnected")]
    assert gemm and all(layer["kernel"] == "mbgen" for layer in gemm)
    assert source.count("compact GEMM") >= len(gemm)
    graph = model.graph
    qp = graph.tensors[graph.inputs[0]].quant
    shape = graph.tensors[graph.inputs[0]].shape
    x = quantize_input(synthetic_inputs(shape, count=1, seed=5)[0], qp.scalar_scale,
                       qp.scalar_zero_point)
    result = run_qemu(compiled.out_dir, targets.get("cortex-m7"), x.tobytes(), timeout=300)
    assert result.output == run_int8(graph, x)[graph.outputs[0]].tobytes()


@needs_arm
@pytest.mark.qemu
def test_in_place_plans_are_bit_exact_in_qemu(tmp_path):
    """Random MobileNet-like graphs (test_inplace_plan's) under --optimize size: the planner
    overlays compact GEMM outputs on their inputs from the declared walk; the C really
    writes over what it has read and still gives the reference's bytes."""
    from mbgen.runner import run_qemu
    from test_inplace_plan import random_graph
    in_place = 0
    for seed in range(4):
        graph = random_graph(seed)
        program = codegen.build_program(graph, kernels="mbgen", target="cortex-m7",
                                        weight_layout="size")
        in_place += sum(1 for i in program.instances
                        if isinstance(i.call, compact.CompactGemmCall)
                        and i.node.name in (program.plan.in_place or {}))
        out = tmp_path / f"s{seed}"
        _generate(graph, out, "cortex-m7")
        x = np.random.default_rng(seed).integers(
            -128, 128, size=graph.tensors[graph.inputs[0]].shape).astype(np.int8)
        result = run_qemu(out, targets.get("cortex-m7"), x.tobytes(), timeout=60)
        assert result.output == run_int8(graph, x)[graph.outputs[0]].tobytes(), f"seed {seed}"
    assert in_place >= 5
