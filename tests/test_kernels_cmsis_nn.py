"""--kernels cmsis-nn: generated folders calling CMSIS-NN, bit-exact with the numpy reference.

The library is the real CMSIS-NN when CMSIS_NN_PATH names a checkout, else our stand-in
(tests/cmsis_nn_standin/, C written from CMSIS-NN's documented API) so CI without CMSIS-NN
still runs the backend end to end. Golden values always come from ``mbgen.reference.run_int8``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from helpers_c import CFLAGS, build, host_cc, run
from mbgen import cli, codegen, ir, targets
from mbgen.codegen import cmsis_nn_library as cmsis_library
from mbgen.codegen import kernels_cmsis_nn as cmsis
from mbgen.errors import UserError
from mbgen.reference import run_int8
from mbgen.runner import build_firmware, build_host, run_elf
from test_codegen import GraphBuilder

A = ir.Activation
STANDIN = Path(__file__).resolve().parent / "cmsis_nn_standin"
REAL_LIBRARY = os.environ.get(cmsis_library.ENV_VAR) or None
LIBRARY = Path(REAL_LIBRARY) if REAL_LIBRARY else STANDIN
LIBRARY_KIND = "real CMSIS-NN" if REAL_LIBRARY else "stand-in"
HAVE_ARM = bool(shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm"))
needs_arm = pytest.mark.skipif(not HAVE_ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")
needs_real = pytest.mark.skipif(REAL_LIBRARY is None,
                                reason=f"{cmsis_library.ENV_VAR} not set (no real CMSIS-NN checkout)")


# ----------------------------------------------------------------------------- helpers


def _generate(graph: ir.Graph, out: Path, target: str = "host") -> dict:
    return codegen.generate(graph, out, target=target, kernels=cmsis.NAME)


def _inputs(graph: ir.Graph, seed: int, count: int = 3) -> list[np.ndarray]:
    """Random int8 inputs, the last one made of the extremes -128/127 only."""
    rng = np.random.default_rng(seed)
    shape = graph.tensors[graph.inputs[0]].shape
    xs = [rng.integers(-128, 128, size=shape).astype(np.int8) for _ in range(count - 1)]
    return xs + [rng.choice(np.array([-128, 127], dtype=np.int8), size=shape)]


def _expected(graph: ir.Graph, x: np.ndarray) -> np.ndarray:
    return run_int8(graph, x)[graph.outputs[0]].reshape(-1)


def _run_host(out: Path, build_dir: Path, xs: list[np.ndarray]) -> list[np.ndarray]:
    host_cc()
    exe = build_host(out, build_dir, cmsis_nn=LIBRARY)
    return [np.frombuffer(run(exe, x.tobytes()), dtype=np.int8) for x in xs]


def _run_cortex_m(out: Path, build_dir: Path, xs: list[np.ndarray],
                  target: str = "cortex-m7") -> list:
    t = targets.get(target)
    firmware = build_firmware(out, t, build_dir, cmsis_nn=LIBRARY)
    return [run_elf(firmware.elf, t, x.tobytes()) for x in xs]


# ----------------------------------------------------------------------------- odd shapes


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[GraphBuilder], str]
    function: str | None = None   # the CMSIS-NN function the main layer must call


def _no_bias(b: GraphBuilder, y: str) -> str:
    b.nodes[-1].inputs = b.nodes[-1].inputs[:2]
    return y


CASES = [
    Case("conv_3x3_same_odd_channels",
         lambda b: b.conv(b.input((1, 7, 9, 3)), 5), "arm_convolve_wrapper_s8"),
    Case("conv_stride2_same_extra_bottom_right",
         lambda b: b.conv(b.input((1, 9, 7, 5)), 6, stride=(2, 2), act=A.RELU),
         "arm_convolve_wrapper_s8"),
    Case("conv_more_top_than_bottom_padding",
         lambda b: b.conv(b.input((1, 6, 7, 4)), 3, padding=ir.Padding(2, 0, 1, 0), act=A.NONE),
         "arm_convolve_wrapper_s8"),
    Case("conv_dilated_rectangular",
         lambda b: b.conv(b.input((1, 10, 9, 3)), 7, k=(3, 2), stride=(1, 2), dilation=(2, 1),
                          act=A.NONE), "arm_convolve_wrapper_s8"),
    Case("conv_5x5_valid_stride3",
         lambda b: b.conv(b.input((1, 11, 13, 2)), 4, k=(5, 5), stride=(3, 3),
                          padding=ir.Padding()), "arm_convolve_wrapper_s8"),
    Case("conv_1x1_fast_odd_channels",
         lambda b: b.conv(b.input((1, 6, 5, 7)), 13, k=(1, 1), act=A.NONE),
         "arm_convolve_1x1_s8_fast"),
    Case("conv_1x1_stride2",
         lambda b: b.conv(b.input((1, 7, 6, 9)), 5, k=(1, 1), stride=(2, 2),
                          padding=ir.Padding()), "arm_convolve_wrapper_s8"),
    Case("conv_1x1_bottom_right_padding",  # CMSIS-NN's 1x1 paths ignore bottom/right pads
         lambda b: b.conv(b.input((1, 5, 4, 6)), 5, k=(1, 1), padding=ir.Padding(0, 1, 0, 2),
                          act=A.NONE)),
    Case("conv_1xn_row",  # CMSIS-NN's 1xN path: one row, (stride_w * in_c) % 4 == 0
         lambda b: b.conv(b.input((1, 1, 13, 4)), 6, k=(1, 3), act=A.NONE),
         "arm_convolve_wrapper_s8"),
    Case("conv_without_bias",
         lambda b: _no_bias(b, b.conv(b.input((1, 5, 6, 9)), 7, stride=(2, 1))),
         "arm_convolve_wrapper_s8"),
    Case("depthwise_3x3_odd_channels",
         lambda b: b.depthwise(b.input((1, 7, 6, 7))), "arm_depthwise_conv_3x3_s8"),
    Case("depthwise_3x3_stride2_37_channels",
         lambda b: b.depthwise(b.input((1, 11, 9, 37)), stride=(2, 2), act=A.NONE),
         "arm_depthwise_conv_3x3_s8"),
    Case("depthwise_3x3_padding_2",  # too much padding for the 3x3 kernel: the wrapper
         lambda b: b.depthwise(b.input((1, 6, 7, 6)), padding=ir.Padding(2, 2, 2, 2)),
         "arm_depthwise_conv_wrapper_s8"),
    Case("depthwise_3x3_right_padding_2",  # arm_depthwise_conv_3x3_s8 reads the middle
         # column unchecked, so with more than one padded column on the right it falls back
         lambda b: b.depthwise(b.input((1, 5, 6, 8)), padding=ir.Padding(1, 1, 1, 2))),
    Case("depthwise_5x5",
         lambda b: b.depthwise(b.input((1, 9, 8, 10)), k=(5, 5), act=A.RELU),
         "arm_depthwise_conv_wrapper_s8"),
    Case("depthwise_multiplier_3",
         lambda b: b.depthwise(b.input((1, 6, 5, 3)), multiplier=3, stride=(2, 1)),
         "arm_depthwise_conv_wrapper_s8"),
    Case("depthwise_multiplier_8_one_channel",
         lambda b: b.depthwise(b.input((1, 9, 9, 1)), multiplier=8, stride=(2, 2)),
         "arm_depthwise_conv_wrapper_s8"),
    Case("depthwise_dilated_asymmetric",
         lambda b: b.depthwise(b.input((1, 8, 8, 5)), dilation=(2, 2),
                               padding=ir.Padding(1, 3, 2, 0), act=A.RELU),
         "arm_depthwise_conv_wrapper_s8"),
    Case("fully_connected_odd",
         lambda b: b.fully_connected(b.input((1, 37)), 11, act=A.RELU), "arm_fully_connected_s8"),
    Case("add_residual_relu6",
         lambda b: (lambda x: b.add(x, b.conv(x, 3, k=(1, 1), act=A.NONE), act=A.RELU6))(
             b.input((1, 5, 4, 3))), "arm_elementwise_add_s8"),
    Case("average_pool_valid",
         lambda b: b.average_pool(b.input((1, 7, 7, 5)), (3, 3), (2, 2)), "arm_avgpool_s8"),
    Case("average_pool_same_padded",
         lambda b: b.average_pool(b.input((1, 6, 5, 9)), (3, 3), (2, 2),
                                  ir.Padding.same(6, 5, 3, 3, 2, 2), act=A.RELU6),
         "arm_avgpool_s8"),
    Case("softmax_rows",
         lambda b: b.softmax(b.input((1, 3, 10), scale=0.02, zero_point=-3), beta=0.7),
         "arm_softmax_s8"),
    Case("classifier_head_with_fallbacks",  # MEAN and RESHAPE run on the portable kernels
         lambda b: b.softmax(b.fully_connected(
             b.reshape(b.mean(b.input((1, 5, 5, 13)), keep_dims=True), (1, 13)), 10))),
]


def _case_graph(case: Case) -> ir.Graph:
    builder = GraphBuilder(seed=sum(map(ord, case.name)), name=case.name)
    return builder.graph(case.build(builder))


def _check_lowering(case: Case, graph: ir.Graph, out: Path) -> None:
    """The layers CMSIS-NN can take call it (the expected function), the rest fall back."""
    report = _generate(graph, out)
    refused = {n.name for n in graph.nodes if cmsis.refusal(graph, n) is not None}
    assert set(report["fallback_layers"]) == refused
    assert [layer["kernel"] for layer in report["layers"]] == \
        ["portable" if n.name in refused else cmsis.NAME for n in graph.nodes]
    if case.function is not None:
        assert case.function + "(" in (out / "model.c").read_text()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_odd_shapes_bit_exact_on_host(case: Case, tmp_path: Path):
    graph = _case_graph(case)
    _check_lowering(case, graph, tmp_path / "out")
    xs = _inputs(graph, seed=len(case.name))
    expected = [_expected(graph, x) for x in xs]
    for got, want in zip(_run_host(tmp_path / "out", tmp_path / "build", xs), expected):
        np.testing.assert_array_equal(got, want, err_msg=f"{case.name} ({LIBRARY_KIND})")
    assert len(np.unique(np.concatenate(expected))) > 2  # outputs carry information


def _case_on_cortex_m7(case: Case, tmp_path: Path) -> None:
    graph = _case_graph(case)
    out = tmp_path / case.name
    _generate(graph, out, target="cortex-m7")
    xs = _inputs(graph, seed=len(case.name), count=2)
    for result, x in zip(_run_cortex_m(out, tmp_path / f"build-{case.name}", xs), xs):
        np.testing.assert_array_equal(result.output_int8(), _expected(graph, x),
                                      err_msg=f"{case.name} ({LIBRARY_KIND}, cortex-m7)")


@pytest.mark.qemu
@pytest.mark.slow
@needs_arm
def test_odd_shapes_bit_exact_on_cortex_m7(tmp_path: Path):
    """Every case as a firmware for CMSIS-NN's DSP code paths (Armv7E-M), built in parallel."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for done in [pool.submit(_case_on_cortex_m7, case, tmp_path) for case in CASES]:
            done.result()


