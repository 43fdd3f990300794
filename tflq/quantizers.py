"""Quantization functions: numpy references, TF fake-quant ops with straight-through
gradients, and tfmot ``Quantizer`` classes registered under string aliases.

Every scheme has three faces that must agree exactly: ``<name>_codes`` (numpy, the
reference, returns integer codes and their dequantized values), ``fake_quant_<name>`` (TF,
used in training: forward = the dequantized values, backward = the straight-through
estimator with clipping, i.e. the incoming gradient where the input lies inside the
quantization range and zero outside), and a tfmot ``Quantizer`` for QAT wrappers.

Rounding is half-to-even everywhere (``np.round`` and ``tf.round`` agree). Per-channel
ranges broadcast over the last axis (``per_axis=True``).

Schemes and formulas (b = ``num_bits``):

* ``linear`` (min-max): q = clamp(round((x − x_min)/(x_max − x_min)·(2^b − 1)), 0, 2^b − 1),
  x̂ = x_min + q·(x_max − x_min)/(2^b − 1). Zero is not exactly representable in general.
* ``symmetric`` (narrow range): s = max|x|/(2^(b−1) − 1), q = clamp(round(x/s), −(2^(b−1) − 1),
  2^(b−1) − 1), x̂ = q·s. TFLite's int8 weight format when b = 8.
* ``asymmetric``: the range is widened to include 0, s = (x_max − x_min)/(2^b − 1),
  z = clamp(round(−x_min/s), 0, 2^b − 1), q = clamp(round(x/s) + z, 0, 2^b − 1),
  x̂ = (q − z)·s. Zero is exact; separate negative and positive extents.
* ``log_companding`` (μ-law style, sign kept): with L = 2^(b−1) − 1 magnitude levels and
  u = min(|x|/max|x|, 1)·L, q = sign(x)·clamp(round(log(1 + u/c)/log(1 + L/c)·L), 0, L),
  x̂ = sign(q)·max|x|/L·c·((1 + L/c)^(|q|/L) − 1). Small c spends more levels near zero.
* ``pow2`` (sign + exponent): E = 2^(b−1) − 1 exponents {2^0, …, 2^−(E−1)}·s plus zero, with
  s = max|x|; e = clamp(round(log2(|x|/s)), −∞, 0), values with e < −(E−1) become 0;
  code = sign(x)·(e + E), x̂ = sign(x)·s·2^e. For b ≤ 4 the grid is a subset of int8 with
  step s/64 (codes ±64, ±32, …, ±1, 0), so it deploys bit-exactly on TFLite int8 kernels.

References: Jacob et al. 2018 (integer-arithmetic-only inference, linear/asymmetric);
Miyashita et al. 2016 (logarithmic data representation); Zhou et al. 2017 (incremental
network quantization, powers of two); ITU-T G.711 (μ-law companding).
"""

from __future__ import annotations

import math

import numpy as np

from tflq.keras_compat import tf

_EPS = 1e-12


def _check_bits(num_bits: int, low: int = 2, high: int = 16) -> None:
    if not isinstance(num_bits, (int, np.integer)) or not low <= num_bits <= high:
        raise ValueError(f"num_bits must be an integer in [{low}, {high}]. "
                         f"Received: num_bits={num_bits!r}")


# ---------------------------------------------------------------------------------------
# numpy references
# ---------------------------------------------------------------------------------------

def linear_codes(x, x_min, x_max, num_bits: int):
    """Min-max linear quantization. Returns (codes in [0, 2^b − 1], dequantized)."""
    _check_bits(num_bits)
    x = np.asarray(x, np.float64)
    x_min, x_max = np.asarray(x_min, np.float64), np.asarray(x_max, np.float64)
    levels = 2**num_bits - 1
    span = x_max - x_min
    safe = np.where(span > 0, span, 1.0)
    q = np.clip(np.round((x - x_min) / safe * levels), 0, levels)
    q = np.where(span > 0, q, 0.0)
    return q.astype(np.int64), x_min + q * np.where(span > 0, span, 0.0) / levels


