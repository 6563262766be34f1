"""Activation range choice beyond min/max: percentile, MSE and KL (entropy) candidates, picked
per tensor by the quantisation error each gives on the calibration values.

The ranges feed :func:`mbgen.quantize.quantizer.quantize` unchanged: a range only moves the
scale and zero point TFLite's converter arithmetic derives from it, so every graph stays within
the TFLite int8 spec.

* ``minmax``: the observed extremes (TFLite's converter).
* ``percentile``: the 0.01th..99.99th and 0.1th..99.9th percentiles.
* ``mse``: the range (a grid of shrunk min/max pairs) whose int8 round trip has the smallest
  mean squared error on the observed values.
* ``kl``: TensorRT's entropy calibration: the clip threshold whose 128- or 256-level
  distribution is closest (Kullback-Leibler) to the observed histogram.
* ``auto``: every candidate above, the one with the smallest round-trip MSE per tensor (min/max
  among them, so no tensor gets a worse error on the data it is picked by).

A softmax input is special: clipping its top (the winning logit) flattens the answer, whereas a
coarser step barely moves the probabilities. Few calibration photos under-estimate how large
the winning logit of a new photo gets, so its top is widened by the spread of the per-sample
maxima (``SOFTMAX_HEADROOM_SIGMAS`` standard deviations, at least ``SOFTMAX_HEADROOM_MIN``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from mbgen import ir
from mbgen.errors import UserError
from mbgen.float_interp import run_float
from mbgen.quantize.quantizer import (
    QMAX,
    QMIN,
    _calibrated_tensors,
    _check_float_graph,
    activation_quant,
)

METHODS = ("minmax", "percentile", "mse", "kl", "auto")
TOTAL_CAP = 1 << 17    # values kept per tensor over the whole set (a seeded subsample):
                       # bounded memory and search time whatever the model and set size
SOFTMAX_HEADROOM_SIGMAS = 3.0
SOFTMAX_HEADROOM_MIN = 0.25       # at least 25 % above the observed maximum
_SHRINK_GRID = np.linspace(0.3, 1.0, 15)
_KL_BINS = 2048
_SOFTMAX_LOW_GRID = np.linspace(0.0, 1.0, 21)    # softmax input: bottom = observed min * f

Range = tuple[float, float]


class TensorValues:
    """What calibration keeps of one tensor: exact extremes, per-sample maxima, a subsample."""

    def __init__(self, per_input: int = TOTAL_CAP) -> None:
        self.per_input = per_input
        self.minimum, self.maximum = np.inf, -np.inf
        self.sample_max: list[float] = []
        self.parts: list[np.ndarray] = []

    def update(self, values: np.ndarray, rng: np.random.Generator) -> None:
        flat = values.astype(np.float64).ravel()
        self.minimum = min(self.minimum, float(flat.min()))
        self.maximum = max(self.maximum, float(flat.max()))
        self.sample_max.append(float(flat.max()))
        if flat.size > self.per_input:
            flat = flat[rng.choice(flat.size, self.per_input, replace=False)]
        self.parts.append(flat.astype(np.float32))
        self._values: np.ndarray | None = None

    @property
    def values(self) -> np.ndarray:
        if self._values is None:
            self._values = np.concatenate(self.parts).astype(np.float64)
        return self._values


def observe(float_graph: ir.Graph, calib_inputs: Sequence[np.ndarray], seed: int = 0
            ) -> dict[str, TensorValues]:
    """Run the float graph on every calibration input; keep each calibrated tensor's values."""
    _check_float_graph(float_graph)
    if len(calib_inputs) == 0:
        raise UserError("calibration needs at least one input")
    names = _calibrated_tensors(float_graph)
    per_input = max(1, TOTAL_CAP // len(calib_inputs))
    observed = {name: TensorValues(per_input) for name in names}
    rng = np.random.default_rng(seed)
    input_name = float_graph.inputs[0]
    for sample in calib_inputs:
        values = run_float(float_graph, {input_name: np.asarray(sample, np.float32)},
                           keep_all=True)
        for name in names:
            observed[name].update(values[name], rng)
    return observed


def round_trip(values: np.ndarray, rng_: Range) -> np.ndarray:
    """``values`` quantised to int8 with the TFLite parameters of ``rng_`` and back."""
    quant = activation_quant(*rng_)
    scale, zp = quant.scalar_scale, quant.scalar_zero_point
    q = np.clip(np.floor(values / scale + 0.5) + zp, QMIN, QMAX)
    return scale * (q - zp)


def quantization_mse(values: np.ndarray, rng_: Range) -> float:
    return float(np.mean((round_trip(values, rng_) - values) ** 2))


def _percentile_ranges(values: np.ndarray) -> list[Range]:
    return [(float(np.percentile(values, 100 - p)), float(np.percentile(values, p)))
            for p in (99.99, 99.9)]


def mse_range(values: np.ndarray, full: Range) -> Range:
    """The shrunk (min, max) pair with the least round-trip MSE (min/max included)."""
    lo, hi = min(full[0], 0.0), max(full[1], 0.0)
    lows = [lo * f for f in _SHRINK_GRID] if lo < 0 else [lo]
    best, best_error = (lo, hi), quantization_mse(values, (lo, hi))
    for low in lows:
        for f in _SHRINK_GRID:
            error = quantization_mse(values, (low, hi * f))
            if error < best_error:
                best, best_error = (low, hi * f), error
    return best


def kl_range(values: np.ndarray, full: Range) -> Range:
    """TensorRT-style entropy calibration of the magnitude (one-sided for non-negative data)."""
    one_sided = full[0] >= 0
    magnitude = np.abs(values)
    top = float(magnitude.max(initial=0.0))
    if top <= 0:
        return full
    levels = 256 if one_sided else 128
    hist, edges = np.histogram(magnitude, bins=_KL_BINS, range=(0.0, top))
    hist = hist.astype(np.float64)
    best_bins, best_kl = _KL_BINS, np.inf
    for bins in range(levels, _KL_BINS + 1, 32):
        reference = hist[:bins].copy()
        reference[-1] += hist[bins:].sum()           # the clipped tail lands in the last bin
        starts = np.array([c[0] for c in np.array_split(np.arange(bins), levels)])
        used = hist[:bins] > 0
        mass = np.add.reduceat(hist[:bins], starts)
        count = np.add.reduceat(used.astype(np.float64), starts)
        sizes = np.diff(np.append(starts, bins))
        per_bin = np.repeat(np.divide(mass, count, out=np.zeros_like(mass), where=count > 0),
                            sizes)
        candidate = np.where(used, per_bin, 0.0)
        p, q = reference / reference.sum(), candidate / max(candidate.sum(), 1e-300)
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best_kl:
            best_bins, best_kl = bins, kl
    threshold = float(edges[best_bins])
    if one_sided:
        return (full[0], min(full[1], threshold))
    return (max(full[0], -threshold), min(full[1], threshold))


def candidates(observed: TensorValues, method: str) -> dict[str, Range]:
    values = observed.values
    full = (observed.minimum, observed.maximum)
    found: dict[str, Range] = {"minmax": full}
    if method in ("percentile", "auto"):
        p9999, p999 = _percentile_ranges(values)
        found.update({"percentile99.99": p9999, "percentile99.9": p999})
    if method in ("mse", "auto"):
        found["mse"] = mse_range(values, full)
    if method in ("kl", "auto"):
        found["kl"] = kl_range(values, full)
    return found


def pick(observed: TensorValues, method: str) -> tuple[str, Range]:
    """The candidate of ``method`` (for ``auto`` and ``percentile``, the one with the least
    round-trip MSE on the calibration values, min/max included)."""
    found = candidates(observed, method)
    if method in ("minmax", "mse", "kl"):
        return method, found[method]
    values = observed.values
    name = min(found, key=lambda k: quantization_mse(values, found[k]))
    return name, found[name]


def softmax_inputs(graph: ir.Graph) -> set[str]:
    """Tensors whose values reach a Softmax through same-quantisation ops (reshape, ...)."""
    from mbgen.quantize.quantizer import _SAME_AS_INPUT
    found = set()
    for node in graph.nodes:
        if isinstance(node.op, ir.Softmax):
            name = node.inputs[0]
            producer = graph.producer(name)
            while producer is not None and isinstance(producer.op, _SAME_AS_INPUT):
                name = producer.inputs[0]
                producer = graph.producer(name)
            found.add(name)
    return found


def _softmax_rows(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def with_headroom(observed: TensorValues, size: int, channels: int) -> Range:
    """A softmax input's range: the top raised for logits not seen yet; the bottom, which only
    decides how finely the top is resolved, chosen by the softmax output error it gives
    (sum |p_int8 - p_float| over the calibration inputs; values far below the winner add
    next to nothing to a softmax, so clipping them costs less than a coarser step)."""
    maxima = np.asarray(observed.sample_max)
    spread = SOFTMAX_HEADROOM_SIGMAS * float(maxima.std()) if maxima.size > 1 else 0.0
    top = observed.maximum + max(spread, SOFTMAX_HEADROOM_MIN * abs(observed.maximum))
    if observed.minimum >= 0 or any(part.size != size for part in observed.parts):
        return observed.minimum, top
    rows = np.concatenate(observed.parts).astype(np.float64).reshape(-1, channels)
    want = _softmax_rows(rows)

    def error(low: float) -> float:
        return float(np.abs(_softmax_rows(round_trip(rows, (low, top))) - want).sum(axis=1).mean())

    low = min((observed.minimum * f for f in _SOFTMAX_LOW_GRID), key=error)
    return low, top


def choose_ranges(float_graph: ir.Graph, calib_inputs: Sequence[np.ndarray], method: str,
                  input_range: Range | None = None,
                  echo: Callable[[str], None] | None = None
                  ) -> tuple[dict[str, Range], dict[str, str]]:
    """Per calibrated tensor: its range and the name of the candidate that gave it.

    ``input_range``: the graph input's known range (what black and white pixels map to), used
    instead of what the calibration photos happen to contain.
    """
    if method not in METHODS:
        raise UserError(f"unknown range method {method!r}; choose one of {', '.join(METHODS)}")
    observed = observe(float_graph, calib_inputs)
    logits = softmax_inputs(float_graph)
    ranges: dict[str, Range] = {}
    chosen: dict[str, str] = {}
    for name, values in observed.items():
        if name in float_graph.inputs and input_range is not None:
            ranges[name], chosen[name] = input_range, "input"
        elif name in logits and method != "minmax":
            tensor = float_graph.tensors[name]
            ranges[name] = with_headroom(values, tensor.size, int(tensor.shape[-1]))
            chosen[name] = "softmax-headroom"
        else:
            chosen[name], ranges[name] = pick(values, method)
    if echo is not None:
        counts: dict[str, int] = {}
        for how in chosen.values():
            counts[how] = counts.get(how, 0) + 1
        echo("ranges: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return ranges, chosen
