"""--kernels mbgen with int8 weights: the widened-stream and per-chunk paths, and the policy.

Each case is one layer from tests/test_kernels_mbgen.py's CASES, generated with int8
weights for Cortex-M7, run in QEMU and compared byte for byte with
``mbgen.reference.run_int8`` (numpy, sharing nothing with the C).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mbgen import codegen, targets
from mbgen.codegen import kernels_mbgen as mb
from mbgen.codegen import kernels_mbgen_policy as policy
from mbgen.codegen import kernels_mbgen_records as mb_records
from mbgen.reference import run_int8
from test_kernels_mbgen import CASES, Layer, build_graph, needs_arm, test_inputs

# The layer cases, each reaching: the shared per-depth asm block (pw_asm_block), an odd
# channel and a partial pixel block (pw_odd_everything), the direct im2col stem
# (conv_stem_3ch_s2), the byte-gather im2col and a C requantisation (conv_5x3_dilated).
INT8_CASES = ("pw_asm_block", "pw_odd_everything", "conv_stem_3ch_s2", "conv_5x3_dilated")


def _layout(mode: str) -> str:
    return "size" if mode == "size" else "int8"


def _lower(graph, mode: str, flash_budget: int | None = None):
    """The first layer's bound call record through the one pipeline."""
    return codegen.build_program(graph, kernels=mb.NAME, target="cortex-m7",
                                 flash_budget=flash_budget,
                                 weight_layout=_layout(mode)).layers[0].call


@pytest.fixture(params=["ram", "chunks", "size"])
def int8_mode(request, monkeypatch):
    """ram: the whole stream widened at the start, the layer's own block code; chunks:
    widened per chunk of 2 blocks (several chunks, the last holding the partial block);
    size: the widened stream run by the shared per-depth block (any depth here)."""
    # these one-layer graphs' arenas have little room beside the layer: the mode is forced
    chunks = request.param == "chunks"
    monkeypatch.setattr(mb, "int8_widening", lambda *args: (False, 2) if chunks else (True, 0))
    if request.param == "size":
        monkeypatch.setattr(mb_records, "SHARED_MIN_DEPTH", 0)
        # the specialised size path is the fallback of the compact GEMM (which declines
        # layers its params struct cannot hold): force it here
        monkeypatch.setattr(mb, "lower_compact_gemm", lambda *args: None)
    return request.param


@needs_arm
@pytest.mark.qemu
@pytest.mark.parametrize("name", INT8_CASES)
def test_int8_weights_bit_exact_in_qemu(name, int8_mode, tmp_path: Path):
    from mbgen.runner import run_qemu
    graph = build_graph(CASES[name])
    call = _lower(graph, int8_mode)
    assert call.weight_format is mb.WeightFormat.INT8
    assert call.ram_stream == (int8_mode != "chunks")
    assert call.ram_shared == (int8_mode == "size" and call.asm_block)
    assert call.expanded == (int8_mode == "chunks")
    if int8_mode == "chunks":
        assert call.chunk_blocks == 2 and call.total_blocks > 2
    if name == "pw_asm_block":
        assert call.asm_block and call.prints_shared_gemm == (int8_mode != "ram")
    report = codegen.generate(graph, tmp_path, target="cortex-m7", kernels=mb.NAME,
                              weight_layout=_layout(int8_mode))
    assert report["layers"][0]["kernel"] == mb.NAME
    for i, x in enumerate(test_inputs(graph, CASES[name].seed)):
        got = np.frombuffer(run_qemu(tmp_path, targets.get("cortex-m7"), x.tobytes(),
                                     timeout=60).output, np.int8)
        want = run_int8(graph, x)[graph.outputs[0]].reshape(-1)
        assert np.array_equal(got, want), f"input {i}: {np.count_nonzero(got != want)} differ"



@needs_arm
@pytest.mark.qemu
@pytest.mark.parametrize("hwc, tail", [((3, 3, 64), 1), ((5, 2, 32), 2), ((3, 1, 16), 3)])
def test_last_pixels_of_a_chunk_run_one_at_a_time(hwc, tail, monkeypatch, tmp_path: Path):
    """A last 4-pixel block with 1 or 2 real pixels runs them singly (the shared block's
    single-pixel path), 3 run as a padded block: bit-exact in QEMU either way."""
    from mbgen.runner import run_qemu
    monkeypatch.setattr(mb, "int8_widening", lambda *args: (False, 2))
    graph = build_graph(Layer("conv", hwc, 10, seed=11))
    call = _lower(graph, "chunks")
    assert call.expanded and call.asm_block and call.tail_pixels == tail
    codegen.generate(graph, tmp_path, target="cortex-m7", kernels=mb.NAME, weight_layout="int8")
    for i, x in enumerate(test_inputs(graph, 11)):
        got = np.frombuffer(run_qemu(tmp_path, targets.get("cortex-m7"), x.tobytes(),
                                     timeout=60).output, np.int8)
        want = run_int8(graph, x)[graph.outputs[0]].reshape(-1)
        assert np.array_equal(got, want), f"input {i}: {np.count_nonzero(got != want)} differ"


