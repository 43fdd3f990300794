"""Recurrent Keras models (LSTM, GRU, SimpleRNN, RNN, Bidirectional, ConvLSTM…) → TFLite.

Converted with a free batch dimension, a Keras RNN keeps a ``tf.TensorListReserve`` whose
element shape is unknown, and the converter stops ("requires element_shape to be static
during TF Lite transformation pass"), in every mode. The TFLite guide's recipe for Keras
RNNs is a concrete function traced with a **static batch of 1**; the converter then fuses
a tf_keras LSTM into ``UNIDIRECTIONAL_SEQUENCE_LSTM`` (which has float and int8 kernels).
This module owns that path:

* :func:`find_recurrent_layers` finds recurrent layers, also inside nested models and
  wrappers (``Bidirectional``, ``TimeDistributed``, tfmot's ``QuantizeWrapper``);
* :func:`inference_copy` gives the tf_keras model to trace: recurrent layers with
  ``dropout``/``recurrent_dropout`` get a copy with both at 0 (they do nothing at inference,
  but a non-zero ``recurrent_dropout`` makes tf_keras fall back to a generic ``while`` loop
  that the converter does not fuse and whose int8 calibration crashed the process here);
  the copy is checked against the original on probe inputs before use;
* :func:`static_batch_converter` traces the batch-1 function with the signature names the
  rest of tflq expects (inputs by name, outputs as ``output_names``);
* :func:`static_batch_note` is the line the report and stderr carry;
* :meth:`StaticBatch.check_mode` refuses, before the converter runs, what is known to fail
  or crash: ``int16x8`` (no 16x8 LSTM kernel), ``int8`` for recurrent layers without a fused
  kernel (GRU, SimpleRNN…: the calibrator segfaulted on their ``WHILE`` loop).
  :func:`plan_static_batch` puts it all together for a loaded model. ``--range_estimator``
  and ``--range_search`` work on the converter's calibrated model
  (:mod:`tflq.ptq.converter_route`): tflq's QAT graph cannot hold recurrent layers.

A .tflite converted this way takes batches of exactly 1:
:class:`tflq.interpreter.TfliteModel` runs larger batches sample by sample.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tflq.keras3 import RewriteError, check_outputs

__all__ = ["RECURRENT_BASES", "InferenceCopy", "StaticBatch", "find_recurrent_layers",
           "inference_copy", "plan_static_batch", "unfused_layers",
           "probe_inputs", "static_batch_converter", "static_batch_note"]

# A layer is recurrent when one of its classes (tf_keras or Keras 3) has one of these names.
RECURRENT_BASES = frozenset({"RNN", "LSTM", "GRU", "SimpleRNN", "Bidirectional", "ConvRNN",
                             "ConvLSTM", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D", "CuDNNLSTM",
                             "CuDNNGRU"})
# Keys that only act in training: set to 0 in the copy that is converted.
_TRAINING_ONLY_KEYS = ("dropout", "recurrent_dropout")
# Only dropout changes between the copy and the original, and dropout is off at inference:
# outputs must agree to float rounding (the bound tflq uses for every exact rewrite).
_COPY_RTOL = 1e-5
_PROBE_SAMPLES = 4
_PROBE_SEED = 0


def _is_recurrent(layer) -> bool:
    return any(cls.__name__ in RECURRENT_BASES for cls in type(layer).__mro__)


def _children(layer) -> list:
    """Layers held inside ``layer``: a nested model's layers, a wrapper's layer."""
    wrapped = getattr(layer, "layer", None)
    inner = list(getattr(layer, "layers", None) or [])
    return inner + ([wrapped] if wrapped is not None and wrapped is not layer else [])


def find_recurrent_layers(model) -> list[str]:
    """Names of the recurrent layers of a tf_keras or Keras 3 model, in layer order.

    Nested models and wrappers are searched; a recurrent layer inside a nested model is named
    ``outer/inner``. A wrapper around a recurrent layer (``Bidirectional``, tfmot's
    ``QuantizeWrapper``) is reported once, under the wrapper's name.
    """
    found = []

    def visit(layer, prefix):
        if _is_recurrent(layer):
            found.append(prefix + layer.name)
            return
        if getattr(layer, "layers", None) is None:  # a wrapper, or a plain layer
            if any(find_recurrent_layers(child) or _is_recurrent(child)
                   for child in _children(layer)):
                found.append(prefix + layer.name)
            return
        inner_prefix = prefix if layer is model else f"{prefix}{layer.name}/"
        for child in layer.layers:
            visit(child, inner_prefix)

    visit(model, "")
    return found


def _embedding_sizes(model) -> list[int]:
    sizes, stack = [], [model]
    while stack:
        layer = stack.pop()
        if any(cls.__name__ == "Embedding" for cls in type(layer).__mro__):
            sizes.append(int(layer.input_dim))
        stack.extend(_children(layer))
    return sizes


def probe_inputs(model, inputs, samples: int = _PROBE_SAMPLES, seed: int = _PROBE_SEED) -> list:
    """Deterministic inputs to check a rewrite on: token ids below the smallest
    ``Embedding.input_dim`` when the model embeds tokens (any input dtype), else standard
    normal values; free dims other than the batch become 8.

    Args:
      model: the Keras model (searched for Embedding layers).
      inputs: :class:`tflq.signature.TensorSpec` of each input.

    Returns:
      One sample: an array (one input) or a list in input order, with ``samples`` rows.
    """
    rng = np.random.default_rng(seed)
    vocabulary = min(_embedding_sizes(model), default=0)
    arrays = []
    for spec in inputs:
        shape = (samples, *[8 if d is None else d for d in spec.shape])
        if vocabulary:
            values = rng.integers(0, vocabulary, shape)
        else:
            values = rng.standard_normal(shape)
        arrays.append(values.astype(spec.dtype))
    return arrays[0] if len(arrays) == 1 else arrays


@dataclasses.dataclass(frozen=True)
class InferenceCopy:
    """The tf_keras model to convert and what was changed to get it.

    Attributes:
      model: the model itself, or a copy with training-only recurrent settings at 0.
      changed: ``{layer name: {key: original value}}`` of the settings set to 0.
      max_relative_error: the copy's largest output difference from the original on the
        probe inputs, relative to each output's range (0.0 when nothing changed).
    """

    model: object
    changed: dict
    max_relative_error: float = 0.0


def _zero_training_only(config, changed: dict):
    """Sets ``dropout``/``recurrent_dropout`` of recurrent layer configs to 0, in place."""
    if isinstance(config, dict):
        inner = config.get("config")
        if config.get("class_name") in RECURRENT_BASES and isinstance(inner, dict):
            before = {k: inner[k] for k in _TRAINING_ONLY_KEYS if inner.get(k)}
            if before:
                changed[inner.get("name", config["class_name"])] = before
                inner.update({k: 0.0 for k in before})
        for value in config.values():
            _zero_training_only(value, changed)
    elif isinstance(config, list):
        for value in config:
            _zero_training_only(value, changed)


def inference_copy(model, inputs) -> InferenceCopy:
    """A tf_keras model whose recurrent layers convert to fused TFLite ops.

    Args:
      model: a tf_keras Functional or Sequential model.
      inputs: its input specs (:class:`tflq.signature.TensorSpec`), for the probe inputs.

    Returns:
      An :class:`InferenceCopy`; ``model`` itself when no recurrent layer has dropout.

    Raises:
      tflq.keras3.RewriteError: the copy computes something else (a bug of ours).
    """
    import tf_keras

    changed = {}
    try:
        config = model.get_config()
    except NotImplementedError:  # subclassed: no config to copy, trace the model as it is
        return InferenceCopy(model, {})
    _zero_training_only(config, changed)
    if not changed:
        return InferenceCopy(model, {})
    rebuild = (tf_keras.Sequential if isinstance(model, tf_keras.Sequential)
               else tf_keras.Model).from_config
    copy = rebuild(config)
    copy.set_weights(model.get_weights())
    worst = check_outputs("setting recurrent dropout to 0 for conversion",
                          lambda x: model(x, training=False), lambda x: copy(x, training=False),
                          [probe_inputs(model, inputs)], _COPY_RTOL)
    return InferenceCopy(copy, changed, worst)


def static_batch_converter(model, inputs, output_names):
    """A TFLite converter for ``model`` traced with a static batch of 1.

    Args:
      model: the Keras model to trace (called with ``training=False``).
      inputs: input specs (:class:`tflq.signature.TensorSpec`); the signature's inputs keep
        their names.
      output_names: the signature's output names, in the model's output order.

    Returns:
      ``tf.lite.TFLiteConverter.from_concrete_functions([fn], model)``.
    """
    import tensorflow as tf

    names = [spec.name for spec in inputs]
    specs = {spec.name: tf.TensorSpec((1, *spec.shape), spec.dtype, name=spec.name)
             for spec in inputs}

    def call(**feed):
        args = [feed[name] for name in names]
        out = model(args if len(args) > 1 else args[0], training=False)
        out = out if isinstance(out, (list, tuple)) else [out]
        if len(out) != len(output_names):
            raise RewriteError(f"internal error: the model has {len(out)} outputs, the "
                               f"signature expects {len(output_names)} ({list(output_names)}).")
        return dict(zip(output_names, out, strict=True))

    function = tf.function(call).get_concrete_function(**specs)
    return tf.lite.TFLiteConverter.from_concrete_functions([function], model)


def static_batch_note(layers, copy: InferenceCopy | None = None, rebuilt: bool = False) -> str:
    """The report line for a static-batch conversion (also printed on stderr)."""
    kinds = "recurrent layer" if len(layers) == 1 else "recurrent layers"
    shown = ", ".join(repr(name) for name in layers[:4]) + (" …" if len(layers) > 4 else "")
    line = (f"converted with a static batch of 1 because of {kinds} {shown} (the .tflite "
            "takes one sample per invoke; tflq runs batches sample by sample)")
    if rebuilt:
        line += ("; converted from the checked tf_keras rebuild of the Keras 3 model (Keras 3's "
                 "own recurrent layers trace to unfused while loops)")
    if copy is not None and copy.changed:
        what = ", ".join(f"{layer} ({', '.join(f'{k}={v:g}' for k, v in keys.items())})"
                         for layer, keys in copy.changed.items())
        line += (f"; training-only settings set to 0 in the converted copy: {what} (outputs "
                 f"checked: max difference {copy.max_relative_error:.2g} of range)")
    return line


@dataclasses.dataclass(frozen=True)
class StaticBatch:
    """How a recurrent model is converted: the tf_keras model traced, and the report line.

    Attributes:
      layers: the recurrent layers found (why the batch is static).
      model: the model traced (an :func:`inference_copy`, tf_keras).
      note: the line for the report and stderr (:func:`static_batch_note`).
    """

    layers: tuple[str, ...]
    model: object
    note: str
    unfused: tuple[str, ...] = ()

    def check_mode(self, mode: str) -> None:
        """Refuses what is known not to work on this model, before the converter runs.

        Raises:
          ValueError: ``int16x8`` (no 16x8 LSTM kernel; with float ops allowed the .tflite
            fails to prepare), ``int8`` with recurrent layers TFLite has no fused kernel for
            (the converter's calibration of their ``WHILE`` loop crashed the process here).
        """
        if mode == "int16x8":
            raise ValueError(
                f"Mode 'int16x8' does not support recurrent layer(s) {list(self.layers)}: the "
                "converter has no 16x8 kernel for UNIDIRECTIONAL_SEQUENCE_LSTM (nor for a "
                "token-id CAST), and with allow_float_ops the .tflite it writes fails to prepare "
                "in LiteRT ('output_state != nullptr'). Use int8, dynamic or float16.")
        if mode == "int8" and self.unfused:
            raise ValueError(
                f"Mode {mode!r} cannot calibrate recurrent layer(s) {list(self.unfused)}: TFLite "
                "has a fused integer kernel only for LSTM (tanh/sigmoid, with bias, not "
                "unrolled); these convert to a WHILE loop whose int8 calibration crashes the "
                "TFLite calibrator (segfault, TF 2.21). float32, float16 and dynamic convert.")

    def converter(self, inputs, output_names):
        """A fresh converter (:func:`static_batch_converter`)."""
        return static_batch_converter(self.model, inputs, output_names)


def _fuses(layer) -> bool:
    """True for a tf_keras LSTM the converter fuses into UNIDIRECTIONAL_SEQUENCE_LSTM (the
    configuration tf_keras runs through its fused ``lstm`` function), and for a wrapper whose
    recurrent layers all fuse."""
    inner = [getattr(layer, n, None) for n in ("forward_layer", "backward_layer", "layer")]
    inner = [x for x in inner if x is not None and x is not layer]
    if inner:
        return all(_fuses(x) for x in inner)
    if type(layer).__name__ != "LSTM":
        return False
    config = layer.get_config()
    return (config.get("activation") == "tanh" and config.get("recurrent_activation") == "sigmoid"
            and not config.get("recurrent_dropout") and not config.get("unroll")
            and config.get("use_bias", True))


def unfused_layers(model) -> list[str]:
    """Recurrent layers of a tf_keras model that convert to a ``WHILE`` loop, not a fused op."""
    found, stack = [], [model]
    while stack:
        layer = stack.pop()
        if layer is not model and _is_recurrent(layer):
            if not _fuses(layer):
                found.append(layer.name)
            continue
        stack.extend(reversed(getattr(layer, "layers", None) or []))
    return found


def plan_static_batch(loaded) -> StaticBatch | None:
    """The static-batch plan for a loaded model, None when it has no recurrent layer.

    A Keras 3 model is converted from its checked tf_keras rebuild (``loaded.to_tf_keras``,
    checked on :func:`probe_inputs`): Keras 3's own LSTM traces to a generic ``while`` loop
    with resource variables that the converter does not fuse.

    Args:
      loaded: a :class:`tflq.models.LoadedModel`.

    Raises:
      ValueError: a Keras 3 model tf_keras cannot rebuild (names the reason).
      tflq.keras3.RewriteError: a rewrite changed the model's outputs (a bug of ours).
    """
    keras = loaded.keras_model
    layers = tuple(find_recurrent_layers(keras)) if keras is not None else ()
    if not layers:
        return None
    rebuilt = loaded.flavor == "keras3"
    if rebuilt:
        try:
            keras = loaded.to_tf_keras([probe_inputs(keras, loaded.inputs)])
        except ValueError as e:
            raise ValueError(f"{loaded.source!r} has recurrent layer(s) {list(layers)}, which "
                             "convert only from a tf_keras rebuild of the Keras 3 model, and "
                             f"the rebuild failed: {e}") from e
    copy = inference_copy(keras, loaded.inputs)
    return StaticBatch(layers, copy.model, static_batch_note(list(layers), copy, rebuilt),
                       tuple(unfused_layers(copy.model)))
