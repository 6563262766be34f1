"""`mbgen bench`: the JSON it prints has the documented shape and self-consistent numbers.

A tiny int8 model (written to .tflite, so it goes through the same loading path as a user's
file) keeps the builds and QEMU runs short. Every benchmarked run is itself checked against
the numpy reference inside bench_model; here we check what it reports.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mbgen import cli
from mbgen.bench import bench_model, format_table
from mbgen.export.tflite_writer import write_tflite
from test_codegen import GraphBuilder

STANDIN = Path(__file__).resolve().parent / "cmsis_nn_standin"
needs_arm = pytest.mark.skipif(
    not (shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")),
    reason="needs arm-none-eabi-gcc and qemu-system-arm")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    b = GraphBuilder(seed=7, name="tiny")
    x = b.input((1, 8, 8, 3))
    y = b.conv(x, 8, stride=(2, 2))
    y = b.depthwise(y)
    y = b.conv(y, 12, k=(1, 1))
    y = b.reshape(b.mean(y, keep_dims=True), (1, 12))
    y = b.fully_connected(y, 5)
    return write_tflite(b.graph(y), tmp_path_factory.mktemp("model") / "tiny.tflite")


def _check_shape(outcome: dict, kernel_sets: list[str]) -> None:
    assert set(outcome) >= {"model", "target", "macs", "results"}
    assert outcome["model"] == "tiny" and outcome["target"] == "cortex-m7"
    assert [r["kernels"] for r in outcome["results"]] == kernel_sets
    names = None
    for r in outcome["results"]:
        assert set(r) >= {"kernels", "instructions", "arena_bytes", "flash_bytes", "layers"}
        assert all(isinstance(r[k], int) and r[k] > 0
                   for k in ("instructions", "arena_bytes", "flash_bytes"))
        for layer in r["layers"]:
            assert set(layer) >= {"name", "op", "macs", "instructions"}
            assert layer["instructions"] > 0
        # the same layers for every kernel set, MACs summing to the model's
        assert names is None or [layer["name"] for layer in r["layers"]] == names
        names = [layer["name"] for layer in r["layers"]]
        assert sum(layer["macs"] for layer in r["layers"]) == outcome["macs"]
        # layer counts cover the invoke, up to the profiling hooks between them
        assert sum(layer["instructions"] for layer in r["layers"]) <= r["instructions"] + 100
        assert sum(layer["instructions"] for layer in r["layers"]) > 0.9 * r["instructions"]
    ops = [layer["op"] for layer in outcome["results"][0]["layers"]]
    # (loading may canonicalise the Mean + Reshape pair)
    assert ops[:4] == ["Conv2D", "DepthwiseConv2D", "Conv2D", "Mean"]
    assert ops[-1] == "FullyConnected"
    conv_macs = outcome["results"][0]["layers"][0]["macs"]
    assert conv_macs == 4 * 4 * 8 * 3 * 3 * 3


@pytest.mark.qemu
@needs_arm
def test_bench_json_has_the_documented_shape(tiny_model: Path):
    outcome = bench_model(str(tiny_model), "cortex-m7", kernel_sets=["portable", "cmsis-nn"],
                          cmsis_nn=STANDIN, echo=None)
    _check_shape(outcome, ["portable", "cmsis-nn"])
    json.dumps(outcome)  # plain JSON types only
    cmsis = outcome["results"][1]
    assert cmsis["fallback_layers"] == [layer["name"] for layer in cmsis["layers"]
                                        if layer["op"] in ("Mean", "Reshape")]
    lines = format_table(outcome)
    assert any(line.startswith("total instructions") for line in lines)


@pytest.mark.qemu
@needs_arm
def test_bench_cli_prints_one_json_object(tiny_model: Path, capsys):
    assert cli.main(["bench", str(tiny_model), "--target", "cortex-m7", "--json",
                     "--kernels", "portable"]) == cli.EXIT_OK
    _check_shape(json.loads(capsys.readouterr().out), ["portable"])


def test_bench_refuses_a_target_without_qemu(tiny_model: Path, capsys):
    assert cli.main(["bench", str(tiny_model), "--target", "host"]) == cli.EXIT_USER_ERROR
    assert "QEMU" in capsys.readouterr().err


def test_bench_refuses_an_unknown_kernel_set(tiny_model: Path, capsys):
    assert cli.main(["bench", str(tiny_model), "--kernels", "fastest"]) == cli.EXIT_USER_ERROR
    assert "fastest" in capsys.readouterr().err