def symmetric_codes(x, max_abs, num_bits: int, narrow_range: bool = True):
    """Symmetric quantization, zero point 0. Returns (signed codes, dequantized)."""
    _check_bits(num_bits)
    x = np.asarray(x, np.float64)
    max_abs = np.asarray(max_abs, np.float64)
    top = 2 ** (num_bits - 1) - 1
    bottom = -top if narrow_range else -(top + 1)
    scale = np.where(max_abs > 0, max_abs / top, 1.0)
    q = np.clip(np.round(x / scale), bottom, top)
    q = np.where(max_abs > 0, q, 0.0)
    return q.astype(np.int64), q * np.where(max_abs > 0, scale, 0.0)


def asymmetric_params(x_min, x_max, num_bits: int):
    """(scale, zero point) of the asymmetric scheme; the range is widened to include 0."""
    x_min = np.minimum(np.asarray(x_min, np.float64), 0.0)
    x_max = np.maximum(np.asarray(x_max, np.float64), 0.0)
    levels = 2**num_bits - 1
    scale = np.where(x_max > x_min, (x_max - x_min) / levels, 1.0)
    zero_point = np.clip(np.round(-x_min / scale), 0, levels)
    return scale, zero_point


def asymmetric_codes(x, x_min, x_max, num_bits: int):
    """Asymmetric quantization with an integer zero point. Returns (codes, dequantized)."""
    _check_bits(num_bits)
    x = np.asarray(x, np.float64)
    scale, zero_point = asymmetric_params(x_min, x_max, num_bits)
    q = np.clip(np.round(x / scale) + zero_point, 0, 2**num_bits - 1)
    return q.astype(np.int64), (q - zero_point) * scale


def log_companding_codes(x, max_abs, num_bits: int, companding: float = 1.0):
    """Logarithmic (companding) quantization with the sign kept. Returns (codes, deq)."""
    _check_bits(num_bits, 3)
    if not companding > 0:
        raise ValueError(f"companding must be > 0. Received: companding={companding!r}")
    x = np.asarray(x, np.float64)
    max_abs = np.asarray(max_abs, np.float64)
    levels = 2 ** (num_bits - 1) - 1
    safe = np.where(max_abs > 0, max_abs, 1.0)
    u = np.minimum(np.abs(x) / safe, 1.0) * levels
    denom = math.log1p(levels / companding)
    q = np.clip(np.round(np.log1p(u / companding) / denom * levels), 0, levels)
    q = np.where(max_abs > 0, q, 0.0)
    magnitude = safe / levels * companding * np.expm1(q / levels * denom)
    signed = np.sign(x) * q
    return signed.astype(np.int64), np.sign(x) * np.where(max_abs > 0, magnitude, 0.0)


def pow2_codes(x, scale, num_bits: int):
    """Power-of-two quantization (sign + exponent). Returns (codes, dequantized).

    Codes are sign·(e + E) for x̂ = sign·scale·2^e, 0 for zero.
    """
    _check_bits(num_bits, 2, 8)
    x = np.asarray(x, np.float64)
    scale = np.asarray(scale, np.float64)
    exponents = 2 ** (num_bits - 1) - 1
    safe = np.where(scale > 0, scale, 1.0)
    ratio = np.abs(x) / safe
    with np.errstate(divide="ignore"):
        e = np.minimum(np.round(np.log2(np.maximum(ratio, _EPS))), 0.0)
    nonzero = (e >= -(exponents - 1)) & (ratio > 0) & (scale > 0)
    codes = np.where(nonzero, np.sign(x) * (e + exponents), 0.0)
    values = np.where(nonzero, np.sign(x) * safe * np.exp2(e), 0.0)
    return codes.astype(np.int64), values


# ---------------------------------------------------------------------------------------
# TF fake-quant ops (straight-through estimator with clipping)
# ---------------------------------------------------------------------------------------

