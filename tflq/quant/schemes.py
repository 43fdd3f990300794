"""Named QAT schemes: which quantizer goes on which layer, by layer type or name pattern.

A scheme maps every layer of a model to one table-driven
:class:`tflq.quant.qat.LayerQuantizeConfig`:

* SeparableConv2D is split into DepthwiseConv2D + a 1×1 Conv2D with int8 weights (TFLite
  has no separable convolution);
* layers with weights (Conv2D, Conv2DTranspose, DepthwiseConv2D, Dense)
  get the scheme's weight quantizer on each kernel (per output channel for convolutions,
  per tensor for Dense, whose per-channel FakeQuant the converter rejects) and the
  activation quantizer on their fused activation;
* layers that only move values (Flatten, Reshape, Permute, pooling by max, Dropout, …)
  are left alone: TFLite keeps their input's scale;
* every other layer (ReLU, PReLU, Add, Multiply, Concatenate, Normalization,
  UpSampling2D, global average pooling, unknown layers) gets its output quantized, except an output
  that only feeds a ReLU (TFLite fuses the ReLU and quantizes once).

Before wrapping, :func:`tflq.quant.qat.quantize_model` folds BatchNormalization (and Rescaling)
into weight layers and turns scalar TFOpLambda ops (``x + 3.0``) into wrappable layers;
other TFOpLambda ops cannot be wrapped by tfmot and stay as they are.

Activations always use TFLite's own int8 activation format (asymmetric per tensor, moving
average ranges, a FakeQuant op the converter reads), so what differs between schemes is
the weights:

| scheme | weights | runs exactly on TFLite int8 kernels |
|---|---|---|
| ``default_int8`` | symmetric int8, zero point 0 (the TFLite spec) | yes |
| ``pow2`` | 4-bit powers of two (sign + exponent) | yes (codes ±64…±1, 0) |
| ``asymmetric`` | asymmetric 8-bit with a zero point | no: re-quantized to symmetric |
| ``log_companding`` | 8-bit logarithmic companding | no: re-quantized to linear |
| ``linear`` | min-max linear (``weight_bits``, default 4) | no: re-quantized |
| ``lsq`` | learned step size per channel (4-bit by default; the step trains) | yes |

Overrides change the weight quantizer or its bits for layers matched by type name or a
regular expression on the layer name, e.g. ``{"match": "^conv2d$", "weight_bits": 8}`` or
``{"type": "Dense", "scheme": "default_int8"}``. An override that matches no layer is an
error.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence

from tflq.quant import quantizers
from tflq.quant.quantizers import tfmot

__all__ = ["SPLIT_BY_TFMOT", "activation_quantizer", "fixed_output_quantizer", "Scheme", "SCHEMES",
    "get_scheme", "Override", "feeds_only_relu", "config_for", "check_overrides", "LayerQuantizeConfig"]

_KERNELS = {
    "Conv2D": ("kernel",), "Conv1D": ("kernel",), "Conv2DTranspose": ("kernel",),
    "DepthwiseConv2D": ("depthwise_kernel",),
    "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel"),
    "SeparableConv1D": ("depthwise_kernel", "pointwise_kernel"),
    "Dense": ("kernel",),
}
# Recurrent layers tflq trains (those the converter fuses, :func:`tflq.quant.qat.refuse_recurrent`):
# gate blocks side by side in the cell's kernel and recurrent kernel.
_GATED = {"LSTM": 4}
# Per-channel FakeQuant runs over the last kernel axis: the output channels for Conv2D and
# DepthwiseConv2D, but not for Conv2DTranspose (h, w, out, in); the converter also rejects
# per-channel FakeQuant on Dense. Conv1D: tfmot's per-axis LastValueQuantizer fails on a 3-D
# kernel inside fit (tfmot issue #362), and viewed as 4-D the converter rejects the
# per-channel FakeQuant behind Conv1D's kernel transpose ("mismatched quantized axes").
_PER_TENSOR_WEIGHTS = {"Dense", "Conv2DTranspose", "Conv1D"}
# Layers that only rearrange or select values keep their input's quantization.
_PASS_THROUGH = {
    "InputLayer", "Flatten", "Reshape", "Permute", "MaxPooling1D", "MaxPooling2D",
    "MaxPooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "Dropout", "SpatialDropout2D",
    "Cropping2D", "ZeroPadding2D", "Activation:linear",
    # TFLite's int8 AVERAGE_POOL_2D requires the same scale in and out.
    "AveragePooling1D", "AveragePooling2D",
}
# TFLite's int8 LOGISTIC, SOFTMAX and TANH have a fixed output scale (1/256, 1/256, 1/128;
# zero point -128, -128, 0): their input is quantized by the layer before. An output that other
# layers read gets a FakeQuant pinned to exactly that grid: without it the converter takes its
# scale from whatever same-scale op reads it (a reshape, a concatenation) and fails when two
# readers disagree ("quantization parameters violate the same scale constraint"). An output
# nothing reads (a classifier's probabilities) is left to the kernel: rounding it in training
# would put the loss on probabilities rounded to 0 (no gradient through the loss's clipping).
_FIXED_OUTPUT_RANGE = {"sigmoid": (0.0, 255 / 256), "softmax": (0.0, 255 / 256),
                       "tanh": (-1.0, 127 / 128)}
_FIXED_OUTPUT_SCALE = {"Activation:sigmoid", "Activation:softmax", "Activation:tanh",
                       "Softmax:None"}


def fixed_output_quantizer(activation: str):
    """The FakeQuant of TFLite's int8 output grid for ``activation`` (sigmoid, softmax, tanh)."""
    lo, hi = _FIXED_OUTPUT_RANGE[activation]
    return tfmot.quantization.keras.quantizers.FixedQuantizer(
        num_bits=8, init_min=lo, init_max=hi, narrow_range=False)
