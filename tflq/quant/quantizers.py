"""tfmot ``Quantizer`` classes over :mod:`tflq.quant.functions`, registered under string
aliases (``get``/``serialize`` round-trip them; every quantizer states its formula there)."""

from __future__ import annotations

import math

from tflq.models import tf  # first: it sets TF_USE_LEGACY_KERAS before tfmot loads  # isort: skip
import tensorflow_model_optimization as tfmot  # noqa: E402, I001  # isort: skip

from tflq.quant.functions import (
    check_bits,
    fake_quant_asymmetric,
    fake_quant_learned_step,
    fake_quant_linear,
    fake_quant_log_companding,
    fake_quant_pow2,
    fake_quant_symmetric,
)

__all__ = ["register", "registered", "available", "get", "serialize", "TflqQuantizer",
    "LinearQuantizer", "SymmetricQuantizer", "AsymmetricQuantizer", "LogCompandingQuantizer",
    "Pow2Quantizer", "ACTIVATION_ESTIMATORS", "ActivationQuantizer", "LearnedStepQuantizer",
    "DepthwiseChannels", "GateBlocks"]

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


def registered() -> dict[str, type]:
    """``{alias: class}`` of every registered quantizer (a copy)."""
    return dict(_REGISTRY)


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
        check_bits(num_bits, self.min_bits, self.max_bits)
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


@register("depthwise_channels")
class DepthwiseChannels(tfmot.quantization.keras.quantizers.Quantizer):
    """One range per output channel of a DepthwiseConv2D kernel, as TFLite stores it.

    A depthwise kernel is (h, w, c, m) with m the channel multiplier; TFLite holds it as
    (1, h, w, c·m), quantized per channel along c·m. tfmot's per-axis quantizers (and
    tflq's) take the LAST kernel axis, m, which for the usual m = 1 is one range for the
    whole kernel: per-tensor weights, which wreck depthwise layers whose channels span very
    different ranges (MobileNets). This wrapper views the kernel as (h, w, 1, c·m) around
    any per-axis weight quantizer, so each of the c·m channels gets its own range.

    Args:
      quantizer: the per-axis weight quantizer to apply per channel (instance, alias or
        serialized dict, see :func:`get`); None: TFLite's int8 weight format
        (:class:`SymmetricQuantizer`, 8 bits, narrow range, per axis).
    """

    def __init__(self, quantizer=None):
        self.quantizer = get(quantizer) or SymmetricQuantizer(num_bits=8, per_axis=True)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self == other

    @staticmethod
    def _channels_last(shape) -> list[int]:
        h, w, c, m = (int(d) for d in shape)
        return [h, w, 1, c * m]

    def build(self, tensor_shape, name, layer):
        if len(tensor_shape) != 4:
            raise ValueError(f"DepthwiseChannels expects a 4-D depthwise kernel (h, w, c, m). "
                             f"Received: shape={tuple(tensor_shape)}")
        return self.quantizer.build(tf.TensorShape(self._channels_last(tensor_shape)), name,
                                    layer)

    def __call__(self, inputs, training, weights, **kwargs):
        flat = tf.reshape(inputs, self._channels_last(inputs.shape))
        return tf.reshape(self.quantizer(flat, training, weights, **kwargs), tf.shape(inputs))

    def deploys_exactly(self, role: str = "weights") -> bool:
        inner = getattr(self.quantizer, "deploys_exactly", None)
        return bool(inner(role)) if inner is not None else True

    def get_config(self):
        return {"quantizer": serialize(self.quantizer)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@register("gate_blocks")
class GateBlocks(DepthwiseChannels):
    """One range per gate of a recurrent kernel, as TFLite's int8 LSTM stores it.

    An LSTM kernel is (inputs, 4·units) with the input, forget, cell and output gates side by
    side; TFLite's ``UNIDIRECTIONAL_SEQUENCE_LSTM`` holds each gate's matrix as its own int8
    tensor with one symmetric scale (max|w| / 127). This wrapper views the kernel as
    (inputs·units, gates) around a per-axis weight quantizer, so each gate gets one range.

    Args:
      quantizer: the per-axis weight quantizer (None: 8-bit symmetric, narrow range).
      gates: gate blocks along the last axis (4 for an LSTM).
    """

    def __init__(self, quantizer=None, gates: int = 4):
        super().__init__(quantizer)
        self.gates = int(gates)

    def build(self, tensor_shape, name, layer):
        if len(tensor_shape) != 2:
            raise ValueError(f"GateBlocks expects a 2-D recurrent kernel. Received: "
                             f"shape={tuple(tensor_shape)}")
        rows, cols = (int(d) for d in tensor_shape)
        if cols % self.gates:
            raise ValueError(f"GateBlocks: a kernel of {cols} columns does not split into "
                             f"{self.gates} gates.")
        return self.quantizer.build(tf.TensorShape([rows * cols // self.gates, self.gates]),
                                    name, layer)

    def __call__(self, inputs, training, weights, **kwargs):
        rows, cols = (int(d) for d in inputs.shape)
        units = cols // self.gates
        blocks = tf.reshape(tf.transpose(tf.reshape(inputs, [rows, self.gates, units]), [0, 2, 1]),
                            [rows * units, self.gates])  # (rows·units, gates)
        blocks = self.quantizer(blocks, training, weights, **kwargs)
        return tf.reshape(tf.transpose(tf.reshape(blocks, [rows, units, self.gates]), [0, 2, 1]),
                          [rows, cols])

    def get_config(self):
        return {**super().get_config(), "gates": self.gates}
