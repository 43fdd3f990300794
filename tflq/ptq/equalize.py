"""Cross-layer equalization and bias correction (Nagel et al. 2019, "Data-Free Quantization
Through Weight Equalization and Bias Correction").

**Equalization.** For two weight layers joined by a ReLU (or nothing), output channel i
of the first and input channel i of the second can be rescaled by s_i without changing the
function, since relu(x / s) = relu(x) / s for s > 0:

    W1[..., i] /= s_i,  b1[i] /= s_i,  W2[..., i, :] *= s_i,
    s_i = sqrt(r1_i / r2_i)   (r1_i, r2_i: the channel's max |w| in each layer)

which makes both channel ranges sqrt(r1_i · r2_i): per-tensor int8 scales then fit every
channel. Pairs are Conv2D/DepthwiseConv2D → Conv2D/DepthwiseConv2D on the prepared graph
(:func:`tflq.quant.graph.prepare`: nested backbones inlined, BatchNorm folded), with ReLU
fused or as a layer (folded BatchNorms, now linear Activations, and zero padding may sit
between), so a MobileNetV2 block gives expand → depthwise (strided blocks too, through
their ZeroPadding2D) and depthwise → project pairs. ReLU6 clips at
6, which rescaling would move (s · min(relu(x / s), 6) = min(relu(x), 6 s)). ``relu6``:

* ``"bounded"`` (default): ReLU6 stays, and each channel's scale is bounded so that no
  calibration activation changes whether it is clipped: a channel that ReLU6 clips on the
  calibration data keeps s = 1; any other may shrink freely (s ≥ 1 moves its clip above
  every value it saw) and grow only as far as :data:`RELU6_HEADROOM` × its calibration
  maximum stays at or below the moved clip 6 s. The float model is then unchanged on the
  calibration data (:func:`float_change` measures it anyway).
* ``"relu"``: ReLU6 layers are replaced by ReLU first, as Nagel et al. do for MobileNetV2;
  every channel can be scaled, but the function changes where activations exceed 6.
* ``"keep"``: pairs through ReLU6 are left alone.

A channel whose consumer's input weights are all (nearly) zero (below
:data:`DEAD_CHANNEL_FRACTION` of that layer's largest: folded BatchNorms with gamma ≈ 0 leave
such channels in pretrained MobileNets) contributes nothing downstream, whatever its value;
its weights in the first layer are set to zero (its bias stays), since left as they are,
they (up to 57 where the live channels reach 1, in nsfwjs' first depthwise) would set a
per-tensor int8 scale that rounds the live channels to two or three levels.

Every weight layer that is not paired is listed with the reason.

**Bias correction** (empirical variant): quantizing weights shifts each output channel's
mean by E[conv(x, Q(W) − W)]; with calibration data that expectation is measured layer by
layer and subtracted from the bias.
"""

from __future__ import annotations

import numpy as np

from tflq.options import EQUALIZE_RELU6

__all__ = ["DEAD_CHANNEL_FRACTION", "RELU6_MODES", "RELU6_HEADROOM", "find_pairs", "equalize",
           "float_change", "quantize_weights", "bias_correct"]

_WEIGHT = {"Conv2D", "DepthwiseConv2D"}
DEAD_CHANNEL_FRACTION = 1e-6  # channel range below this share of the layer's largest: not scaled
RELU6_MODES = EQUALIZE_RELU6
# "bounded": a ReLU6 channel may grow (s < 1) only while its calibration maximum times this
# stays at or below the moved clip 6 s.
RELU6_HEADROOM = 1.25


def _act(layer) -> str:
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", "linear") if activation is not None else "linear"


def _consumers(layer):
    return [node.outbound_layer for node in layer._outbound_nodes]


def _relu_kind(layer) -> str | None:
    """``relu``/``relu6``/``linear`` for a layer a per-channel scale passes through (ReLU,
    ReLU6, a linear Activation, zero padding: pad(x / s) = pad(x) / s), else None."""
    kind = type(layer).__name__
    if kind == "ZeroPadding2D":
        return "linear"
    if kind == "ReLU":
        cfg = layer.get_config()
        if cfg.get("negative_slope", 0) or cfg.get("threshold", 0):
            return None
        return "relu6" if cfg.get("max_value") == 6 else ("relu" if cfg.get("max_value") is None
                                                            else None)
    if kind == "Activation" and _act(layer) in ("relu", "relu6", "linear"):
        return _act(layer)
    return None


