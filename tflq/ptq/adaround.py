"""AdaRound: learned rounding of weights to TFLite's int8 grid (Nagel et al. 2020, "Up or
Down? Adaptive Rounding for Post-Training Quantization").

Rounding each weight to the nearest grid point is not what minimizes the layer's output
error. AdaRound learns, per weight, whether to round down or up: with the weight in code
units w/s between grid levels L ≤ w/s ≤ U,

    W̃ = s·(L + h(V)·(U − L)),   h(V) = clip(σ(V)·(ζ − γ) + γ, 0, 1),  ζ = 1.1, γ = −0.1

and V is trained layer by layer on calibration data to minimize

    ‖f(W̃·x̃ + b) − f(W·x + b)‖² / ‖f(W·x + b)‖² + λ·K·mean(1 − |2h(V) − 1|^β)

where x̃ is the layer's input in the model whose earlier layers are already rounded (the
paper's asymmetric reconstruction), x the float model's, f the layer's fused activation
(none for softmax: its logits are reconstructed), K the number of weights per output
channel and the mean taken over the learned weights. λ·K·mean is about (λ/C_out)·Σ: the
paper sums the regularizer against an error summed over channels. (As a plain mean over all
weights its pull on each weight shrank with the layer's size, h(V) stayed between 0 and 1,
and the final hard rounding lost to nearest.) β anneals from 20 to 2 after a warm-up
without the regularizer, which drives every
h(V) to 0 or 1. Finally each weight takes L or U by h(V) ≥ ½. A layer whose learned rounding
has a larger output error on the calibration data than rounding to nearest keeps the
nearest rounding (recorded as ``kept: nearest``).

**Grids** (``num_bits``), in int8 code units with scale s per output channel (or per
tensor):

* 8: every integer code in [−127, 127], TFLite's int8 weights, s = max|w_c| / 127;
* 4: the 15 codes round(127·k/7), k = −7…7, i.e. {0, ±18, ±36, ±54, ±73, ±91, ±109, ±127}:
  the codes the converter itself gives weights at k·T_c/7 (so the grid's values and the
  converter's rounding agree), 4 bits of information per weight that are still int8 codes
  on the stock kernels. s = T_c / 127 with a **clipping threshold** T_c ≤ max|w_c| chosen
  per channel (per tensor: one T) among :data:`CLIP_RATIOS` · max|w_c| for the smallest
  output error of the layer on the calibration inputs with weights clipped to ±T_c and
  rounded to nearest (an output channel depends on its own kernel slice only, so each
  channel picks its own ratio). Weights beyond ±T_c are clipped to code ±127 before the
  rounding is learned. Without clipping, a channel's 15 levels stretch to its single
  largest weight and most weights round to 0 or ±18. After rounding, each channel's bias
  gets an empirical bias correction (the mean output error on the calibration inputs),
  kept per channel only where it lowers the layer's output MSE.

**Deployment is exact.** The converter quantizes a kernel with scale max|W̃_c|/127; the
largest weight of each channel is kept at its code ±127 (never rounded; with clipping it
sits at exactly ±T_c), so the converter's scale is s and its rounding returns exactly the
learned codes: :func:`check_deployed` reads them back from the .tflite. A (nearly) dead
channel, whose range 2·max|w_c| is below :data:`CONVERTER_MIN_RANGE`, is never clipped and
gets the converter's floor scale 1e-6/254 on both sides. A channel whose int32 bias would
overflow on its weight scale is not AdaRound's to round: the converter raises that weight
scale to |b_c| / (2^30 · s_in) (:data:`BIAS_CODE_LIMIT`, read back from converted models;
s_in is the layer's input scale, which AdaRound can only estimate from its own samples), so
such channels (:func:`_bias_limited`, 2× margin; e.g. a dead channel with a bias) keep their
float weights, the converter rounds them on its own scale, and :func:`check_deployed`
compares the other channels; where all of a channel's codes round to 0 (VWW has hundreds
of such channels) they are pinned at 0, which every scale reads back.
"""

from __future__ import annotations

import numpy as np

__all__ = ["GRIDS", "CONVERTER_MIN_RANGE", "CLIP_RATIOS", "levels", "apply", "check_deployed"]