def _ste(x, xq, low, high):
    """Forward xq; backward the incoming gradient where low <= x <= high, else 0."""

    @tf.custom_gradient
    def op(inputs):
        def grad(dy):
            inside = tf.logical_and(inputs >= low, inputs <= high)
            return dy * tf.cast(inside, dy.dtype)

        return tf.identity(xq), grad

    return op(x)


def fake_quant_linear(x, x_min, x_max, num_bits: int):
    """TF twin of :func:`linear_codes` (returns the dequantized values)."""
    _check_bits(num_bits)
    x = tf.convert_to_tensor(x, tf.float32)
    x_min, x_max = tf.cast(x_min, tf.float32), tf.cast(x_max, tf.float32)
    levels = float(2**num_bits - 1)
    span = x_max - x_min
    safe = tf.where(span > 0, span, tf.ones_like(span))
    q = tf.clip_by_value(tf.round((x - x_min) / safe * levels), 0.0, levels)
    xq = x_min + q * tf.where(span > 0, span, tf.zeros_like(span)) / levels
    return _ste(x, tf.stop_gradient(xq), x_min, x_max)


def fake_quant_symmetric(x, max_abs, num_bits: int, narrow_range: bool = True):
    """TF twin of :func:`symmetric_codes`."""
    _check_bits(num_bits)
    x = tf.convert_to_tensor(x, tf.float32)
    max_abs = tf.cast(max_abs, tf.float32)
    top = float(2 ** (num_bits - 1) - 1)
    bottom = -top if narrow_range else -(top + 1)
    scale = tf.where(max_abs > 0, max_abs / top, tf.ones_like(max_abs))
    q = tf.clip_by_value(tf.round(x / scale), bottom, top)
    xq = q * tf.where(max_abs > 0, scale, tf.zeros_like(scale))
    return _ste(x, tf.stop_gradient(xq), -max_abs, max_abs)


def fake_quant_asymmetric(x, x_min, x_max, num_bits: int):
    """TF twin of :func:`asymmetric_codes`."""
    _check_bits(num_bits)
    x = tf.convert_to_tensor(x, tf.float32)
    x_min = tf.minimum(tf.cast(x_min, tf.float32), 0.0)
    x_max = tf.maximum(tf.cast(x_max, tf.float32), 0.0)
    levels = float(2**num_bits - 1)
    scale = tf.where(x_max > x_min, (x_max - x_min) / levels, tf.ones_like(x_max))
    zero_point = tf.clip_by_value(tf.round(-x_min / scale), 0.0, levels)
    q = tf.clip_by_value(tf.round(x / scale) + zero_point, 0.0, levels)
    return _ste(x, tf.stop_gradient((q - zero_point) * scale), x_min, x_max)


def fake_quant_log_companding(x, max_abs, num_bits: int, companding: float = 1.0):
    """TF twin of :func:`log_companding_codes`."""
    _check_bits(num_bits, 3)
    x = tf.convert_to_tensor(x, tf.float32)
    max_abs = tf.cast(max_abs, tf.float32)
    levels = float(2 ** (num_bits - 1) - 1)
    safe = tf.where(max_abs > 0, max_abs, tf.ones_like(max_abs))
    u = tf.minimum(tf.abs(x) / safe, 1.0) * levels
    denom = math.log1p(levels / companding)
    q = tf.clip_by_value(tf.round(tf.math.log1p(u / companding) / denom * levels), 0.0, levels)
    magnitude = safe / levels * companding * tf.math.expm1(q / levels * denom)
    xq = tf.sign(x) * tf.where(max_abs > 0, magnitude, tf.zeros_like(magnitude))
    return _ste(x, tf.stop_gradient(xq), -max_abs, max_abs)


