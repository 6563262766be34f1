"""Issue 13's bars on the trained float MobileNet V1 0.25/128 (benchmarks/ACCURACY.md has the
whole table): calibrated as `compile --calib` does by default on 5 photos, the float top-1
stays the unique int8 top-1 on >= 90 % of 13 unseen photos with mean |delta p| <= 0.065, and the
reverse; calibrated on 13 of the 18, mean |delta p| <= 0.05 on the other 5 (rotating).

The margins are thin: with other augmentation seeds the 13 -> 5 direction gives 5/5, 3/5, 5/5
(ACCURACY.md), and the default (MSE + bias correction) was chosen on these same photos, so these
figures are a best case for this data, not a held-out estimate of the choice."""

from __future__ import annotations

import numpy as np
import pytest

from mbgen import passes
from mbgen.compiler import load_graph, resolve_model
from mbgen.fidelity import agreement
from mbgen.float_interp import run_float
from mbgen.images import IMAGE_SUFFIXES, load_image
from mbgen.passes.strip_float_io import strip_float_io
from mbgen.preprocessing import interface_of
from mbgen.quantize.augment import augment, copies_for
from mbgen.quantize.ptq import PtqSettings, quantize_float
from mbgen.reference import run_int8


def _photos(folder):
    return [load_image(p, (1, 128, 128, 3)) for p in sorted(folder.iterdir())
            if p.suffix.lower() in IMAGE_SUFFIXES]


def _fidelity(graph, calib, test):
    data = augment(calib, copies_for(len(calib)), seed=0, low=-1.0, high=1.0)
    int8 = quantize_float(graph, data, PtqSettings("mse", bias_correction=True),
                          input_range=(-1.0, 1.0)).graph
    q_in, q_out = interface_of(int8, int8.inputs[0]), interface_of(int8, int8.outputs[0])
    floats = [run_float(graph, x)[graph.outputs[0]] for x in test]
    int8s = [q_out.dequantize(run_int8(int8, {int8.inputs[0]: q_in.quantize(x)})[int8.outputs[0]])
             for x in test]
    return agreement(floats, int8s, probabilities=True)


@pytest.mark.slow
def test_accuracy_bars_of_issue_13(shared_dir):
    model = shared_dir / "models" / "mobilenet_v1_0.25_128.tflite"
    if not (shared_dir / "calib").is_dir() or not model.exists():
        pytest.skip("needs ../shared/calib and the float MobileNet")
    graph = passes.optimize(strip_float_io(load_graph(resolve_model(str(model)))))
    a, b = _photos(shared_dir / "images"), _photos(shared_dir / "calib")
    for calib, test in ((a, b), (b, a)):
        result = _fidelity(graph, calib, test)
        assert result["unique_top1"] >= 0.9 * result["inputs"], result
        assert result["mean_abs_delta_top1_prob"] <= 0.065, result
    every = a + b
    deltas = []
    for start in range(0, len(every), 5):
        held = {(start + i) % len(every) for i in range(5)}
        result = _fidelity(graph, [x for i, x in enumerate(every) if i not in held],
                           [every[i] for i in sorted(held)])
        deltas.append(result["mean_abs_delta_top1_prob"])
    assert np.mean(deltas) <= 0.05, deltas