GRIDS = (8, 4)
CONVERTER_MIN_RANGE = 1e-6  # the TFLite converter's smallest per-channel weight range
# Candidate clipping thresholds T_c / max|w_c| of the 4-bit grid (1.0 = no clipping).
CLIP_RATIOS = tuple(np.round(np.arange(1.0, 0.24, -0.05), 2))
_ZETA, _GAMMA = 1.1, -0.1
_WEIGHT_LAYERS = ("Conv2D", "DepthwiseConv2D", "Dense")
_NOT_ELEMENTWISE = ("softmax", "log_softmax")
MIN_ROWS = 256  # output positions per optimizer step (see _step_samples)
# The converter keeps |bias| / (input scale · weight scale) at most 2^30 (int32 max / 2).
BIAS_CODE_LIMIT = 2.0 ** 30


def levels(num_bits: int) -> np.ndarray:
    """The allowed int8 codes of a grid, sorted (see module docstring)."""
    if num_bits == 8:
        return np.arange(-127, 128, dtype=np.float64)
    if num_bits == 4:
        return np.round(127.0 * np.arange(-7, 8) / 7.0)
    raise ValueError(f"AdaRound num_bits must be one of {list(GRIDS)}. Received: {num_bits!r}")


def _channels_last(kind: str, kernel: np.ndarray) -> np.ndarray:
    """The kernel with output channels on the last axis (depthwise: (h, w, c·m))."""
    if kind == "DepthwiseConv2D":
        h, w, c, m = kernel.shape
        return kernel.reshape(h, w, c * m)
    return kernel


def _scales(flat: np.ndarray, per_channel: bool, ratio=1.0) -> np.ndarray:
    """The converter's weight scales of the kernel clipped to ±ratio·max|w|: T / 127, with
    its floor for (nearly) dead channels: a range 2·max|w| below
    :data:`CONVERTER_MIN_RANGE` gets scale CONVERTER_MIN_RANGE / 254 (read back from
    converted models) and is never clipped."""
    axes = tuple(range(flat.ndim - 1)) if per_channel else None
    top = np.abs(flat).max(axis=axes, keepdims=per_channel)
    dead = 2.0 * top < CONVERTER_MIN_RANGE
    return np.where(dead, CONVERTER_MIN_RANGE / 254.0, np.where(dead, 1.0, ratio) * top / 127.0)