def fake_quant_pow2(x, scale, num_bits: int):
    """TF twin of :func:`pow2_codes`."""
    _check_bits(num_bits, 2, 8)
    x = tf.convert_to_tensor(x, tf.float32)
    scale = tf.cast(scale, tf.float32)
    exponents = float(2 ** (num_bits - 1) - 1)
    safe = tf.where(scale > 0, scale, tf.ones_like(scale))
    ratio = tf.abs(x) / safe
    e = tf.minimum(tf.round(tf.math.log(tf.maximum(ratio, _EPS)) / math.log(2.0)), 0.0)
    nonzero = tf.logical_and(tf.logical_and(e >= -(exponents - 1), ratio > 0), scale > 0)
    xq = tf.where(nonzero, tf.sign(x) * safe * tf.pow(2.0, e), tf.zeros_like(x))
    return _ste(x, tf.stop_gradient(xq), -scale, scale)


# ---------------------------------------------------------------------------------------
# tfmot Quantizer classes
# ---------------------------------------------------------------------------------------

import tensorflow_model_optimization as tfmot  # noqa: E402  (after keras_compat set tf_keras)

_REGISTRY: dict[str, type] = {}


def register(name: str):
    """Class decorator: registers a quantizer under a string alias."""

    def wrap(cls):
        if name in _REGISTRY:
            raise ValueError(f"Quantizer {name!r} is already registered.")
        _REGISTRY[name] = cls
        cls.alias = name
        return cls

    return wrap


def available() -> list[str]:
    return sorted(_REGISTRY)


def get(identifier):
    """Returns a quantizer from None, an alias, a ``{"class_name", "config"}`` dict or an
    instance.

    Raises:
      ValueError: unknown alias or unsupported identifier.
    """
    if identifier is None or isinstance(identifier, tfmot.quantization.keras.quantizers.Quantizer):
        return identifier  # ours, or tfmot's own (e.g. MovingAverageQuantizer for activations)
    if isinstance(identifier, str):
        if identifier not in _REGISTRY:
            raise ValueError(f"Unknown quantizer {identifier!r}. Available: {available()}")
        return _REGISTRY[identifier]()
    if isinstance(identifier, dict) and "class_name" in identifier:
        name = identifier["class_name"]
        tfmot_class = getattr(tfmot.quantization.keras.quantizers, name, None)
        if name not in _REGISTRY and tfmot_class is not None:
            return tfmot_class.from_config(identifier.get("config", {}))
        if name not in _REGISTRY:
            raise ValueError(f"Unknown quantizer {name!r}. Available: {available()}")
        return _REGISTRY[name].from_config(identifier.get("config", {}))
    raise ValueError("Expected None, a quantizer alias, a {'class_name', 'config'} dict or a "
                     f"quantizer. Received: identifier={identifier!r}")


def serialize(quantizer) -> dict:
    """``{"class_name", "config"}``: our alias, or the class name of a tfmot quantizer."""
    name = getattr(quantizer, "alias", None) or type(quantizer).__name__
    return {"class_name": name, "config": quantizer.get_config()}


