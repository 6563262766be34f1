"""The mbgen layout policy (kernels_mbgen_policy): when the default shares the compact
kernels' code, and issue 12's cortex-m4 bar that this buys."""

from __future__ import annotations

import pytest

from mbgen import codegen
from mbgen.codegen import kernels_mbgen as mb
from mbgen.codegen import kernels_mbgen_compact as compact_gemm
from test_kernels_mbgen import CASES, build_graph, needs_arm


def test_balanced_shares_code_when_weights_and_reserve_pass_half_the_flash():
    """The default layout policy: per-layer kernels only while the weights plus the code
    reserve stay under half the flash budget; size always shares; speed and forced
    layouts never do."""
    from mbgen.codegen import kernels_mbgen_policy as policy
    graph = build_graph(CASES["pw_asm_block"])
    edge = 2 * (policy.const_bytes(graph) + policy.CODE_RESERVE_BYTES)
    assert not policy.shares_code(graph, "balanced", edge)
    assert policy.shares_code(graph, "balanced", edge - 2)
    assert policy.shares_code(graph, "auto", edge - 2)
    assert policy.shares_code(graph, "size", 1 << 30)
    for layout in ("speed", "int8", "int16"):
        assert not policy.shares_code(graph, layout, 1)
    assert "shared compact kernels" in policy.layout_note(graph, "balanced", edge - 2)
    assert "shared compact kernels" not in policy.layout_note(graph, "balanced", edge)
    for flash, compact in ((edge, False), (edge - 2, True)):
        call = codegen.build_program(graph, kernels=mb.NAME, target="cortex-m7",
                                     flash_budget=flash).layers[0].call
        assert isinstance(call, compact_gemm.CompactGemmCall) == compact