def find_pairs(model, relu6: bool = False) -> tuple[list[tuple[str, str]], list[dict]]:
    """(first, second) layer names that can be equalized (see module docstring), and the
    weight layers that cannot, each ``{"layer", "reason"}``."""
    pairs, skipped = [], []
    for layer in model.layers:
        if type(layer).__name__ not in _WEIGHT:
            continue
        if _act(layer) not in ("linear", "relu") + (("relu6",) if relu6 else ()):
            skipped.append({"layer": layer.name, "reason": f"fused {_act(layer)} activation"})
            continue
        current, reason = layer, None
        while reason is None:
            consumers = _consumers(current)
            if len(consumers) != 1:
                reason = (f"{current.name} feeds {len(consumers)} layers" if consumers
                          else "model output")
                break
            nxt = consumers[0]
            kind = _relu_kind(nxt)
            if type(nxt).__name__ in _WEIGHT:
                if type(nxt).__name__ == "DepthwiseConv2D" and nxt.depth_multiplier != 1:
                    reason = f"{nxt.name} has channel multiplier {nxt.depth_multiplier}"
                    break
                pairs.append((layer.name, nxt.name))
                break
            if kind is None:
                reason = f"{type(nxt).__name__} {nxt.name} between"
            elif kind == "relu6" and not relu6:
                reason = f"ReLU6 {nxt.name} between (kept: --equalize_relu6 keep)"
            current = nxt
        if reason is not None:
            skipped.append({"layer": layer.name, "reason": reason})
    return pairs, skipped


def _spread(ranges: np.ndarray) -> float:
    """Largest over smallest live channel range (dead ones, below
    :data:`DEAD_CHANNEL_FRACTION` of the largest, excluded): what one per-tensor scale must span."""
    live = ranges[ranges > DEAD_CHANNEL_FRACTION * ranges.max()] if ranges.size else ranges
    return float(live.max() / live.min()) if live.size else 1.0


def _per_output(kernel: np.ndarray, kind: str) -> np.ndarray:
    """``kernel`` with output channels on the last axis: a depthwise kernel (h, w, c, m)
    becomes (h, w, c·m), TFLite's channel order; any other kernel is returned as it is."""
    if kind == "DepthwiseConv2D":
        h, w, c, m = kernel.shape
        return kernel.reshape(h, w, c * m)
    return kernel


def _out_ranges(layer) -> np.ndarray:
    flat = _per_output(layer.get_weights()[0], type(layer).__name__)
    return np.abs(flat).max(axis=tuple(range(flat.ndim - 1)))


def _in_ranges(layer) -> np.ndarray:
    kernel = layer.get_weights()[0]
    if type(layer).__name__ == "DepthwiseConv2D":
        return np.abs(kernel).max(axis=(0, 1, 3))
    return np.abs(kernel).max(axis=(0, 1, 3))


def _live(first, second) -> np.ndarray:
    """Channels equalization may scale: both ranges above :data:`DEAD_CHANNEL_FRACTION` of
    their layer's largest. A (nearly) dead channel, e.g. a BatchNorm gamma of 1e-30 folded
    in, would get a scale of ~1e-15: its bias, divided by it, would then dominate the
    layer's activation range (and give the runtime absurd quantization parameters)."""
    r1, r2 = _out_ranges(first), _in_ranges(second)
    return (r1 > DEAD_CHANNEL_FRACTION * r1.max()) & (r2 > DEAD_CHANNEL_FRACTION * r2.max())


def _zero_ignored(first, second) -> int:
    """Zeroes ``first``'s kernel in the output channels ``second`` ignores (input range at or
    below :data:`DEAD_CHANNEL_FRACTION` of its largest); returns how many."""
    r2 = _in_ranges(second)
    ignored = r2 <= DEAD_CHANNEL_FRACTION * r2.max()
    if r2.max() <= 0 or not ignored.any():
        return 0
    weights = first.get_weights()
    kernel = weights[0]
    flat = _per_output(kernel, type(first).__name__).copy()
    flat[..., ignored] = 0.0
    first.set_weights([flat.reshape(kernel.shape), *weights[1:]])
    return int(ignored.sum())


def _scale_out(layer, s):
    weights = layer.get_weights()
    kernel = weights[0]
    kernel = (_per_output(kernel, type(layer).__name__) / s).reshape(kernel.shape)
    rest = [weights[1] / s] if len(weights) > 1 else []
    layer.set_weights([kernel, *rest])


def _scale_in(layer, s):
    weights = layer.get_weights()
    kernel = weights[0] * s.reshape(1, 1, -1, 1)
    layer.set_weights([kernel, *weights[1:]])


