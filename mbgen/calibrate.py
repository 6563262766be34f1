"""Compile's calibration step: gather the calibration set, warn when it cannot represent a
trained model's inputs, hold part of it back, quantise, and measure the int8 graph's fidelity
on what was held back (report.json's "fidelity", the compile summary).

* No ``--calib``: the deterministic synthetic set (mbgen.quantize.calibration). A model with
  trained weights (a file, or a zoo model given ``--weights``) is warned about: its real inputs
  look nothing like that set, and the int8 model's answers can be far off.
* ``--calib`` with fewer than ``SMALL_SET`` inputs: a warning, and (unless ``--augment 0``)
  seeded augmented copies (mbgen.quantize.augment) so the set covers more of the range.
* Held back: ``--holdout`` (a fraction, default 0.2) of the real inputs when there are at least
  ``MIN_FOR_HOLDOUT``, never augmented or calibrated on; with the synthetic set,
  ``SYNTHETIC_HELD_OUT`` extra synthetic inputs of another seed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mbgen import ir
from mbgen.errors import UserError
from mbgen.quantize.augment import SMALL_SET, augment, copies_for
from mbgen.quantize.ptq import PtqSettings, quantize_float

MIN_FOR_HOLDOUT = 5
SYNTHETIC_HELD_OUT = 2
DEFAULT_WITH_PHOTOS = "mse"   # range method with real calibration data (benchmarks/ACCURACY.md)


def warn(message: str) -> None:
    print(f"mbgen: warning: {message}", file=sys.stderr)


@dataclass(frozen=True)
class Quantized:
    graph: ir.Graph
    fidelity: dict


def settings_for(options, real_data: bool) -> PtqSettings:
    """The options' methods; with real photos and no choice made, MSE ranges and bias
    correction (the best measured on the shared photos, benchmarks/ACCURACY.md)."""
    method = getattr(options, "range_method", None)
    correction = getattr(options, "bias_correction", None)
    cle, adaround = bool(getattr(options, "cle", False)), bool(getattr(options, "adaround", False))
    if getattr(options, "calib_percentile", None) is not None:
        # The converter's plain path with one clipping percentile for every tensor.
        if method is not None or correction or cle or adaround:
            raise UserError("--calib-percentile clips every range at one percentile with "
                            "nothing else; for the methods use --range-method percentile")
        return PtqSettings("minmax")
    return PtqSettings(
        range_method=method or (DEFAULT_WITH_PHOTOS if real_data else "minmax"),
        bias_correction=bool(correction) if correction is not None else real_data,
        cle=cle, adaround=adaround)


def _split(samples: list[np.ndarray], fraction: float) -> tuple[list, list]:
    """Every k-th input held back (k = round(1 / fraction)), the first one kept."""
    if fraction <= 0 or len(samples) < MIN_FOR_HOLDOUT:
        return samples, []
    step = max(2, round(1 / fraction))
    held = [s for i, s in enumerate(samples) if i % step == step - 1]
    kept = [s for i, s in enumerate(samples) if i % step != step - 1]
    return kept, held


def _quantize(float_graph: ir.Graph, calib: list, settings: PtqSettings, options,
              input_range) -> tuple[ir.Graph, ir.Graph, dict]:
    """(int8 graph, the float graph with its function to compare layers with, notes)."""
    if settings.range_method == "minmax" and not (settings.cle or settings.adaround
                                                  or settings.bias_correction):
        from mbgen.quantize.quantizer import quantize
        percentile = options.calib_percentile
        graph = quantize(float_graph, calib, percentile=percentile)
        return graph, float_graph, {"methods": f"percentile {percentile:g}" if percentile
                                    else "ranges minmax"}
    result = quantize_float(float_graph, calib, settings, input_range)
    return result.graph, result.equivalent_float, dict(result.notes)


def quantize_model(float_graph: ir.Graph, options, preprocessing, trained: bool,
                   echo: Callable[[str], None] = warn) -> Quantized:
    """The int8 graph of an optimised float graph, and its fidelity record.

    With real inputs held back, the fidelity is that of a model calibrated without them; the
    model compiled is then calibrated on every input (a few photos are too few to lose one).
    """
    from mbgen.fidelity import measure
    from mbgen.quantize import calibration

    shape = tuple(float_graph.tensors[float_graph.inputs[0]].shape)
    sources = list(getattr(options, "calib_sources", ()) or ())
    if options.calib_dir is not None:
        sources.insert(0, str(options.calib_dir))
    fidelity: dict = {}
    input_range = None
    refit: list | None = None      # the whole real set, to calibrate the compiled model on
    if sources:
        mode = "minus1_1" if preprocessing.is_default_float else preprocessing.float_input
        samples = calibration.load_calibration(sources, shape, mode)
        kept, held = _split(samples, getattr(options, "holdout", 0.2))
        low = high = None
        if preprocessing.kind in ("range", "mean_std"):
            # What black and white pixels map to: the input's true range and the bounds
            # augmentation keeps to.
            channels = shape[-1]
            low = preprocessing.float_input(np.zeros((1, 1, 1, channels), np.uint8))[0, 0, 0]
            high = preprocessing.float_input(np.full((1, 1, 1, channels), 255, np.uint8))[0, 0, 0]
            input_range = (float(low.min()), float(high.max()))
        asked = getattr(options, "augment", None)

        def augmented(subset: list) -> list:
            copies = copies_for(len(subset)) if asked is None else asked
            return augment(subset, copies, seed=0, low=low, high=high)

        if len(samples) < SMALL_SET:
            copies = copies_for(len(samples)) if asked is None else asked
            echo(f"only {len(samples)} calibration inputs (fewer than {SMALL_SET}): "
                 + (f"adding {copies} augmented copies of each (crops, flips, brightness)"
                    if copies else "ranges may not cover new inputs")
                 + "; more photos of what the model will see calibrate better")
        calib = augmented(kept)
        if held:
            refit = augmented(samples)
        fidelity["held_out"] = "calibration inputs"
        real = True
    else:
        if trained:
            echo("this model has trained weights but is calibrated on the synthetic set: its "
                 "answers on real inputs can be far off; give --calib with photos like the "
                 "ones it will see")
        count = options.calib_count
        synthetic = calibration.synthetic_inputs(shape, count=count + SYNTHETIC_HELD_OUT, seed=0)
        calib = [preprocessing.from_unit(x) for x in synthetic[:count]]
        held = [preprocessing.from_unit(x) for x in synthetic[count:]]
        fidelity["held_out"] = "synthetic inputs"
        real = False
    settings = settings_for(options, real)
    graph, equivalent, notes = _quantize(float_graph, calib, settings, options,
                                         input_range if real else None)
    fidelity.update(notes)
    if held:
        fidelity.update(measure(float_graph, graph, held, equivalent))
    if refit is not None:
        graph, _, notes = _quantize(float_graph, refit, settings, options, input_range)
        fidelity["measured_on"] = (f"a model calibrated on the other {len(calib)} (augmented) "
                                   f"inputs; the compiled model is calibrated on all "
                                   f"{len(refit)}")
        fidelity.update({k: v for k, v in notes.items() if k != "calibration_inputs"})
    fidelity["calibration_inputs"] = len(refit if refit is not None else calib)
    return Quantized(graph, fidelity)