# ----------------------------------------------------------------------------- a whole model


@pytest.fixture(scope="module")
def mbv1(prepared) -> ir.Graph:
    return prepared("mbv1_0.25_96").graph


def test_mbv1_bit_exact_on_host(mbv1: ir.Graph, tmp_path: Path):
    out = tmp_path / "out"
    report = _generate(mbv1, out)
    # only the global average pool (MEAN) is not a CMSIS-NN layer
    assert [mbv1.nodes[i].op.__class__ for i, layer in enumerate(report["layers"])
            if layer["kernel"] != cmsis.NAME] == [ir.Mean]
    xs = _inputs(mbv1, seed=3, count=2)
    for got, x in zip(_run_host(out, tmp_path / "build", xs), xs):
        np.testing.assert_array_equal(got, _expected(mbv1, x), err_msg=LIBRARY_KIND)


@pytest.mark.qemu
@pytest.mark.slow
@needs_arm
def test_mbv1_bit_exact_on_cortex_m7(mbv1: ir.Graph, tmp_path: Path):
    out = tmp_path / "out"
    report = _generate(mbv1, out, target="cortex-m7")
    x = _inputs(mbv1, seed=4, count=1)[0]
    (result,) = _run_cortex_m(out, tmp_path / "build", [x])
    np.testing.assert_array_equal(result.output_int8(), _expected(mbv1, x), err_msg=LIBRARY_KIND)
    assert [name for name, _ in result.layer_instructions] == \
        [layer["name"] for layer in report["layers"]]