def equalize(model, iterations: int = 20, relu6: str = "bounded", samples: list | None = None,
             batches=None):
    """A prepared copy of ``model`` (nested models inlined, BatchNorm folded:
    :func:`tflq.quant.graph.prepare`) with every equalizable pair equalized.

    Args:
      model: a tf_keras Functional or Sequential model.
      iterations: rounds of equalization over all pairs.
      relu6: how pairs through ReLU6 are treated, one of :data:`RELU6_MODES` (see the
        module docstring).
      samples: inputs the prepared graph is checked on (:func:`tflq.quant.graph.prepare`).
      batches: callable returning an iterator of calibration batches; ``relu6="bounded"``
        reads each ReLU6 channel's largest activation from them.

    Returns:
      ``(model, record)``; ``record`` holds ``pairs`` (each with the first layer's channel
      range spread before and after, how many channels its consumer ignores were zeroed
      (``ignored_channels_zeroed``), and under ``"bounded"`` how many channels kept s = 1
      because ReLU6 clips them: ``relu6_held_channels``), ``skipped`` weight
      layers with the reason, ``relu6`` (the mode), ``relu6_replaced`` (how many ReLU6
      became ReLU) and ``relu6_bounded_pairs`` (pairs through a kept ReLU6).

    Raises:
      ValueError: an unknown ``relu6`` mode, or ``"bounded"`` with pairs through ReLU6 and
        no ``batches``.
    """
    from tflq.models import tf_keras
    from tflq.quant import graph

    if relu6 not in RELU6_MODES:
        raise ValueError(f"relu6 must be one of {list(RELU6_MODES)}. Received: {relu6!r}")
    prepared = graph.prepare(model, samples)
    if prepared is model:
        prepared = tf_keras.models.clone_model(model)
        prepared.set_weights(model.get_weights())
    replaced = 0
    if relu6 == "relu":
        prepared, replaced = _relu6_to_relu(prepared)
    pairs, skipped = find_pairs(prepared, relu6=relu6 == "bounded")
    bounds = _relu6_bounds(prepared, pairs, batches) if relu6 == "bounded" else {}
    before = {first: _spread(_out_ranges(prepared.get_layer(first))) for first, _ in pairs}
    ignored = {first: _zero_ignored(prepared.get_layer(first), prepared.get_layer(second))
               for first, second in pairs}
    total = {first: np.ones_like(_out_ranges(prepared.get_layer(first))) for first, _ in pairs}
    for _ in range(iterations):
        for first, second in pairs:
            a, b = prepared.get_layer(first), prepared.get_layer(second)
            r1, r2 = _out_ranges(a), _in_ranges(b)
            ok = _live(a, b)
            target = total[first].copy()
            target[ok] *= np.sqrt(r1[ok] / r2[ok])
            if first in bounds:  # s = 1 where ReLU6 clips; elsewhere s >= the lower bound
                held, lower = bounds[first]
                target = np.where(held, 1.0, np.maximum(target, lower))
            s = target / total[first]
            total[first] = target
            _scale_out(a, s)
            _scale_in(b, s)
    dead = {first: int(np.sum(~_live(prepared.get_layer(first), prepared.get_layer(second))))
            for first, second in pairs}
    record = {
        "pairs": [{"first": first, "second": second, "spread_before": before[first],
                   "dead_channels_left": dead[first], "ignored_channels_zeroed": ignored[first],
                   "relu6_held_channels": int(bounds[first][0].sum()) if first in bounds else 0,
                   "spread_after": _spread(_out_ranges(prepared.get_layer(first)))}
                  for first, second in pairs],
        "skipped": skipped, "relu6": relu6, "relu6_replaced": replaced,
        "relu6_bounded_pairs": len(bounds)}
    return prepared, record