def test_balanced_keeps_shallow_layers_per_layer_while_under_half_the_flash():
    """Under balanced with the shared compact kernels, the RGB stem and 1x1 layers at most
    16 deep keep their per-layer GEMM, the most 4x2 runs first, while the compact streams,
    the compact code and SHALLOW_CODE_BYTES each stay under half the flash budget; deeper
    layers and other layouts never do."""
    from mbgen import ir
    from mbgen.codegen import kernels_mbgen_policy as policy
    from test_tflite_graph_ops import OpsBuilder
    b = OpsBuilder(seed=3, name="shallow")
    x = b.input((1, 16, 16, 3), zero_point=-5)
    stem = b.conv(x, 8, stride=(2, 2), act=ir.Activation.RELU6)       # 3x3 on RGB, 64 pixels
    pw8 = b.conv(stem, 16, k=(1, 1), act=ir.Activation.RELU6)         # 8 deep
    pw16 = b.conv(pw8, 24, k=(1, 1), act=ir.Activation.RELU6)         # 16 deep, most runs
    deep = b.conv(pw16, 8, k=(1, 1), act=ir.Activation.RELU6)         # 24 deep: never
    graph = b.graph(deep)
    names = [node.name for node in graph.nodes]
    base = 2 * (policy.compact_weight_bytes(graph) + policy.COMPACT_CODE_BYTES)
    assert policy.shares_code(graph, "balanced", base + 6 * 1024)
    assert policy.specialised_layers(graph, "balanced", base) == frozenset()
    one = policy.specialised_layers(graph, "balanced", base + 2 * policy.SHALLOW_CODE_BYTES)
    assert one == {names[2]}
    every = policy.specialised_layers(graph, "balanced", base + 8 * policy.SHALLOW_CODE_BYTES)
    assert every == set(names[:3])
    for layout in ("size", "speed", "int8"):
        assert policy.specialised_layers(graph, layout, base + 8 * 1024) == frozenset()
    assert "3 shallow layers per-layer" in policy.layout_note(
        graph, "balanced", base + 8 * policy.SHALLOW_CODE_BYTES)
    # after a link that passed half the budget: a layout budget keeping one fewer, down to
    # none; a link under half (or nothing kept) lets the build stand
    flash = base + 8 * policy.SHALLOW_CODE_BYTES
    for count in range(3):
        kept = policy.specialised_layers(
            graph, "balanced", policy.layout_budget_keeping(graph, flash, count))
        assert len(kept) == count and kept <= every
    assert policy.fewer_shallow_budget(graph, "balanced", flash, flash // 2, flash) is None
    fewer = policy.fewer_shallow_budget(graph, "balanced", flash, flash // 2 + 1, flash)
    assert len(policy.specialised_layers(graph, "balanced", fewer)) == 2
    assert policy.fewer_shallow_budget(graph, "balanced", flash, flash, base) is None


@pytest.mark.slow
def test_kept_shallow_layers_leave_the_linked_model_under_half_the_flash(prepared, shared_dir,
                                                                       tmp_path):
    """What balanced promises, on the linked firmware of the two real models the estimate
    keeps layers for by default: a model that keeps shallow layers per-layer stays under
    half the budget (weights and code, compile's figure), and the compact streams are
    estimated within 1%. mbv1 on the M7 keeps both; person_detect's compact model on the
    M4 is already at half its 512 KB (its streamed bands' per-layer stem and params, 25 KB
    of code), which only the linked figure shows: compile builds again with none."""
    from mbgen.codegen import kernels_mbgen_policy as policy
    from mbgen.compiler import CompileOptions, emit
    cases = (("mbv1_0.25_128", "cortex-m7", {"features.0.0", "features.1.1.0"}, 2),
             (str(shared_dir / "models" / "person_detect.tflite"), "cortex-m4",
              {"MobilenetV1/MobilenetV1/Conv2d_1_pointwise/Relu6"}, 0))
    for number, (spec, target, estimated, kept) in enumerate(cases):
        model = prepared(spec)
        compiled = emit(model, CompileOptions(target=target, out_dir=tmp_path / str(number)))
        memory = compiled.report["memory"]
        budget = memory["flash_budget_bytes"]
        assert policy.specialised_layers(model.graph, "balanced", budget) == estimated
        if kept:
            assert memory["flash_bytes"] <= budget // 2, (spec, memory["flash_bytes"])
        note = compiled.budget["weight_layout"]
        assert (f"{kept} shallow layer" in note) if kept else "shallow" not in note
        estimate = policy.compact_weight_bytes(model.graph)
        assert abs(estimate - memory["weights_bytes"]) <= memory["weights_bytes"] // 100


def test_a_streamed_stage_follows_the_whole_model_policy(prepared, shared_dir):
    """A stage's bands are lowered on one-node band graphs; their layout decisions (shared
    code, the shallow layers kept per-layer, int16 pairs within the budget) are still the
    whole model's, so
    the default mbv1_0.25_128 runs its stage on the compact kernels too, but for the
    shallow layers on the M7 (room under half its 1 MB; none on the 512 KB M4), and
    person_detect on the M7 keeps int8."""
    from mbgen import streaming
    from mbgen.codegen import kernels_mbgen_compact_dw as compact_dw
    from mbgen.codegen.lower_stage import StageCall
    shallow = {"features.0.0", "features.1.1.0"}   # room for two under half of 1 MB
    for model, target, kept in (("mbv1_0.25_128", "cortex-m4", set()),
                                ("mbv1_0.25_128", "cortex-m7", shallow)):
        program = codegen.build_program(prepared(model).graph, kernels=mb.NAME, target=target,
                                        stream=streaming.options_for(mb.NAME))
        stages = [layer.call for layer in program.layers if isinstance(layer.call, StageCall)]
        assert stages
        per_layer = set()
        for stage in stages:
            for kernel in stage.kernels:
                layer = kernel.name.split(" rows ")[0]
                compact = isinstance(kernel.call, (compact_gemm.CompactGemmCall,
                                                   compact_dw.CompactDepthwiseCall))
                assert compact == (layer not in kept), (target, kernel.name)
                per_layer |= set() if compact else {layer}
        assert per_layer <= kept and bool(per_layer) == bool(kept)
    # person_detect on the M7: per-layer kernels with int8 weights, in its stages too (a
    # one-node band graph alone would pass the int16 test)
    program = codegen.build_program(
        prepared(str(shared_dir / "models" / "person_detect.tflite")).graph, kernels=mb.NAME,
        target="cortex-m7", stream=streaming.options_for(mb.NAME))
    inner = [k.call for layer in program.layers if isinstance(layer.call, StageCall)
             for k in layer.call.kernels]
    gemms = [c for c in inner if isinstance(c, mb.GemmCall)]
    assert gemms and all(c.weight_format is mb.WeightFormat.INT8 for c in gemms)
    # --optimize speed on the 512 KB M4: mbv1's int8 weights leave no room for int16 pairs
    # under the code reserve, for streamed layers too (their band graphs alone had room)
    program = codegen.build_program(prepared("mbv1_0.25_128").graph, kernels=mb.NAME,
                                    target="cortex-m4", weight_layout="speed",
                                    stream=streaming.options_for(mb.NAME))
    calls = [k.call for layer in program.layers for k in (
        layer.call.kernels if isinstance(layer.call, StageCall) else [layer])]
    gemms = [c for c in calls if isinstance(c, mb.GemmCall)]
    assert any(isinstance(layer.call, StageCall) for layer in program.layers)
    assert gemms and all(c.weight_format is mb.WeightFormat.INT8 for c in gemms)


@needs_arm
@pytest.mark.qemu
@pytest.mark.slow
def test_mbv1_128_on_cortex_m4_runs_mbgen_kernels_in_its_512_kb(prepared, tmp_path):
    """Issue 12: with default options mbv1_0.25_128 compiles for the 512 KB cortex-m4 with
    the mbgen kernels (the shared compact ones) and runs at least 4x faster than portable C,
    both bit-exact with the numpy reference in QEMU (bench_model refuses otherwise)."""
    from mbgen import targets
    from mbgen.bench import bench_model
    from mbgen.compiler import CompileOptions, emit
    compiled = emit(prepared("mbv1_0.25_128"),
                    CompileOptions(target="cortex-m4", out_dir=tmp_path / "m4"))
    assert compiled.report["kernels"] == mb.NAME
    flash = compiled.report["memory"]["example_firmware"]
    assert flash["text"] + flash["data"] <= targets.get("cortex-m4").flash_bytes
    outcome = bench_model("mbv1_0.25_128", "cortex-m4", ["portable", "mbgen"], echo=None)
    portable, mbgen = outcome["results"]
    assert mbgen["flash_bytes"] <= targets.get("cortex-m4").flash_bytes
    assert portable["instructions"] >= 4 * mbgen["instructions"]