def test_generated_folder_compiles_cleanly_and_refuses_single_rounding(mbv1: ir.Graph,
                                                                        tmp_path: Path):
    """-Wall -Wextra -Werror on the folder's own files; CMSIS_NN_USE_SINGLE_ROUNDING stops
    the build, since only the default double rounding is TFLite's."""
    out = tmp_path / "out"
    _generate(mbv1, out)
    include = [out, LIBRARY / "Include"]
    for source in sorted(out.glob("*.c")):
        build([source], include, tmp_path / (source.stem + ".o"), flags=(*CFLAGS, "-c"))
    proc = subprocess.run([host_cc(), *CFLAGS, "-c", "-DCMSIS_NN_USE_SINGLE_ROUNDING",
                           *(f"-I{d}" for d in include), str(out / "model.c"),
                           "-o", str(tmp_path / "x.o")], capture_output=True, text=True)
    assert proc.returncode != 0 and "CMSIS_NN_USE_SINGLE_ROUNDING" in proc.stderr


# ----------------------------------------------------------------------------- scratch


def _conv_graph() -> ir.Graph:
    b = GraphBuilder(seed=1, name="conv")
    return b.graph(b.conv(b.conv(b.input((1, 6, 6, 3)), 8), 4, k=(5, 5)))


def test_scratch_comes_from_the_documented_formulas_and_lives_in_the_arena():
    graph = _conv_graph()
    first, second = graph.nodes
    # arm_convolve_s8_get_buffer_size: 2 columns * aligned(k_h * k_w * in_c) * sizeof(int16)
    program = codegen.build_program(graph, kernels=cmsis.NAME)
    assert [i.scratch_bytes for i in program.instances] == [
        2 * 28 * 2,     # 3 * 3 * 3 = 27 -> 28
        2 * 200 * 2]    # 5 * 5 * 8 = 200
    plan = program.plan
    assert set(plan.scratch_offsets) == {first.name, second.name}
    assert all(offset + 800 <= plan.arena_size for offset in plan.scratch_offsets.values())