# tfmot's QuantizeWrapper cannot call these (their extra positional constants are lost):
# they stay unwrapped, and the converter lists any op left in float because of it.
_NOT_WRAPPABLE = {"TFOpLambda", "SlicingOpLambda"}
# TFLite has no separable convolution: tfmot splits these into a depthwise and a 1x1 conv
# with a quantized tensor between them, using its default int8 weights in every scheme.
SPLIT_BY_TFMOT = {"SeparableConv2D", "SeparableConv1D"}


def activation_quantizer(estimator: str | None = None, k: float = 3.0):
    """TFLite's int8 activation format: asymmetric per tensor, moving-average ranges.

    None uses tfmot's MovingAverageQuantizer (min/max); ``minmax``/``meanstd`` use
    :class:`tflq.quant.quantizers.ActivationQuantizer` with that range estimator.
    """
    if estimator is None:
        return tfmot.quantization.keras.quantizers.MovingAverageQuantizer(
            num_bits=8, per_axis=False, symmetric=False, narrow_range=False)
    return quantizers.ActivationQuantizer(estimator=estimator, k=k)


def _default_int8_weights(per_axis: bool, bits: int):
    if bits != 8:
        return quantizers.SymmetricQuantizer(num_bits=bits, per_axis=per_axis)
    return tfmot.quantization.keras.quantizers.LastValueQuantizer(
        num_bits=8, per_axis=per_axis, symmetric=True, narrow_range=True)


@dataclasses.dataclass(frozen=True)
class Scheme:
    """A named weight-quantization scheme.

    Attributes:
      name: registry key.
      make_weights: (per_axis, num_bits) → weight quantizer.
      weight_bits: default bits for weights.
      exact: whether models under this scheme run exactly on TFLite int8 kernels.
    """

    name: str
    make_weights: Callable
    weight_bits: int
    exact: bool

    def weight_quantizer(self, per_axis: bool, bits: int | None = None):
        return self.make_weights(per_axis, bits or self.weight_bits)


SCHEMES = {
    "default_int8": Scheme("default_int8", _default_int8_weights, 8, True),
    "pow2": Scheme("pow2", lambda per_axis, bits: quantizers.Pow2Quantizer(bits, per_axis), 4,
                   True),
    "asymmetric": Scheme("asymmetric",
                         lambda per_axis, bits: quantizers.AsymmetricQuantizer(bits, per_axis), 8,
                         False),
    "log_companding": Scheme(
        "log_companding", lambda per_axis, bits: quantizers.LogCompandingQuantizer(bits, per_axis),
        8, False),
    "linear": Scheme("linear", lambda per_axis, bits: quantizers.LinearQuantizer(bits, per_axis), 4,
                     False),
    "lsq": Scheme("lsq", lambda per_axis, bits: quantizers.LearnedStepQuantizer(bits, per_axis), 4,
                  True),
}


def get_scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        raise ValueError(f"Unknown scheme {name!r}. Available: {sorted(SCHEMES)}")
    return SCHEMES[name]


