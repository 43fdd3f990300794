"""Quantization-aware training over Keras models with tflq's quantizers.

One table-driven :class:`LayerQuantizeConfig` serves every layer: it names the weight
attributes to quantize (each with its quantizer), the activation attributes, and whether
the layer's output is quantized. Schemes build these tables per layer type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from tflq import quantizers
from tflq.quantizers import tfmot


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
        if not hasattr(layer, name):
            raise ValueError(f"Layer {layer.name!r} ({type(layer).__name__}) has no attribute "
                             f"{name!r} to quantize.")
        return getattr(layer, name)

    @staticmethod
    def _set(layer, names, values, what):
        if len(names) != len(values):
            raise ValueError(f"Layer {layer.name!r}: expected {len(names)} quantized {what}, "
                             f"got {len(values)}.")
        for name, value in zip(names, values, strict=True):
            setattr(layer, name, value)


def custom_objects() -> dict:
    """Everything needed to deserialize a tflq QAT model (``quantize_scope``/load_model)."""
    objects = {cls.__name__: cls for cls in quantizers._REGISTRY.values()}
    objects["LayerQuantizeConfig"] = LayerQuantizeConfig
    return objects


def quantize_scope():
    """``with quantize_scope():`` to load or apply tflq QAT models."""
    return tfmot.quantization.keras.quantize_scope(custom_objects())


class _KeepLayoutScheme(tfmot.quantization.keras.QuantizeScheme):
    """Applies every layer's own config; the only layout rewrite is quantizing the model's
    inputs. tfmot's other rewrites fail on many real models (BatchNormalization not after a
    conv, TFOpLambda); tflq folds BatchNormalization itself (:func:`fold_batch_norms`)."""

    class _InputsOnly:
        def apply(self, model, layer_quantize_map):
            from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
                default_8bit_transforms,
            )
            from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations import (  # noqa: E501
                model_transformer,
            )

            return model_transformer.ModelTransformer(
                model, [default_8bit_transforms.InputLayerQuantize()],
                set(layer_quantize_map), layer_quantize_map).transform()

    def get_layout_transformer(self):
        return self._InputsOnly()

    def get_quantize_registry(self):
        from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
            default_8bit_quantize_registry,
        )

        return default_8bit_quantize_registry.Default8BitQuantizeRegistry()


def quantize_model(model, scheme: str = "default_int8", overrides: Sequence = ()):
    """Wraps every layer of a tf_keras Sequential or Functional model for QAT.

    Args:
      model: a built tf_keras Sequential or Functional model.
      scheme: a name from :data:`tflq.schemes.SCHEMES`.
      overrides: :class:`tflq.schemes.Override` objects or dicts.

    Returns:
      The QAT model (float weights copied from ``model``).

    Raises:
      ValueError: unknown scheme, an override that matches nothing, a subclassed, Keras 3 or
        nested model.
    """
    from tflq import schemes
    from tflq.keras_compat import _is_keras3, tf_keras

    chosen = schemes.get_scheme(scheme) if isinstance(scheme, str) else scheme
    overrides = [o if isinstance(o, schemes.Override) else schemes.Override.from_dict(o)
                 for o in overrides]
    if _is_keras3(model):
        raise ValueError("QAT needs a tf_keras model; this is a Keras 3 model. Rebuild it with "
                         "tf_keras (same layers) or convert it without QAT (PTQ works).")
    if not isinstance(model, tf_keras.Model) or not (
            isinstance(model, tf_keras.Sequential) or model._is_graph_network):
        raise ValueError(f"QAT needs a Sequential or Functional tf_keras model. Received: "
                         f"{type(model).__name__} (subclassed models have no layer graph to "
                         "wrap: rebuild it with the Functional API).")
    nested = [layer.name for layer in model.layers if isinstance(layer, tf_keras.Model)]
    if nested:
        raise ValueError(f"Models nested inside models are not wrapped yet: {nested}. "
                         "Flatten them into one Functional model first.")
    schemes.check_overrides(model.layers, overrides)
    model = fold_batch_norms(model)
    annotate = tfmot.quantization.keras.quantize_annotate_layer

    def clone(layer):
        copy = layer.__class__.from_config(layer.get_config())
        config = schemes.config_for(layer, chosen, overrides)
        return copy if config is None else annotate(copy, config)

    annotated = tf_keras.models.clone_model(model, clone_function=clone)
    annotated.set_weights(model.get_weights())
    with quantize_scope():
        return tfmot.quantization.keras.quantize_apply(annotated, scheme=_KeepLayoutScheme())


_FOLDABLE = {"Conv2D", "DepthwiseConv2D", "Dense", "Conv2DTranspose"}


def _bn_scale_shift(bn):
    gamma = bn.gamma.numpy() if bn.gamma is not None else 1.0
    beta = bn.beta.numpy() if bn.beta is not None else 0.0
    scale = gamma / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    return scale, beta - bn.moving_mean.numpy() * scale


def _producer(layer):
    nodes = layer._inbound_nodes
    if len(nodes) != 1:
        return None
    inbound = nodes[0].inbound_layers
    return inbound if not isinstance(inbound, (list, tuple)) else (
        inbound[0] if len(inbound) == 1 else None)


def fold_batch_norms(model):
    """Folds inference-mode BatchNormalization into the layer before it.

    ``Conv2D``/``DepthwiseConv2D``/``Conv2DTranspose``/``Dense`` followed only by a
    BatchNormalization (last axis) absorb its scale and shift into kernel and bias; the BN
    becomes a linear ``Activation`` (a pass-through). A BatchNormalization on a 4-D tensor
    after anything else becomes a 1×1 ``DepthwiseConv2D`` with the same per-channel affine
    map, so it quantizes like any other weight layer. Float outputs are unchanged up to
    float rounding.
    """
    from tflq.keras_compat import tf_keras

    layers = tf_keras.layers
    plan = {}  # layer name -> ("fold_into", bn) | ("folded", producer) | ("depthwise", bn)
    for layer in model.layers:
        if type(layer).__name__ != "BatchNormalization":
            continue
        axis = layer.axis[0] if isinstance(layer.axis, (list, tuple)) else layer.axis
        rank = len(layer.input_shape)
        if axis not in (-1, rank - 1):
            continue
        producer = _producer(layer)
        if (producer is not None and type(producer).__name__ in _FOLDABLE
                and len(producer._outbound_nodes) == 1
                and getattr(producer.activation, "__name__", "linear") == "linear"
                and producer.name not in plan):
            plan[producer.name] = ("fold_into", layer)
            plan[layer.name] = ("folded", producer)
        elif rank == 4:
            plan[layer.name] = ("depthwise", layer)
    if not plan:
        return model

    def clone(layer):
        action = plan.get(layer.name, (None,))[0]
        if action == "fold_into":
            config = layer.get_config()
            config["use_bias"] = True
            return layer.__class__.from_config(config)
        if action == "folded":
            return layers.Activation("linear", name=layer.name)
        if action == "depthwise":
            return layers.DepthwiseConv2D(1, use_bias=True, name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    folded = tf_keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        target = folded.get_layer(layer.name)
        action, other = plan.get(layer.name, (None, None))
        if action == "fold_into":
            scale, shift = _bn_scale_shift(other)
            weights = layer.get_weights()
            kernel = weights[0]
            bias = weights[1] if layer.use_bias else np.zeros_like(shift)
            kind = type(layer).__name__
            if kind == "DepthwiseConv2D":
                h, w, cin, mult = kernel.shape
                kernel = kernel * scale.reshape(cin, mult)
            elif kind == "Conv2DTranspose":
                kernel = kernel * scale.reshape(1, 1, -1, 1)
            else:
                kernel = kernel * scale
            target.set_weights([kernel, bias * scale + shift])
        elif action == "depthwise":
            scale, shift = _bn_scale_shift(layer)
            target.set_weights([scale.reshape(1, 1, -1, 1), shift])
        elif action != "folded":
            target.set_weights(layer.get_weights())
    return folded