@pytest.mark.parametrize("build_kind", cmsis.BUILDS)
def test_buffer_sizes_by_build(build_kind: str):
    """Hand-computed sizes from the library's documentation, per build."""
    one_by_one = cmsis.ConvParams(0, 0, cmsis.Tile(1, 1), cmsis.Tile(0, 0), cmsis.Tile(1, 1),
                                  cmsis.Clamp(-128, 127))
    x, f = cmsis.Dims(1, 8, 8, 16), cmsis.Dims(32, 1, 1, 16)
    assert cmsis.convolve_wrapper_buffer_size(build_kind, one_by_one, x, f, x) == \
        (64 if build_kind == cmsis.Build.DSP_ARMCLANG else 0)
    dw = cmsis.DwConvParams(0, 0, 1, cmsis.Tile(1, 1), cmsis.Tile(2, 2), cmsis.Tile(1, 1),
                            cmsis.Clamp(-128, 127))
    dw_filter = cmsis.Dims(1, 3, 3, 16)
    dsp = build_kind != cmsis.Build.PLAIN
    assert cmsis.depthwise_wrapper_buffer_size(build_kind, dw, x, dw_filter, x) == \
        (16 * 9 * 2 if dsp else 0)
    assert cmsis.avgpool_buffer_size(build_kind, 4, 24) == (96 if dsp else 0)


