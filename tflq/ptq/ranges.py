"""Activation range estimators for post-training calibration, and putting their ranges
into a .tflite.

Estimators work on a histogram of one tensor's values over the representative data
(:class:`Histogram`, two streaming passes: min/max, then counts):

* ``minmax``: the observed range (what the plain TFLite converter uses);
* ``percentile``: the ``p``-th and (100 − ``p``)-th percentiles (default 99.99);
* ``mse``: the clipping range, from shrinking [min, max] by a factor on each side,
  whose 8-bit asymmetric quantization has the smallest expected squared error over the
  histogram (rounding inside the range, clipping outside);
* ``kl``: TensorRT's entropy calibration: the threshold whose 8-bit quantized distribution
  is closest in KL divergence to the observed one (on |x|; on x for non-negative tensors).

Every range contains 0 (TFLite's int8 spec needs a zero point inside the range). Model
inputs and outputs always keep their min/max range (:func:`calibrated_model`): clipping
them changes what the model sees or says, not just its resolution.

The ranges reach the .tflite through tflq's QAT graph (:func:`calibrated_model`): the
model is wrapped with :func:`tflq.quant.qat.quantize_model`, every activation quantizer's
min/max is set to the estimated range, and :func:`tflq.quant.qat.convert_qat` converts with
those ranges (FakeQuant ops the converter reads).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tflq.options import RANGE_ESTIMATORS

__all__ = ["ESTIMATORS", "Histogram", "quantization_mse", "estimate", "collect", "calibrated_model"]

ESTIMATORS = RANGE_ESTIMATORS
_LEVELS = 256  # int8


@dataclasses.dataclass
class Histogram:
    """Counts of one tensor's values in ``bins`` equal bins over [lo, hi]."""

    lo: float
    hi: float
    counts: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray, bins: int = 2048, lo: float | None = None,
           hi: float | None = None) -> Histogram:
        values = np.asarray(values, np.float64).ravel()
        lo = float(values.min()) if lo is None else lo
        hi = float(values.max()) if hi is None else hi
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        if hi == lo:
            hi = lo + 1e-8
        counts, _ = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi))
        return cls(lo, hi, counts.astype(np.float64))

    def add(self, values: np.ndarray) -> None:
        values = np.clip(np.asarray(values, np.float64).ravel(), self.lo, self.hi)
        counts, _ = np.histogram(values, bins=self.counts.size, range=(self.lo, self.hi))
        self.counts += counts

    @property
    def centers(self) -> np.ndarray:
        edges = np.linspace(self.lo, self.hi, self.counts.size + 1)
        return (edges[:-1] + edges[1:]) / 2

    @property
    def observed(self) -> tuple[float, float]:
        """The smallest and largest non-empty bin edges."""
        nonzero = np.nonzero(self.counts)[0]
        if nonzero.size == 0:
            return 0.0, 0.0
        width = (self.hi - self.lo) / self.counts.size
        return self.lo + nonzero[0] * width, self.lo + (nonzero[-1] + 1) * width


def quantization_mse(hist: Histogram, lo: float, hi: float, levels: int = _LEVELS) -> float:
    """Expected squared error of asymmetric ``levels``-step quantization of the histogram's
    values (bin centres, weighted by counts) with the range [lo, hi]."""
    x = hist.centers
    scale = (hi - lo) / (levels - 1)
    if scale <= 0:
        return float(np.sum(hist.counts * x ** 2) / max(hist.counts.sum(), 1))
    q = np.clip(np.round((x - lo) / scale), 0, levels - 1) * scale + lo
    return float(np.sum(hist.counts * (x - q) ** 2) / max(hist.counts.sum(), 1))


def _percentile(hist: Histogram, p: float) -> tuple[float, float]:
    cdf = np.cumsum(hist.counts) / max(hist.counts.sum(), 1)
    edges = np.linspace(hist.lo, hist.hi, hist.counts.size + 1)
    lo = edges[int(np.searchsorted(cdf, (100 - p) / 100, side="left"))]
    hi = edges[min(int(np.searchsorted(cdf, p / 100, side="left")) + 1, hist.counts.size)]
    return float(lo), float(hi)


def _mse(hist: Histogram, steps: int = 50) -> tuple[float, float]:
    """Grid search: each side of the observed range shrunk by a factor in (0, 1]."""
    lo, hi = hist.observed
    factors = np.linspace(1.0 / steps, 1.0, steps)
    lows = lo * factors if lo < 0 else [lo]
    highs = hi * factors if hi > 0 else [hi]
    best, best_range = None, (lo, hi)
    for a in lows:
        for b in highs:
            error = quantization_mse(hist, min(a, 0.0), max(b, 0.0))
            if best is None or error < best:
                best, best_range = error, (a, b)
    return float(best_range[0]), float(best_range[1])