class TflqQuantizer(tfmot.quantization.keras.quantizers.Quantizer):
    """Base class: range tracking shared by every scheme.

    Args:
      num_bits: bits per value.
      per_axis: one range per channel of the last axis.
      ema_decay: None takes the range from the current tensor every call (right for
        weights); a float keeps an exponential moving average of batch min/max during
        training and uses it frozen at inference (right for activations).
    """

    alias = "base"
    min_bits, max_bits = 2, 16

    def __init__(self, num_bits: int = 8, per_axis: bool = False, ema_decay: float | None = None):
        _check_bits(num_bits, self.min_bits, self.max_bits)
        if ema_decay is not None and not 0 <= ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1). Received: ema_decay={ema_decay!r}")
        self.num_bits, self.per_axis, self.ema_decay = int(num_bits), bool(per_axis), ema_decay

    def build(self, tensor_shape, name, layer):
        if self.ema_decay is None:
            return {}
        shape = (tensor_shape[-1],) if self.per_axis else ()
        make = lambda suffix: layer.add_weight(  # noqa: E731
            f"{name}_{suffix}", shape=shape, initializer="zeros", trainable=False)
        return {"min_var": make("min"), "max_var": make("max"), "seen": layer.add_weight(
            f"{name}_seen", shape=(), initializer="zeros", trainable=False)}

    def _batch_range(self, inputs):
        axes = list(range(inputs.shape.rank - 1)) if self.per_axis else None
        return tf.reduce_min(inputs, axis=axes), tf.reduce_max(inputs, axis=axes)

    def _range(self, inputs, training, weights):
        low, high = self._batch_range(inputs)
        if self.ema_decay is None:
            return tf.stop_gradient(low), tf.stop_gradient(high)

        def update():
            first = tf.equal(weights["seen"], 0.0)
            d = self.ema_decay
            new_low = tf.where(first, low, d * weights["min_var"] + (1 - d) * low)
            new_high = tf.where(first, high, d * weights["max_var"] + (1 - d) * high)
            with tf.control_dependencies([weights["min_var"].assign(new_low),
                                          weights["max_var"].assign(new_high),
                                          weights["seen"].assign(1.0)]):
                return tf.identity(new_low), tf.identity(new_high)

        def frozen():
            return tf.identity(weights["min_var"]), tf.identity(weights["max_var"])

        low, high = tf.cond(tf.cast(training, tf.bool), update, frozen)
        return tf.stop_gradient(low), tf.stop_gradient(high)

    def get_config(self):
        return {"num_bits": self.num_bits, "per_axis": self.per_axis, "ema_decay": self.ema_decay}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self == other

    def deploys_exactly(self, role: str = "weights") -> bool:
        """True when the quantized values are a subset of TFLite's int8 grid for ``role``
        (``weights``: symmetric per channel, zero point 0; ``activations``: per tensor with
        a zero point), so the converter keeps them unchanged."""
        return False


@register("linear")
class LinearQuantizer(TflqQuantizer):
    """Min-max linear quantization (see :func:`linear_codes`)."""

    def __call__(self, inputs, training, weights, **kwargs):
        low, high = self._range(inputs, training, weights)
        return fake_quant_linear(inputs, low, high, self.num_bits)


@register("symmetric")
class SymmetricQuantizer(TflqQuantizer):
    """Symmetric narrow-range quantization, zero point 0 (see :func:`symmetric_codes`)."""

    def __init__(self, num_bits=8, per_axis=False, ema_decay=None, narrow_range=True):
        super().__init__(num_bits, per_axis, ema_decay)
        self.narrow_range = bool(narrow_range)

    def __call__(self, inputs, training, weights, **kwargs):
        low, high = self._range(inputs, training, weights)
        max_abs = tf.maximum(tf.abs(low), tf.abs(high))
        return fake_quant_symmetric(inputs, max_abs, self.num_bits, self.narrow_range)

    def get_config(self):
        return {**super().get_config(), "narrow_range": self.narrow_range}

    def deploys_exactly(self, role="weights"):
        return role == "weights" and self.num_bits == 8 and self.narrow_range


@register("asymmetric")
class AsymmetricQuantizer(TflqQuantizer):
    """Asymmetric quantization with an integer zero point (see :func:`asymmetric_codes`)."""

    def __call__(self, inputs, training, weights, **kwargs):
        low, high = self._range(inputs, training, weights)
        return fake_quant_asymmetric(inputs, low, high, self.num_bits)

    def deploys_exactly(self, role="weights"):
        # TFLite int8 activations are asymmetric per tensor; int8 weights need zero point 0.
        return role == "activations" and self.num_bits == 8 and not self.per_axis


@register("log_companding")
class LogCompandingQuantizer(TflqQuantizer):
    """Logarithmic companding quantization (see :func:`log_companding_codes`)."""

    min_bits = 3

    def __init__(self, num_bits=8, per_axis=False, ema_decay=None, companding=1.0):
        super().__init__(num_bits, per_axis, ema_decay)
        if not companding > 0:
            raise ValueError(f"companding must be > 0. Received: companding={companding!r}")
        self.companding = float(companding)

    def __call__(self, inputs, training, weights, **kwargs):
        low, high = self._range(inputs, training, weights)
        max_abs = tf.maximum(tf.abs(low), tf.abs(high))
        return fake_quant_log_companding(inputs, max_abs, self.num_bits, self.companding)

    def get_config(self):
        return {**super().get_config(), "companding": self.companding}