BUFFER_SIZE_PROGRAM = r"""
#include <stdio.h>
#include "arm_nnfunctions.h"

/* Reads geometries from stdin and prints what CMSIS-NN's *_get_buffer_size functions say,
   for this (plain) build and for a DSP build ("_dsp", meant for host use). */
int main(void)
{
    char kind[8];
    int v[16];
    while (scanf("%7s", kind) == 1) {
        if (kind[0] == 'c' || kind[0] == 'd') {
            for (int i = 0; i < 16; i++) {
                if (scanf("%d", &v[i]) != 1) return 1;
            }
            cmsis_nn_dims in = {1, v[0], v[1], v[2]}, out = {1, v[3], v[4], v[5]};
            if (kind[0] == 'c') {
                cmsis_nn_dims f = {v[5], v[6], v[7], v[2]};
                cmsis_nn_conv_params p = {0, 0, {v[9], v[8]}, {v[11], v[10]}, {v[13], v[12]},
                                          {-128, 127}};
                printf("%d %d\n", (int)arm_convolve_wrapper_s8_get_buffer_size(&p, &in, &f, &out),
                       (int)arm_convolve_wrapper_s8_get_buffer_size_dsp(&p, &in, &f, &out));
            } else {
                cmsis_nn_dims f = {1, v[6], v[7], v[5]};
                cmsis_nn_dw_conv_params p = {0, 0, v[14], {v[9], v[8]}, {v[11], v[10]},
                                             {v[13], v[12]}, {-128, 127}};
                printf("%d %d\n",
                       (int)arm_depthwise_conv_wrapper_s8_get_buffer_size(&p, &in, &f, &out),
                       (int)arm_depthwise_conv_wrapper_s8_get_buffer_size_dsp(&p, &in, &f, &out));
            }
        } else {
            int w, c, depth;
            if (scanf("%d %d %d", &w, &c, &depth) != 3) return 1;
            cmsis_nn_dims f = {depth, 1, 1, c};
            printf("%d %d %d %d\n", (int)arm_avgpool_s8_get_buffer_size(w, c),
                   (int)arm_avgpool_s8_get_buffer_size_dsp(w, c),
                   (int)arm_fully_connected_s8_get_buffer_size(&f),
                   (int)arm_fully_connected_s8_get_buffer_size_dsp(&f));
        }
    }
    return 0;
}
"""