def _kl_threshold(counts: np.ndarray, edges_hi: float, levels: int) -> float:
    """TensorRT entropy calibration on a histogram of non-negative values over [0, edges_hi]."""
    bins = counts.size
    best, best_i = None, bins
    for i in range(levels, bins + 1):
        reference = counts[:i].copy()
        reference[i - 1] += counts[i:].sum()  # outliers clipped into the last bin
        # quantize the first i bins into `levels` groups, expand back over non-empty bins
        groups = np.array_split(np.arange(i), levels)
        expanded = np.zeros(i)
        for g in groups:
            chunk = counts[g]
            nonzero = chunk > 0
            if nonzero.any():
                expanded[g[nonzero]] = chunk.sum() / nonzero.sum()
        p = reference / reference.sum() if reference.sum() else reference
        q = expanded / expanded.sum() if expanded.sum() else expanded
        mask = p > 0
        if not mask.any():
            continue
        q_safe = np.where(q[mask] > 0, q[mask], 1e-12)
        divergence = float(np.sum(p[mask] * np.log(p[mask] / q_safe)))
        if best is None or divergence < best:
            best, best_i = divergence, i
    return edges_hi * best_i / bins


def _kl(hist: Histogram) -> tuple[float, float]:
    lo, hi = hist.observed
    if lo >= 0:  # non-negative (ReLU outputs): all 256 levels on [0, T]
        start = int(round(-hist.lo / (hist.hi - hist.lo) * hist.counts.size))
        counts = hist.counts[start:].copy()
        counts[0] = 0.0  # exact zeros (ReLU) are represented exactly; their spike would
        # otherwise dominate the divergence and clip the range far too tightly
        return 0.0, _kl_threshold(counts, hist.hi, min(_LEVELS, counts.size))
    # signed: a symmetric threshold on |x| with 128 levels per side
    centers = hist.centers
    magnitude = max(-hist.lo, hist.hi)
    folded, _ = np.histogram(np.abs(centers), bins=hist.counts.size // 2, range=(0, magnitude),
                             weights=hist.counts)
    folded[0] = 0.0
    threshold = _kl_threshold(folded, magnitude, min(_LEVELS // 2, folded.size))
    return max(lo, -threshold), min(hi, threshold)


def estimate(hist: Histogram, estimator: str, percentile: float = 99.99) -> tuple[float, float]:
    """The (min, max) range an estimator picks for one tensor; always contains 0."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"Unknown range estimator {estimator!r}. Available: {list(ESTIMATORS)}")
    if not 50.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (50, 100]. Received: {percentile}")
    if estimator == "minmax":
        lo, hi = hist.observed
    elif estimator == "percentile":
        lo, hi = _percentile(hist, percentile)
    elif estimator == "mse":
        lo, hi = _mse(hist)
    else:
        lo, hi = _kl(hist)
    return min(float(lo), 0.0), max(float(hi), 0.0)


# ---------------------------------------------------------------------------------------
# ranges into the QAT graph, and from there into the .tflite
# ---------------------------------------------------------------------------------------

_PRE_QUANT = frozenset({"sigmoid", "softmax", "tanh", "gelu"})


def _targets(qat_model) -> list[tuple]:
    """(min variable, max variable, float tensor name) for every activation quantizer of a
    tflq QAT model; the name is a layer of the collection graph (or ``input:<name>``)."""
    targets = []
    for layer in qat_model.layers:
        variables = {w.name.split("/")[-1].split(":")[0]: w for w in layer.weights}
        kind = type(layer).__name__
        if kind in ("InputQuantize", "QuantizeLayer"):
            source = layer._inbound_nodes[0].inbound_layers
            targets.append((variables[f"{layer.name}_min"], variables[f"{layer.name}_max"],
                            f"input:{source.name}"))
            continue
        inner = getattr(layer, "layer", None)
        if inner is None:
            continue
        for prefix, tensor in (("output", inner.name), ("pre_activation", inner.name),
                               ("post_activation", f"{inner.name}_activation?")):
            if f"{prefix}_min" in variables:
                targets.append((variables[f"{prefix}_min"], variables[f"{prefix}_max"], tensor))
    return targets


def collect(model, batches, names: list[str], bins: int = 2048) -> dict[str, Histogram]:
    """Histograms of the named tensors of a float model over ``batches`` (a callable
    returning an iterator of input dicts or arrays), in two passes (range, then counts)."""
    from tflq.models import tf_keras

    outputs = {}
    for name in names:
        if name.startswith("input:"):
            continue
        outputs[name] = model.get_layer(name).output
    probe = tf_keras.Model(model.inputs, list(outputs.values())) if outputs else None
    input_names = [layer.name for layer in model._input_layers]

    def values(batch):
        result = {}
        feed = batch if isinstance(batch, dict) else {input_names[0]: batch}
        if probe is not None:
            got = probe(feed if len(input_names) > 1 else feed[input_names[0]], training=False)
            got = got if isinstance(got, list) else [got]
            result.update({n: np.asarray(v) for n, v in zip(outputs, got, strict=True)})
        for name in names:
            if name.startswith("input:"):
                result[name] = np.asarray(feed[name[len("input:"):]])
        return result

    lows, highs = {}, {}
    for batch in batches():
        for name, v in values(batch).items():
            lows[name] = min(lows.get(name, 0.0), float(v.min()))
            highs[name] = max(highs.get(name, 0.0), float(v.max()))
    hists = {name: Histogram(lows[name], highs[name] if highs[name] > lows[name]
                             else lows[name] + 1e-8, np.zeros(bins)) for name in lows}
    for batch in batches():
        for name, v in values(batch).items():
            hists[name].add(v)
    return hists


def calibrated_model(model, batches, estimator: str, percentile: float = 99.99,
                     bins: int = 2048, scheme: str = "default_int8", record: dict | None = None):
    """A tflq QAT model of ``model`` whose activation ranges are the estimator's, ready for
    :func:`tflq.quant.qat.convert_qat`. Returns (QAT model, {tensor: (min, max)}).

    One training-mode pass on the first batch sets the weight ranges (and provisional
    activation ranges); every activation quantizer is then set to its estimated range.

    Args:
      record: when given, receives what was done: ``estimator``, ``quantizers`` (activation
        quantizers set), ``estimated`` (tensors given the estimator's range), ``narrowed``
        (of those, how many differ from min/max), ``kept_minmax`` ({tensor: reason}: model
        inputs and outputs keep min/max) and ``prepare`` (the float rewrites applied).
    """
    from tflq.quant import graph, qat

    if estimator not in ESTIMATORS:
        raise ValueError(f"Unknown range estimator {estimator!r}. Available: {list(ESTIMATORS)}")
    prepared = []
    q = qat.quantize_model(model, scheme, notes=prepared)
    first = next(iter(batches()))
    q(first, training=True)
    # The collection graph: the graph QAT wrapped, with pre-quantized activations split off
    # so the tensors they quantize are layer outputs.
    float_graph = graph.rebuild(graph.prepare(model), split_also=_PRE_QUANT)
    layer_names = {layer.name for layer in float_graph.layers}
    targets = []
    for low, high, tensor in _targets(q):
        if tensor.endswith("?"):  # post-activation: the split-off activation, if any
            base = tensor[:-len("_activation?")]
            tensor = f"{base}_activation" if f"{base}_activation" in layer_names else base
        targets.append((low, high, tensor))
    hists = collect(float_graph, batches, sorted({t for _, _, t in targets}), bins)
    # Model inputs and outputs keep their full observed range: clipping the input or the
    # logits changes what the model sees or says, not just its resolution.
    edges = {n for n in hists if n.startswith("input:")} | set(float_graph.output_names)
    ranges = {name: estimate(h, "minmax" if name in edges else estimator, percentile)
              for name, h in hists.items()}
    for low, high, tensor in targets:
        lo, hi = ranges[tensor]
        low.assign(np.full(low.shape, lo, np.float32))
        high.assign(np.full(high.shape, hi, np.float32))
    if record is not None:
        minmax = {name: estimate(h, "minmax") for name, h in hists.items() if name not in edges}
        record.update({
            "estimator": estimator, "quantizers": len(targets),
            "estimated": len(minmax),
            "narrowed": sum(not np.allclose(ranges[n], r, rtol=1e-6, atol=0) for n, r in minmax.items()),
            "kept_minmax": {n: ("model input" if n.startswith("input:") else "model output")
                            + ": clipping it changes what the model sees or says"
                            for n in sorted(edges & set(hists))},
            "prepare": prepared})
    return q, ranges