@register("pow2")
class Pow2Quantizer(TflqQuantizer):
    """Power-of-two weights (see :func:`pow2_codes`), deployable on int8 kernels.

    For ``num_bits <= 4`` the result passes through TensorFlow's FakeQuant op with range
    ±127·s/64 (per channel when ``per_axis``), so the converter stores exactly these values
    as int8 codes ±64, ±32, …, ±1, 0. Dense kernels need ``per_axis=False`` (the converter
    rejects per-channel FakeQuant on fully connected weights).
    """

    max_bits = 8

    def __init__(self, num_bits=4, per_axis=True, ema_decay=None):
        super().__init__(num_bits, per_axis, ema_decay)

    def __call__(self, inputs, training, weights, **kwargs):
        low, high = self._range(inputs, training, weights)
        scale = tf.maximum(tf.abs(low), tf.abs(high))
        values = fake_quant_pow2(inputs, scale, self.num_bits)
        if self.num_bits > 4:
            return values
        bound = scale * (127.0 / 64.0)
        if self.per_axis:
            return tf.quantization.fake_quant_with_min_max_vars_per_channel(
                values, -bound, bound, num_bits=8, narrow_range=True)
        return tf.quantization.fake_quant_with_min_max_vars(
            values, -bound, bound, num_bits=8, narrow_range=True)

    def deploys_exactly(self, role="weights"):
        return role == "weights" and self.num_bits <= 4


ACTIVATION_ESTIMATORS = ("minmax", "meanstd")


@register("activation_int8")
class ActivationQuantizer(TflqQuantizer):
    """TFLite's int8 activation format: asymmetric per tensor, through TensorFlow's FakeQuant
    op (which the converter reads), with ranges from moving averages of either the batch
    min/max (``minmax``) or mean ± k·σ clipped to the batch min/max (``meanstd``: ignores
    rare outliers; Jacob et al. 2018 use min/max).

    Args:
      ema_decay: moving-average decay (0 keeps the last batch only).
      estimator: ``minmax`` or ``meanstd``.
      k: standard deviations for ``meanstd``.
    """

    def __init__(self, num_bits=8, per_axis=False, ema_decay=0.999, estimator="minmax", k=3.0):
        if ema_decay is None:
            raise ValueError("ActivationQuantizer needs an ema_decay (activation ranges are "
                             "learned during training).")
        super().__init__(num_bits, per_axis, ema_decay)
        if num_bits != 8 or per_axis:
            raise ValueError("ActivationQuantizer is TFLite's int8 per-tensor format: "
                             f"num_bits=8, per_axis=False. Received: num_bits={num_bits}, "
                             f"per_axis={per_axis}")
        if estimator not in ACTIVATION_ESTIMATORS:
            raise ValueError(f"Unknown estimator {estimator!r}. Available: "
                             f"{list(ACTIVATION_ESTIMATORS)}")
        if not k > 0:
            raise ValueError(f"k must be > 0. Received: k={k!r}")
        self.estimator, self.k = estimator, float(k)

    def _batch_range(self, inputs):
        low, high = tf.reduce_min(inputs), tf.reduce_max(inputs)
        if self.estimator == "meanstd":
            mean, std = tf.reduce_mean(inputs), tf.math.reduce_std(inputs)
            low = tf.maximum(low, mean - self.k * std)
            high = tf.minimum(high, mean + self.k * std)
        return low, high

    def __call__(self, inputs, training, weights, **kwargs):
        low, high = self._range(inputs, training, weights)
        low, high = tf.minimum(low, 0.0), tf.maximum(high, 0.0)  # zero must be representable
        return tf.quantization.fake_quant_with_min_max_vars(inputs, low, high, num_bits=8,
                                                            narrow_range=False)

    def get_config(self):
        return {**super().get_config(), "estimator": self.estimator, "k": self.k}

    def deploys_exactly(self, role="activations"):
        return role == "activations"


