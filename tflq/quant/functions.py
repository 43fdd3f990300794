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

from tflq.models import tf

__all__ = ["check_bits", "linear_codes", "symmetric_codes", "asymmetric_params", "asymmetric_codes",
    "log_companding_codes", "pow2_codes", "fake_quant_linear", "fake_quant_symmetric",
    "fake_quant_asymmetric", "fake_quant_log_companding", "fake_quant_pow2",
    "fake_quant_learned_step"]

_EPS = 1e-12


def check_bits(num_bits: int, low: int = 2, high: int = 16) -> None:
    if not isinstance(num_bits, (int, np.integer)) or not low <= num_bits <= high:
        raise ValueError(f"num_bits must be an integer in [{low}, {high}]. "
                         f"Received: num_bits={num_bits!r}")


def linear_codes(x, x_min, x_max, num_bits: int):
    """Min-max linear quantization. Returns (codes in [0, 2^b − 1], dequantized)."""
    check_bits(num_bits)
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
    check_bits(num_bits)
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
    check_bits(num_bits)
    x = np.asarray(x, np.float64)
    scale, zero_point = asymmetric_params(x_min, x_max, num_bits)
    q = np.clip(np.round(x / scale) + zero_point, 0, 2**num_bits - 1)
    return q.astype(np.int64), (q - zero_point) * scale


def log_companding_codes(x, max_abs, num_bits: int, companding: float = 1.0):
    """Logarithmic (companding) quantization with the sign kept. Returns (codes, deq)."""
    check_bits(num_bits, 3)
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
    check_bits(num_bits, 2, 8)
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
    check_bits(num_bits)
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
    check_bits(num_bits)
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
    check_bits(num_bits)
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
    check_bits(num_bits, 3)
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
    check_bits(num_bits, 2, 8)
    x = tf.convert_to_tensor(x, tf.float32)
    scale = tf.cast(scale, tf.float32)
    exponents = float(2 ** (num_bits - 1) - 1)
    safe = tf.where(scale > 0, scale, tf.ones_like(scale))
    ratio = tf.abs(x) / safe
    e = tf.minimum(tf.round(tf.math.log(tf.maximum(ratio, _EPS)) / math.log(2.0)), 0.0)
    nonzero = tf.logical_and(tf.logical_and(e >= -(exponents - 1), ratio > 0), scale > 0)
    xq = tf.where(nonzero, tf.sign(x) * safe * tf.pow(2.0, e), tf.zeros_like(x))
    return _ste(x, tf.stop_gradient(xq), -scale, scale)


def fake_quant_learned_step(x, step, num_bits: int):
    """Learned step size quantization (Esser et al. 2020, LSQ), symmetric narrow range:
    x̂ = clamp(round(x/s), −Q, Q)·s with Q = 2^(b−1) − 1. Gradients: straight through for x
    inside the range (0 outside); for s, (round(x/s) − x/s) inside and ±Q outside, scaled by
    1/√(N·Q) as in the paper.
    """
    check_bits(num_bits, 2, 8)
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