def _nearest_codes(flat: np.ndarray, scale: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """``flat`` clipped to ±127·scale and rounded to the nearest level of ``grid``."""
    codes = np.clip(flat / scale, -127.0, 127.0)
    lower, upper = _bounds(codes, grid)
    return np.where(codes - lower <= upper - codes, lower, upper)


def _choose_scales(flat, per_channel, grid, error_of):
    """Per-channel (or per-tensor) clipping for the 4-bit grid: among :data:`CLIP_RATIOS`,
    the threshold whose nearest rounding gives the smallest output error.

    Args:
      error_of: ``f(kernel in flat layout) -> per-channel output squared error``.

    Returns:
      (scales, chosen ratios per channel).
    """
    errors = []
    for ratio in CLIP_RATIOS:
        scale = _scales(flat, per_channel, ratio)
        errors.append(error_of(_nearest_codes(flat, scale, grid) * scale))
    errors = np.stack(errors)  # (ratios, channels)
    if per_channel:
        best = np.asarray(CLIP_RATIOS)[errors.argmin(axis=0)]
        scale = _scales(flat, True, best.reshape((1,) * (flat.ndim - 1) + (-1,)))
    else:
        best = np.full(flat.shape[-1], CLIP_RATIOS[int(errors.sum(axis=1).argmin())])
        scale = _scales(flat, False, best[0])
    dead = 2.0 * np.abs(flat).reshape(-1, flat.shape[-1]).max(axis=0) < CONVERTER_MIN_RANGE
    return scale, np.where(dead if per_channel else False, 1.0, best)


def _bounds(codes: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grid levels just below and above each code (equal where a code sits on a level)."""
    upper_index = np.clip(np.searchsorted(grid, codes, side="left"), 0, grid.size - 1)
    upper = grid[upper_index]
    lower = grid[np.clip(upper_index - (upper > codes), 0, grid.size - 1)]
    return lower, upper


def _pinned(flat: np.ndarray, per_channel: bool) -> np.ndarray:
    """Mask of each channel's largest |weight| (per tensor: the largest one): it stays at
    code ±127 so the converter's scale is the one AdaRound used."""
    mask = np.zeros(flat.shape, bool)
    if per_channel:
        rows = np.abs(flat).reshape(-1, flat.shape[-1]).argmax(axis=0)
        view = mask.reshape(-1, flat.shape[-1])
        view[rows, np.arange(flat.shape[-1])] = True
    else:
        mask.flat[np.abs(flat).argmax()] = True
    return mask


def _grid_codes(config, kind, kernel, rest, activation, x_in, y_target, grid, per_channel):
    """(scales, clip ratios per channel, kernel in code units) before rounding: int8 on the
    converter's own scale; 4-bit clipped per channel (:func:`_choose_scales`)."""
    from tflq.models import tf

    flat = _channels_last(kind, kernel).astype(np.float64)
    if grid.size == 255:  # int8: the converter's own scale, no clipping
        scale = _scales(flat, per_channel)
        return scale, np.ones(flat.shape[-1]), flat / scale

    def error_of(weights):
        out = _call_with_kernel(config, kind, x_in, tf.constant(
            weights.reshape(kernel.shape), tf.float32), rest)
        return np.mean(((activation(out).numpy() - y_target) ** 2).reshape(
            -1, flat.shape[-1]), axis=0)

    scale, ratios = _choose_scales(flat, per_channel, grid, error_of)
    return scale, ratios, np.clip(flat / scale, -127.0, 127.0)


def _round_layer(layer, x_in, y_target, grid, per_channel, iterations, reg, batch_size, seed):
    """Learns the rounding of one layer; returns (rounded kernel, codes, per-channel scales,
    stats)."""
    from tflq.models import tf, tf_keras

    kind = type(layer).__name__
    kernel, *rest = layer.get_weights()
    flat = _channels_last(kind, kernel).astype(np.float64)
    config = layer.get_config()
    activation = _loss_activation(config)
    scale, ratios, codes = _grid_codes(config, kind, kernel, rest, activation, x_in, y_target,
                                       grid, per_channel)
    lower, upper = _bounds(codes, grid)
    limited = _bias_limited(rest, x_in, scale, per_channel, flat.shape[-1])
    # All codes 0: any larger scale the converter takes gives 0 too, so pin them at 0.
    zero = limited & (np.abs(codes).reshape(-1, flat.shape[-1]).max(axis=0) < 0.5)
    limited &= ~zero
    pinned = _pinned(flat, per_channel) | zero
    width = np.where(upper > lower, upper - lower, 1.0)
    frac = np.clip((codes - lower) / width, 0.0, 1.0)
    frac = np.where(pinned | (upper == lower), np.round(frac), frac)
    # h(V0) = frac: V0 = −log((ζ − γ)/(frac − γ) − 1)
    v0 = -np.log((_ZETA - _GAMMA) / (np.clip(frac, 1e-4, 1 - 1e-4) - _GAMMA) - 1.0)
    v = tf.Variable(v0.astype(np.float32))
    learn = tf.constant((~pinned & (upper > lower) & ~limited).astype(np.float32))
    fixed = tf.constant(frac.astype(np.float32))
    lower_t, width_t = tf.constant(lower, tf.float32), tf.constant(width, tf.float32)
    scale_t = tf.constant(scale, tf.float32)
    optimizer = tf_keras.optimizers.Adam(1e-2)
    rng = np.random.default_rng(seed)
    warmup = int(0.2 * iterations)

    def h():
        return learn * tf.clip_by_value(tf.sigmoid(v) * (_ZETA - _GAMMA) + _GAMMA, 0, 1) + (
            1 - learn) * fixed

    def kernel_of(rounding):
        w = scale_t * (lower_t + rounding * width_t)
        return tf.reshape(w, kernel.shape)

    x_all = tf.constant(x_in, tf.float32)
    y_all = tf.constant(y_target, tf.float32)
    norm = tf.constant(max(float(np.mean(y_target ** 2)), 1e-12), tf.float32)
    fan_in = float(flat.size // flat.shape[-1])  # weights per output channel

    @tf.function
    def train_step(pick, beta, use_reg):
        with tf.GradientTape() as tape:
            out = _call_with_kernel(config, kind, tf.gather(x_all, pick), kernel_of(h()), rest)
            # Relative squared error: comparable across layers and bit widths.
            error = tf.reduce_mean(tf.square(activation(out) - tf.gather(y_all, pick))) / norm
            # λ·Σ over weights / output channels (see the module docstring).
            rounding = fan_in * tf.reduce_sum(learn * (1 - tf.abs(2 * h() - 1) ** beta)) / (
                tf.maximum(tf.reduce_sum(learn), 1.0))
            loss = error + use_reg * reg * rounding
        optimizer.apply_gradients([(tape.gradient(loss, v), v)])
        return error

    batch_size = _step_samples(y_target, batch_size)
    for step in range(iterations):
        pick = rng.choice(len(x_in), size=batch_size, replace=False)
        beta = 20.0 + (2.0 - 20.0) * max(0, step - warmup) / max(1, iterations - warmup)
        train_step(tf.constant(pick), tf.constant(beta, tf.float32),
                   tf.constant(float(step >= warmup), tf.float32))
    hard = np.where(learn.numpy() > 0, (h().numpy() >= 0.5).astype(np.float64), frac)
    return _finish(layer, x_in, y_target, (flat, scale, ratios, limited),
                   lower + hard * (upper - lower), lower + np.round(frac) * (upper - lower))


def _finish(layer, x_in, y_target, grid_state, new_codes, nearest_codes):
    """The learned or the nearest rounding, whichever has the smaller output error on the
    calibration data (bias-limited channels keep their float weights in both); returns
    (kernel, codes, per-channel scales, stats)."""
    from tflq.models import tf

    flat, scale, ratios, limited = grid_state
    kind = type(layer).__name__
    kernel, *rest = layer.get_weights()
    config = layer.get_config()
    activation = _loss_activation(config)

    def weights_of(codes):
        return np.where(limited, flat, scale * codes).reshape(kernel.shape).astype(kernel.dtype)

    def output_error(weights):
        out = _call_with_kernel(config, kind, x_in, tf.constant(weights), rest)
        return float(np.mean((activation(out).numpy() - y_target) ** 2))

    rounded, nearest = weights_of(new_codes), weights_of(nearest_codes)
    mse_nearest, mse_learned = output_error(nearest), output_error(rounded)
    stats = {"layer": layer.name, "type": kind, "weights": int(flat.size),
             "changed_vs_nearest": int(np.sum((new_codes != nearest_codes) & ~limited)),
             "output_mse_nearest": mse_nearest, "output_mse_adaround": mse_learned,
             "kept": "adaround", "clip_ratio_median": float(np.median(ratios)),
             "clip_ratio_min": float(np.min(ratios)),
             "clipped_channels": int(np.sum(ratios < 1.0)),
             "bias_limited_channels": int(limited.sum()), "limited": limited}
    if mse_learned > mse_nearest:  # never worse than rounding to nearest on this data
        rounded, new_codes, stats["kept"] = nearest, nearest_codes, "nearest"
    return rounded, new_codes.reshape(flat.shape), np.broadcast_to(
        scale.reshape(-1), (flat.shape[-1],)).copy(), stats


def _bias_limited(rest, x_in, scale, per_channel, channels) -> np.ndarray:
    """Per output channel: will the converter raise the weight scale so that the int32 bias
    fits (|b_c| / (2^30 · s_in) > s_c)? s_in is estimated from ``x_in``'s range (zero
    included, 255 steps); a 2× margin covers the converter calibrating on more samples. Per
    tensor: all channels when any is."""
    if not rest:
        return np.zeros(channels, bool)
    low, high = min(float(np.min(x_in)), 0.0), max(float(np.max(x_in)), 0.0)
    input_scale = max(high - low, 1e-30) / 255.0
    needed = np.abs(rest[0].astype(np.float64)) / (BIAS_CODE_LIMIT * input_scale)
    limited = 2.0 * needed > np.broadcast_to(scale.reshape(-1), (channels,))
    return np.full(channels, limited.any()) if not per_channel else limited


def _step_samples(y_target: np.ndarray, batch_size: int) -> int:
    """Samples per optimizer step: at least ``batch_size``, and enough for :data:`MIN_ROWS`
    output positions (a conv's sample holds H·W of them, a Dense's one, so a Dense layer
    takes more samples per step, else its gradient is noise); at most all of them."""
    rows = max(1, int(np.prod(y_target.shape[1:-1])))
    return min(len(y_target), max(batch_size, -(-MIN_ROWS // rows)))


def _loss_activation(config: dict):
    """The activation f of the reconstruction loss: the layer's own when it acts element by
    element; none (the logits) for softmax, whose squared error in probability space ignores
    the confident samples (measured on a pretrained ResNet-8's classifier: learned rounding
    scored worse than nearest there)."""
    from tflq.models import tf_keras

    name = config.get("activation", "linear")
    return tf_keras.activations.get("linear" if name in _NOT_ELEMENTWISE else name)


def _output(layer, x) -> np.ndarray:
    """``f(layer's pre-activation output)`` with f of :func:`_loss_activation`."""
    kernel, *rest = layer.get_weights()
    config = layer.get_config()
    out = _call_with_kernel(config, type(layer).__name__, x, kernel, rest)
    return np.asarray(_loss_activation(config)(out))


def _call_with_kernel(config: dict, kind: str, x, kernel, rest):
    """A layer's pre-activation output with ``kernel`` (a tensor, differentiable)."""
    from tflq.models import tf

    if kind == "Dense":
        out = tf.tensordot(tf.cast(x, tf.float32), kernel, axes=[[-1], [0]])
    elif kind == "Conv2D":
        out = tf.nn.conv2d(x, kernel, strides=config["strides"],
                           padding=config["padding"].upper(), dilations=config["dilation_rate"])
    else:
        out = tf.nn.depthwise_conv2d(x, kernel, strides=(1, *config["strides"], 1),
                                     padding=config["padding"].upper(),
                                     dilations=config["dilation_rate"])
    if rest:
        out = out + rest[0]
    return out


def apply(model, batches, num_bits: int = 8, per_channel: bool = True, iterations: int = 500,
          reg: float = 0.01, batch_size: int = 8, max_samples: int = 64, seed: int = 0,
          per_tensor_kinds: tuple = (), reference=None, progress=None):
    """AdaRound every Conv2D/DepthwiseConv2D/Dense of a prepared (BatchNorm-folded,
    inlined) tf_keras model in place, in graph order.

    Args:
      model: the float model, prepared (:func:`tflq.quant.graph.prepare`); changed in place.
      batches: callable returning an iterator of input batches (arrays or dicts).
      num_bits: 8 or 4 (see :data:`GRIDS` and the module docstring).
      per_channel: one scale per output channel (TFLite's default) or per tensor.
      iterations: optimizer steps per layer.
      reg: λ, weight of the rounding regularizer.
      batch_size: samples per step.
      max_samples: calibration samples used (first ones).
      seed: sampling seed.
      per_tensor_kinds: layer types whose weights the deployment route quantizes per tensor
        even when ``per_channel`` (tflq's QAT graph, through which the range estimators
        convert, quantizes Dense kernels per tensor, as tfmot's 8-bit scheme does).
      reference: the float model whose layer outputs are reconstructed (same layer names,
        e.g. before weight clipping); default: ``model`` as it is on entry.
      progress: shows progress per layer: a factory (stage, total, unit) → wrapper of
        the layer list (:func:`tflq.console.progress` with its style bound), or None.

    Returns:
      ``{"layers": [per-layer stats], "codes": {layer: learned int8 codes},
      "scales": {layer: per-channel weight scale}, "bias_limited": {layer: per-channel
      mask of the channels left to the converter}}``; a layer's stats hold its output
      MSE with nearest and learned rounding, which it kept, and the 4-bit grid's clipping
      (``clip_ratio_median``/``clip_ratio_min`` of T_c / max|w_c|, ``clipped_channels``;
      1.0 and 0 at 8 bits), ``bias_limited_channels`` and, at 4 bits, its bias correction
      (``bias_corrected``, ``bias_corrected_channels``, ``output_mse_bias_corrected``).

    Raises:
      ValueError: bad arguments.
    """
    from tflq.models import tf_keras
    from tflq.sampling import first_samples

    grid = levels(num_bits)
    if iterations < 1 or reg < 0 or batch_size < 1 or max_samples < 1:
        raise ValueError(f"AdaRound needs iterations >= 1, reg >= 0, batch_size >= 1, "
                         f"max_samples >= 1. Received: iterations={iterations}, reg={reg}, "
                         f"batch_size={batch_size}, max_samples={max_samples}")
    original = reference
    if original is None:
        original = tf_keras.models.clone_model(model)
        original.set_weights(model.get_weights())
    data = first_samples(batches, max_samples)
    count = len(next(iter(data.values()))) if isinstance(data, dict) else len(data)
    record = {"num_bits": num_bits, "per_channel": per_channel, "iterations": iterations,
              "reg": reg, "samples": int(count), "layers": [], "codes": {}, "scales": {},
              "bias_limited": {}}
    layers = [(i, layer) for i, layer in enumerate(model.layers)
              if type(layer).__name__ in _WEIGHT_LAYERS]
    bar = progress(f"AdaRound {num_bits}-bit", len(layers), "layer") if progress else None
    for index, layer in (bar(layers) if bar else layers):
        twin = original.get_layer(layer.name)
        x_in = np.asarray(tf_keras.Model(model.inputs, layer.input)(data, training=False))
        x_fp = np.asarray(tf_keras.Model(original.inputs, twin.input)(data, training=False))
        y = _output(twin, x_fp)
        rounded, codes, scales, stats = _round_layer(layer, x_in, y, grid, per_channel and
                                                     type(layer).__name__ not in per_tensor_kinds,
                                                     iterations, reg, batch_size, seed + index)
        limited = stats.pop("limited")
        layer.set_weights([rounded, *layer.get_weights()[1:]])
        if num_bits == 4:
            stats.update(_correct_bias(layer, x_in, y))
        record["layers"].append(stats)
        record["codes"][layer.name] = codes
        record["scales"][layer.name] = scales
        record["bias_limited"][layer.name] = limited
    return record


def _correct_bias(layer, x_in, y_target) -> dict:
    """Empirical bias correction of a rounded layer (4-bit): adds to each channel's bias the
    mean of (float output − rounded output) on the calibration inputs, kept only where it
    lowers the layer's output MSE. The bias is not part of the learned codes (the converter
    quantizes it to int32 with scale input scale × weight scale)."""
    weights = layer.get_weights()
    if len(weights) < 2:
        return {"bias_corrected": False}
    channels = weights[1].shape[-1]

    def errors():
        out = _output(layer, x_in)
        return ((out - y_target) ** 2).reshape(-1, channels).mean(axis=0), out

    before, out = errors()
    shift = (y_target - out).reshape(-1, channels).mean(axis=0)
    layer.set_weights([weights[0], weights[1] + shift.astype(weights[1].dtype), *weights[2:]])
    after, _ = errors()
    keep = after < before  # per channel: never worse on the calibration data
    layer.set_weights([weights[0], weights[1] + np.where(keep, shift, 0).astype(
        weights[1].dtype), *weights[2:]])
    return {"bias_corrected": True, "bias_corrected_channels": int(keep.sum()),
            "output_mse_bias_corrected": float(np.mean(np.where(keep, after, before)))}


def check_deployed(model, record: dict, content: bytes) -> list[dict]:
    """Reads each AdaRounded kernel back from the .tflite: ``exact`` when the stored int8
    codes are the learned ones (found by layout and shape) in every channel AdaRound rounded
    (bias-limited channels are the converter's: see the module docstring)."""
    from tflq import tflite_inspect

    tensors = tflite_inspect.int8_weight_tensors(content)
    rows = []
    for stats in record["layers"]:
        layer = model.get_layer(stats["layer"])
        kind = stats["type"]
        shape = layer.get_weights()[0].shape
        codes = record["codes"][layer.name]
        expected = tflite_inspect.tflite_layout(kind, codes.reshape(shape))
        limited = record["bias_limited"][layer.name]
        ours = ~tflite_inspect.tflite_layout(kind, np.broadcast_to(limited, codes.shape).reshape(
            shape))
        found = [t for t in tensors if t["codes"].shape == expected.shape
                 and np.array_equal(t["codes"].astype(np.float64)[ours], expected[ours])]
        rows.append({"layer": layer.name, "exact": bool(found)})
    return rows