def fake_quant_learned_step(x, step, num_bits: int):
    """Learned step size quantization (Esser et al. 2020, LSQ), symmetric narrow range:
    x̂ = clamp(round(x/s), −Q, Q)·s with Q = 2^(b−1) − 1. Gradients: straight through for x
    inside the range (0 outside); for s, (round(x/s) − x/s) inside and ±Q outside, scaled by
    1/√(N·Q) as in the paper.
    """
    _check_bits(num_bits, 2, 8)
    top = float(2 ** (num_bits - 1) - 1)
    x = tf.convert_to_tensor(x, tf.float32)

    @tf.custom_gradient
    def op(inputs, s):
        s_safe = tf.maximum(s, 1e-12)
        ratio = inputs / s_safe
        q = tf.clip_by_value(tf.round(ratio), -top, top)

        def grad(dy):
            inside = tf.cast(tf.abs(ratio) <= top, dy.dtype)
            d_step = tf.where(ratio > top, top, tf.where(ratio < -top, -top, q - ratio))
            scale = 1.0 / tf.sqrt(tf.cast(tf.size(inputs), tf.float32) * top)
            reduce_axes = list(range(inputs.shape.rank - len(s.shape))) if s.shape.rank else None
            d_s = tf.reduce_sum(dy * d_step, axis=reduce_axes) * scale
            return dy * inside, tf.reshape(d_s, tf.shape(s))

        return q * s_safe, grad

    return op(x, tf.convert_to_tensor(step, tf.float32))


@register("lsq")
class LearnedStepQuantizer(TflqQuantizer):
    """Weights with a trainable step size per channel (see :func:`fake_quant_learned_step`),
    initialized to 2·mean|w|/√Q. The values q·s with |q| ≤ 2^(b−1) − 1 are TFLite int8 codes
    with scale s, and a final FakeQuant op with range ±127·s hands that scale to the
    converter: it deploys exactly for every b ≤ 8.
    """

    max_bits = 8

    def __init__(self, num_bits=4, per_axis=True, ema_decay=None):
        super().__init__(num_bits, per_axis, None)

    def build(self, tensor_shape, name, layer):
        shape = (tensor_shape[-1],) if self.per_axis else ()
        return {"step": layer.add_weight(f"{name}_step", shape=shape, initializer="zeros",
                                         trainable=True)}

    def __call__(self, inputs, training, weights, **kwargs):
        step = weights["step"]
        axes = list(range(inputs.shape.rank - 1)) if self.per_axis else None
        top = float(2 ** (self.num_bits - 1) - 1)
        initial = 2.0 * tf.reduce_mean(tf.abs(inputs), axis=axes) / math.sqrt(top)
        initial = tf.maximum(initial, 1e-8)
        if isinstance(training, bool) and not training:
            # Inference (and conversion): no assignment, so the converter can fold the range.
            step_value = tf.where(step > 0, step, initial)
        else:  # first training call: initialize the step from the weights (it starts at zero)
            step_value = tf.cond(tf.reduce_all(tf.equal(step, 0.0)),
                                 lambda: step.assign(initial), lambda: tf.identity(step))
        values = fake_quant_learned_step(inputs, step_value, self.num_bits)
        bound = tf.stop_gradient(step_value) * 127.0
        if self.per_axis:
            return tf.quantization.fake_quant_with_min_max_vars_per_channel(
                values, -bound, bound, num_bits=8, narrow_range=True)
        return tf.quantization.fake_quant_with_min_max_vars(values, -bound, bound, num_bits=8,
                                                            narrow_range=True)

    def deploys_exactly(self, role="weights"):
        return role == "weights"