def _geometries(seed: int) -> list[tuple[str, list[int]]]:
    """Layers as (kind, values): random sizes around the special cases the wrappers test."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(300):
        kind = "conv" if i % 2 == 0 else "dw"
        k_h, k_w = (int(v) for v in rng.choice([1, 1, 3, 3, 5, 2], size=2))
        in_h = 1 if rng.random() < 0.2 else int(rng.integers(1, 20))
        in_c = int(rng.choice([1, 3, 4, 8, 12, 16, 17]))
        mult = int(rng.choice([1, 1, 2, 4])) if kind == "dw" else 1
        out_c = in_c * mult if kind == "dw" else int(rng.integers(1, 40))
        stride = [int(rng.choice([1, 1, 2])) for _ in range(2)]
        pad = [int(rng.choice([0, 0, 1, 2])) for _ in range(2)]
        dil = [int(rng.choice([1, 1, 1, 2])) for _ in range(2)]
        rows.append((kind, [in_h, int(rng.integers(1, 20)), in_c, 1, 1, out_c, k_h, k_w,
                            *stride, *pad, *dil, mult, 0]))
    return rows


@needs_real
def test_buffer_size_formulas_match_the_real_library(tmp_path: Path):
    """Our Python formulas against CMSIS-NN's own *_get_buffer_size (plain and _dsp builds)."""
    library = cmsis_library.library_build(targets.get("host"), REAL_LIBRARY)
    program = tmp_path / "sizes.c"
    program.write_text(BUFFER_SIZE_PROGRAM)
    exe = build([program, *library.sources], list(library.include_dirs), tmp_path / "sizes",
                flags=("-std=c99", "-O1"))
    geometries = _geometries(seed=0)
    pools = [(int(w), int(c), int(d)) for w, c, d in
             np.random.default_rng(1).integers(1, 300, size=(50, 3))]
    stdin = "".join(f"{kind} {' '.join(map(str, v))}\n" for kind, v in geometries)
    stdin += "".join(f"pool {w} {c} {d}\n" for w, c, d in pools)
    lines = subprocess.run([str(exe)], input=stdin, capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert len(lines) == len(geometries) + len(pools)
    for (kind, v), line in zip(geometries, lines):
        in_h, in_w, in_c, out_h, out_w, out_c, k_h, k_w, s_h, s_w, p_h, p_w, d_h, d_w, mult, _ = v
        x, y = cmsis.Dims(1, in_h, in_w, in_c), cmsis.Dims(1, out_h, out_w, out_c)
        stride, pad, dil = cmsis.Tile(s_w, s_h), cmsis.Tile(p_w, p_h), cmsis.Tile(d_w, d_h)
        clamp = cmsis.Clamp(-128, 127)
        builds = (cmsis.Build.PLAIN, cmsis.Build.DSP_GCC)
        if kind == "conv":
            p = cmsis.ConvParams(0, 0, stride, pad, dil, clamp)
            f = cmsis.Dims(out_c, k_h, k_w, in_c)
            ours = [cmsis.convolve_wrapper_buffer_size(b, p, x, f, y) for b in builds]
        else:
            p = cmsis.DwConvParams(0, 0, mult, stride, pad, dil, clamp)
            f = cmsis.Dims(1, k_h, k_w, out_c)
            ours = [cmsis.depthwise_wrapper_buffer_size(b, p, x, f, y) for b in builds]
        assert [int(t) for t in line.split()] == ours, f"{kind} {v}"
    for (w, c, depth), line in zip(pools, lines[len(geometries):]):
        builds = (cmsis.Build.PLAIN, cmsis.Build.DSP_GCC)
        ours = [cmsis.avgpool_buffer_size(b, w, c) for b in builds]
        ours += [cmsis.fully_connected_buffer_size(b, cmsis.Dims(depth, 1, 1, c)) for b in builds]
        assert [int(t) for t in line.split()] == ours


# ----------------------------------------------------------------------------- legality


def _one_layer(build_layer: Callable[[GraphBuilder], str]) -> tuple[ir.Graph, ir.Node]:
    b = GraphBuilder(seed=2, name="one")
    graph = b.graph(build_layer(b))
    return graph, graph.nodes[-1]


def test_what_cmsis_nn_cannot_take_falls_back_with_a_reason(tmp_path: Path):
    # a per-channel fully connected layer: arm_fully_connected_s8 is per tensor
    b = GraphBuilder(seed=3, name="fc")
    x = b.input((1, 12))
    y = b._weighted(x, (5, 12), 0, (1, 5), ir.FullyConnected(A.NONE), 12, A.NONE)
    graph = b.graph(y)
    assert "per-tensor" in cmsis.refusal(graph, graph.nodes[0])
    report = _generate(graph, tmp_path / "fc")
    assert report["fallback_layers"] == [graph.nodes[0].name]

    graph, node = _one_layer(lambda b: b.mean(b.input((1, 4, 4, 3))))
    assert "Mean" in cmsis.refusal(graph, node)
    graph, node = _one_layer(lambda b: b.conv(b.input((1, 4, 4, 3)), 4))
    assert cmsis.refusal(graph, node) is None
    assert cmsis.fallbacks(graph) == {}


# ----------------------------------------------------------------------------- building


def test_building_without_a_library_says_cmsis_nn_is_needed(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(cmsis_library.ENV_VAR, raising=False)
    graph = _conv_graph()
    out = tmp_path / "out"
    _generate(graph, out)  # compiling needs no library
    assert (out / "model.c").is_file()
    with pytest.raises(UserError, match=cmsis_library.ENV_VAR):
        build_host(out, tmp_path / "build")
    assert cli.main(["run", str(out), "--host"]) == cli.EXIT_USER_ERROR
    with pytest.raises(UserError, match="not a CMSIS-NN source tree"):
        build_host(out, tmp_path / "build", cmsis_nn=tmp_path)


def test_helium_cores_build_cmsis_nn_with_mve_off():
    """CMSIS-NN's MVE paths want other scratch buffers than the DSP ones we size."""
    assert cmsis_library.library_build(targets.get("cortex-m55"), STANDIN).cflags == \
        ("-mcpu=cortex-m55+nomve",)
    assert cmsis_library.library_build(targets.get("cortex-m7"), STANDIN).cflags == ()


def test_the_runner_takes_the_library_from_the_environment(tmp_path: Path, monkeypatch):
    monkeypatch.setenv(cmsis_library.ENV_VAR, str(LIBRARY))
    graph = _conv_graph()
    out = tmp_path / "out"
    _generate(graph, out)
    host_cc()
    x = _inputs(graph, seed=9, count=1)[0]
    got = run(build_host(out, tmp_path / "build"), x.tobytes())
    np.testing.assert_array_equal(np.frombuffer(got, np.int8), _expected(graph, x))
