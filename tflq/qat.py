"""Quantization-aware training over Keras models with tflq's quantizers.

One table-driven :class:`LayerQuantizeConfig` serves every layer: it names the weight
attributes to quantize (each with its quantizer), the activation attributes, and whether
the layer's output is quantized. Schemes build these tables per layer type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