@dataclasses.dataclass(frozen=True)
class Override:
    """Changes the weights of matching layers.

    Attributes:
      match: regular expression on the layer name (``re.search``), or None.
      type: layer class name, or None. At least one of match/type.
      scheme: another scheme's weights for these layers, or None.
      weight_bits: bits for these layers' weights, or None.
    """

    match: str | None = None
    type: str | None = None
    scheme: str | None = None
    weight_bits: int | None = None

    def __post_init__(self):
        for key, kind in (("match", str), ("type", str), ("scheme", str), ("weight_bits", int)):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
                raise ValueError(f"Override {key} must be {kind.__name__}. Received: {key}={value!r}")
        if self.match is None and self.type is None:
            raise ValueError("An override needs 'match' (layer-name regex) or 'type'.")
        if self.match is not None:
            try:
                re.compile(self.match)
            except re.error as e:
                raise ValueError(f"Override match {self.match!r} is not a valid regex: {e}") from e
        if self.scheme is not None:
            get_scheme(self.scheme)
        if self.weight_bits is not None and not 2 <= self.weight_bits <= 8:
            raise ValueError(f"Override weight_bits must be in [2, 8]. "
                             f"Received: weight_bits={self.weight_bits}")

    def matches(self, layer) -> bool:
        if self.type is not None and type(layer).__name__ != self.type:
            return False
        return self.match is None or re.search(self.match, layer.name) is not None

    @classmethod
    def from_dict(cls, data: dict) -> Override:
        if not isinstance(data, Mapping):
            raise ValueError("An override is a table such as {\"match\": \"conv.*\", \"scheme\": "
                             f"\"pow2\"}}. Received: {data!r}")
        unknown = set(data) - {"match", "type", "scheme", "weight_bits"}
        if unknown:
            raise ValueError(f"Unknown override key(s) {sorted(unknown)}. "
                             "Known: ['match', 'scheme', 'type', 'weight_bits']")
        return cls(**data)


def _activation_name(layer) -> str | None:
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None) if activation is not None else None


_RELU_LIKE = {"relu", "relu6"}


def _is_relu(layer) -> bool:
    kind = type(layer).__name__
    if kind == "ReLU":
        return True
    return kind == "Activation" and _activation_name(layer) in _RELU_LIKE


def _consumers(layer) -> list:
    return [node.outbound_layer for node in layer._outbound_nodes]


def feeds_only_relu(layer) -> bool:
    """True when the layer's output reaches only a ReLU (possibly through pass-through
    layers such as a folded BatchNormalization). TFLite fuses the ReLU into the op and
    quantizes once, with the ReLU's range; quantizing here too would round twice."""
    consumers = _consumers(layer)
    while len(consumers) == 1:
        consumer = consumers[0]
        if _is_relu(consumer):
            return True
        if f"{type(consumer).__name__}:{_activation_name(consumer)}" != "Activation:linear":
            return False
        consumers = _consumers(consumer)
    return False