def test_layout_policy():
    """--weight-layout int8/int16 wins; auto follows --optimize. balanced gives int16 pairs
    only when the whole model with them stays under half the flash budget."""
    assert policy.lowering_layout("int16", "size") == "int16"
    assert policy.lowering_layout("auto", "size") == "size"
    assert policy.lowering_layout("auto", "speed") == "speed"
    assert policy.lowering_layout("auto", "balanced") == "balanced"
    graph = build_graph(CASES["pw_asm_block"])
    need = (policy.const_bytes(graph) + policy.CODE_RESERVE_BYTES
            + sum(e for _, e, _ in policy.int16_candidates(graph)))
    assert policy.balanced_allows_int16(graph, 2 * need)
    assert not policy.balanced_allows_int16(graph, 2 * need - 2)
    assert policy.layout_note(graph, "balanced", 2 * need).startswith("weights int16 pairs on 1")
    assert policy.layout_note(graph, "balanced", 2 * need - 2).startswith("weights int8;")
    for layout, flash, fmt in (("balanced", 2 * need, mb.WeightFormat.INT16_PAIRS),
                               ("balanced", 2 * need - 2, mb.WeightFormat.INT8),
                               ("int8", None, mb.WeightFormat.INT8)):
        call = codegen.build_program(graph, kernels=mb.NAME, target="cortex-m7",
                                     flash_budget=flash, weight_layout=layout).layers[0].call
        assert call.weight_format is fmt, (layout, flash)


@pytest.mark.parametrize("name", ["pw_asm_block", "pw_odd_everything", "conv_stem_3ch_s2",
                                  "dw3x3_s1_asm"])
def test_int8_folder_builds_on_the_host(name, int8_mode, tmp_path: Path):
    """Off-target the same int8 folder compiles the plain-C twins (widening, the C blocks,
    the depthwise record rebuild): same bytes as the reference."""
    from helpers_c import build_folder, run
    graph = build_graph(CASES[name])
    codegen.generate(graph, tmp_path, target="cortex-m7", kernels=mb.NAME,
                     weight_layout=_layout(int8_mode))
    exe = build_folder(tmp_path)
    for x in test_inputs(graph, seed=3):
        assert run(exe, x.tobytes()) == run_int8(graph, x)[graph.outputs[0]].tobytes()


@needs_arm
@pytest.mark.qemu
def test_int8_paths_at_O0(int8_mode, tmp_path: Path):
    """-O0 compiles the asm blocks' C twins on the target: the int8 paths give the same bytes."""
    from mbgen.runner import build_firmware, run_elf
    target = targets.get("cortex-m7")
    graph = build_graph(CASES["pw_asm_block"])
    codegen.generate(graph, tmp_path / "out", target="cortex-m7", kernels=mb.NAME,
                     weight_layout=_layout(int8_mode))
    elf = build_firmware(tmp_path / "out", target, tmp_path / "build",
                         extra_cflags=["-O0"]).elf
    x = test_inputs(graph, seed=4)[0]
    assert run_elf(elf, target, x.tobytes(), timeout=60).output == \
        run_int8(graph, x)[graph.outputs[0]].tobytes()


@pytest.mark.parametrize("io", ["arena", "external"])
def test_faster_scratch_only_from_free_arena_bytes(prepared, io):
    """The widened streams, bigger chunks and RAM records are offered only the plan's free
    gap beside each layer: the arena is no bigger than with the least scratch, every layer
    that took more scratch took at most its gap, and on mbv1_0.25_128 some layers still
    get the faster variants from that room."""
    from mbgen.codegen.lowering import LoweringContext
    from mbgen.codegen.program import lower
    from mbgen.planner import free_bytes_beside, plan_graph
    graph = prepared("mbv1_0.25_128").graph
    least = {i.node.name: i for i in lower(
        LoweringContext(graph, "model", "cortex-m7", weight_layout="int8"), mb.NAME)}
    least_plan = plan_graph(graph, {name: i.needs for name, i in least.items()}, io=io)
    program = codegen.build_program(graph, kernels=mb.NAME, target="cortex-m7", io=io,
                                    weight_layout="int8")
    assert program.plan.arena_size <= least_plan.arena_size
    free = free_bytes_beside(least_plan, graph)
    grown = [i for i in program.instances
             if i.scratch_bytes > least[i.node.name].scratch_bytes]
    assert grown
    assert all(i.scratch_bytes <= free[i.node.name] for i in grown)
    assert not any(getattr(i.call, "ram_stream", False) for i in least.values())
    assert any(getattr(i.call, "ram_stream", False) for i in program.instances)
