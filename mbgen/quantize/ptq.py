"""Post-training quantisation with the optional methods, in the order they compose:

1. cross-layer equalisation (float function unchanged: mbgen.quantize.equalize),
2. AdaRound weight rounding (mbgen.quantize.adaround, behind a flag: it costs minutes),
3. bias correction for the weight rounding actually used (mbgen.quantize.bias_correction),
4. activation ranges by the chosen method (mbgen.quantize.ranges),
5. TFLite's converter arithmetic (mbgen.quantize.quantizer.quantize), unchanged.

Steps 1-3 rewrite float constants only and step 4 only moves ranges, so the int8 graph is an
ordinary TFLite int8 graph whatever is switched on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from mbgen import ir
from mbgen.quantize.quantizer import quantize
from mbgen.quantize.ranges import Range, choose_ranges


@dataclass(frozen=True)
class PtqSettings:
    range_method: str = "minmax"
    bias_correction: bool = False
    cle: bool = False
    adaround: bool = False
    adaround_seconds: float = 120.0   # the whole AdaRound budget, split over the layers

    def describe(self) -> str:
        parts = [f"ranges {self.range_method}"]
        parts += [name for name, on in (("cross-layer equalisation", self.cle),
                                         ("AdaRound", self.adaround),
                                         ("bias correction", self.bias_correction)) if on]
        return ", ".join(parts)


@dataclass(frozen=True)
class PtqResult:
    graph: ir.Graph                 # int8
    equivalent_float: ir.Graph      # the float graph after equalisation (same function)
    notes: dict = field(default_factory=dict)


def quantize_float(float_graph: ir.Graph, calib_inputs: Sequence[np.ndarray],
                   settings: PtqSettings = PtqSettings(), input_range: Range | None = None,
                   echo: Callable[[str], None] | None = None) -> PtqResult:
    notes: dict = {"methods": settings.describe(), "calibration_inputs": len(calib_inputs)}
    graph = float_graph
    if settings.cle:
        from mbgen.quantize.equalize import equalize
        graph, pairs = equalize(graph)
        notes["equalised_pairs"] = pairs
    equivalent = graph
    if settings.adaround:
        from mbgen.quantize.adaround import adaround
        graph, layers = adaround(graph, calib_inputs, settings.adaround_seconds)
        notes["adarounded_layers"] = layers
    if settings.bias_correction:
        from mbgen.quantize.bias_correction import correct_biases
        graph = correct_biases(graph, calib_inputs, original=equivalent)
    plain = (settings.range_method == "minmax" and input_range is None)
    if plain:
        int8 = quantize(graph, calib_inputs)
    else:
        ranges, chosen = choose_ranges(graph, calib_inputs, settings.range_method, input_range)
        counts: dict[str, int] = {}
        for how in chosen.values():
            counts[how] = counts.get(how, 0) + 1
        notes["range_choices"] = dict(sorted(counts.items()))
        int8 = quantize(graph, calib_inputs, ranges=ranges, method=settings.describe())
    if echo is not None:
        echo(f"quantised: {settings.describe()}")
    return PtqResult(int8, equivalent, notes)