def _relu6_bounds(model, pairs, batches) -> dict:
    """``{first: (held, lower)}`` for each pair through a ReLU6: per channel of ``first``,
    ``held`` where ReLU6 clips it on the calibration batches (it reaches 6: s stays 1), else
    the smallest total scale ``lower`` (≤ 1) that keeps RELU6_HEADROOM × its maximum at or
    below the moved clip 6 s."""
    from tflq.models import tf_keras

    through = [first for first, _ in pairs if _through_relu6(model.get_layer(first))]
    if not through:
        return {}
    if batches is None:
        raise ValueError(f"relu6='bounded' needs calibration batches: {len(through)} pair(s) "
                         f"pass through ReLU6, and their activations bound the scales")
    probe = tf_keras.Model(model.inputs, [model.get_layer(n).output for n in through])
    top = {n: None for n in through}
    for batch in batches():
        outs = probe(batch, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for name, out in zip(through, outs, strict=True):
            out = np.asarray(out)
            m = out.reshape(-1, out.shape[-1]).max(axis=0)
            top[name] = m if top[name] is None else np.maximum(top[name], m)
    bounds = {}
    for name, m in top.items():
        clipped = m >= 6.0 * (1.0 - 1e-6)  # pre-activation above 6, or a fused ReLU6 at 6
        bounds[name] = (clipped, np.minimum(RELU6_HEADROOM * np.maximum(m, 0.0) / 6.0, 1.0))
    return bounds


def _through_relu6(layer) -> bool:
    """Is ``layer``'s output clipped by a ReLU6 (fused, or a ReLU6 layer after linear ones)
    before the next weight layer?"""
    if _act(layer) == "relu6":
        return True
    current = layer
    while len(_consumers(current)) == 1:
        current = _consumers(current)[0]
        kind = _relu_kind(current)
        if kind in (None, "relu") or type(current).__name__ in _WEIGHT:
            return False
        if kind == "relu6":
            return True
    return False


def float_change(original, equalized, batches) -> dict:
    """How far equalization moved the float model (replacing ReLU6 by ReLU does; bounded
    scales should not on the calibration data): top-1 agreement and output SQNR of
    ``equalized`` against ``original`` over ``batches`` (first output)."""
    from tflq import metrics
    from tflq.models import output_list

    compared = metrics.Comparison()
    for batch in batches():
        want = output_list(original(batch, training=False))
        got = output_list(equalized(batch, training=False))
        compared.update([np.asarray(w) for w in want], [np.asarray(g) for g in got], None)
    result = compared.result()
    return {"top1_agreement": result["top1_agreement"], "sqnr_db": result["sqnr_db"]}


def _relu6_to_relu(model):
    from tflq.models import tf_keras

    replaced = []

    def clone(layer):
        config = layer.get_config()
        if type(layer).__name__ == "ReLU" and config.get("max_value") == 6:
            config["max_value"] = None
            replaced.append(layer.name)
        elif _act(layer) == "relu6":
            config["activation"] = "relu"
            replaced.append(layer.name)
        return layer.__class__.from_config(config)

    copy = tf_keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy, len(replaced)


def quantize_weights(kernel: np.ndarray, kind: str, per_channel: bool) -> np.ndarray:
    """TFLite's int8 weights, dequantized: symmetric, narrow range [−127, 127], per output
    channel (last axis; depthwise: channel × multiplier) or per tensor."""
    flat = _per_output(kernel, kind)
    axes = tuple(range(flat.ndim - 1)) if per_channel else None
    top = np.abs(flat).max(axis=axes, keepdims=per_channel)
    scale = np.where(top > 0, top / 127.0, 1.0)
    q = np.clip(np.round(flat / scale), -127, 127) * scale
    return q.reshape(kernel.shape).astype(kernel.dtype)


def bias_correct(model, batches, per_channel: bool = True, reference: dict | None = None,
                 progress=None):
    """Empirical bias correction of every Conv2D/DepthwiseConv2D/Dense in place, in graph
    order: bias −= mean over the data of layer(x; Q(W) − W₀), W₀ the kernel in
    ``reference`` (``{layer: kernel}``, e.g. before clipping) or else the layer's own.
    ``progress`` shows progress per layer (as in :func:`tflq.ptq.adaround.apply`). Returns
    {layer: |shift| max}."""
    from tflq.models import tf_keras

    shifts = {}
    layers = [layer for layer in model.layers
              if type(layer).__name__ in _WEIGHT | {"Dense"} and layer.use_bias]
    bar = progress("bias correction", len(layers), "layer") if progress else None
    for layer in (bar(layers) if bar else layers):
        kind = type(layer).__name__
        probe = tf_keras.Model(model.inputs, layer.input)
        weights = layer.get_weights()
        delta = quantize_weights(weights[0], kind, per_channel) - (reference or {}).get(
            layer.name, weights[0])
        config = {**layer.get_config(), "activation": "linear", "use_bias": False,
                  "name": f"{layer.name}_delta"}
        twin = layer.__class__.from_config(config)
        total, count = 0.0, 0
        for batch in batches():
            x = probe(batch, training=False)
            if not twin.built:
                twin(x)
                twin.set_weights([delta])
            out = np.asarray(twin(x))
            total = total + out.reshape(-1, out.shape[-1]).sum(axis=0)
            count += int(np.prod(out.shape[:-1]))
        if count:
            shift = total / count
            layer.set_weights([weights[0], weights[1] - shift.astype(weights[1].dtype)])
            shifts[layer.name] = float(np.abs(shift).max())
    return shifts