def config_for(layer, scheme: Scheme, overrides: Sequence[Override] = (),
               activations: Callable = activation_quantizer, calibrated_deploy: bool = False):
    """The LayerQuantizeConfig for one layer under a scheme (None: leave the layer unwrapped).

    ``activations`` makes each activation quantizer (see :func:`activation_quantizer`).
    ``calibrated_deploy``: the model deploys through the converter's calibrated int8 of its
    trained weights (recurrent models, :mod:`tflq.ptq.deploy`), which stores Dense kernels
    per channel, so Dense trains per channel too; an LSTM's kernels train per gate
    (:class:`tflq.quant.quantizers.GateBlocks`), as TFLite's int8 LSTM stores them.
    """
    activation_quantizer = activations  # noqa: F811 (the factory chosen for this model)

    fused_relu_follows = feeds_only_relu(layer)

    kind = type(layer).__name__
    if kind == "InputLayer" or kind in _NOT_WRAPPABLE:
        return None
    if kind in _PASS_THROUGH or f"{kind}:{_activation_name(layer)}" in _PASS_THROUGH:
        # Wrapped with no quantizer: it keeps its input's scale, and a model input feeding
        # it (ZeroPadding2D first, as in ResNet50) still gets quantized by quantize_apply.
        return LayerQuantizeConfig()
    if kind in _KERNELS or kind in _GATED:
        chosen, bits = scheme, None
        for override in overrides:
            if override.matches(layer):
                chosen = get_scheme(override.scheme) if override.scheme else chosen
                bits = override.weight_bits or bits
        per_axis = kind not in _PER_TENSOR_WEIGHTS or (calibrated_deploy and kind == "Dense")

        def weight_quantizer(axis: bool):
            if calibrated_deploy and chosen.name == "default_int8" and bits in (None, 8):
                # The range of the weights as they are (tfmot's holds the last training
                # step's), which is what the converter's calibration reads.
                return quantizers.SymmetricQuantizer(num_bits=8, per_axis=axis)
            return chosen.weight_quantizer(axis, bits)

        if kind in _GATED:  # TFLite's int8 LSTM: int8 gate matrices, an int8 output
            return LayerQuantizeConfig(output=activation_quantizer(), weights={
                attr: quantizers.GateBlocks(weight_quantizer(True), _GATED[kind])
                for attr in ("cell.kernel", "cell.recurrent_kernel")})
        weights = {attr: weight_quantizer(per_axis) for attr in _KERNELS[kind]}
        if kind == "DepthwiseConv2D":  # per output channel (c·m), not per multiplier (m)
            weights = {a: quantizers.DepthwiseChannels(q) for a, q in weights.items()}
        activation = _activation_name(layer)
        activations = {"activation": activation_quantizer()} if activation not in (
            None, "linear") else {}
        output = activation_quantizer() if not activations and not fused_relu_follows else None
        if activation in _FIXED_OUTPUT_RANGE and _consumers(layer):
            output = fixed_output_quantizer(activation)
        return LayerQuantizeConfig(weights=weights, activations=activations, output=output)
    if f"{kind}:{_activation_name(layer)}" in _FIXED_OUTPUT_SCALE:
        return LayerQuantizeConfig(output=fixed_output_quantizer(_activation_name(layer) or "softmax")
                                   if _consumers(layer) else None)
    if fused_relu_follows:
        return LayerQuantizeConfig()
    return LayerQuantizeConfig(output=activation_quantizer())


def check_overrides(layers: Sequence, overrides: Sequence[Override]) -> None:
    """Refuses overrides that match no layer (a typo would silently do nothing)."""
    for override in overrides:
        if not any(override.matches(layer) for layer in layers):
            names = [layer.name for layer in layers]
            raise ValueError(f"Override {dataclasses.asdict(override)} matches no layer. "
                             f"Layers: {names}")


class LayerQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """A QuantizeConfig from a table.

    Args:
      weights: ``{attribute: quantizer}`` for the layer's weights (e.g. ``{"kernel": pow2}``).
      activations: ``{attribute: quantizer}`` for activation functions (``{"activation": …}``).
      output: quantizer for the layer's output, or None.

    Quantizers may be given as instances, aliases or serialized dicts.
    """

    def __init__(self, weights: Mapping | None = None, activations: Mapping | None = None,
                 output=None):
        self.weights = {k: quantizers.get(v) for k, v in (weights or {}).items()}
        self.activations = {k: quantizers.get(v) for k, v in (activations or {}).items()}
        self.output = quantizers.get(output)

    def get_weights_and_quantizers(self, layer):
        return [(self._attribute(layer, name), q) for name, q in self.weights.items()]

    def get_activations_and_quantizers(self, layer):
        return [(self._attribute(layer, name), q) for name, q in self.activations.items()]

    def set_quantize_weights(self, layer, quantize_weights: Sequence):
        self._set(layer, list(self.weights), quantize_weights, "weights")

    def set_quantize_activations(self, layer, quantize_activations: Sequence):
        self._set(layer, list(self.activations), quantize_activations, "activations")

    def get_output_quantizers(self, layer):
        return [self.output] if self.output is not None else []

    def get_config(self):
        return {"weights": {k: quantizers.serialize(q) for k, q in self.weights.items()},
                "activations": {k: quantizers.serialize(q) for k, q in self.activations.items()},
                "output": quantizers.serialize(self.output) if self.output is not None else None}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    @staticmethod
    def _attribute(layer, name):
        owner = layer  # a dotted name reaches into a sublayer ("cell.kernel" of an LSTM)
        for part in name.split("."):
            if not hasattr(owner, part):
                raise ValueError(f"Layer {layer.name!r} ({type(layer).__name__}) has no "
                                 f"attribute {name!r} to quantize.")
            owner = getattr(owner, part)
        return owner

    @classmethod
    def _set(cls, layer, names, values, what):
        if len(names) != len(values):
            raise ValueError(f"Layer {layer.name!r}: expected {len(names)} quantized {what}, "
                             f"got {len(values)}.")
        for name, value in zip(names, values, strict=True):
            path, _, attribute = name.rpartition(".")
            setattr(cls._attribute(layer, path) if path else layer, attribute, value)


