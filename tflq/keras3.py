"""Keras 3 → tf_keras: a faithful rebuild of Functional and Sequential graphs, and the
numerical check every graph rewrite must pass before its result is used.

tfmot (QAT, pruning, clustering) and tflq's own graph passes work on tf_keras models only,
while most models people bring today are Keras 3 models. :func:`rebuild_keras3` walks a
Keras 3 graph node by node and calls a tf_keras copy of every layer on the copied tensors:

* layer configs are translated: dtype policies (dicts in Keras 3) become their names,
  serialized initializers, regularizers and constraints become tf_keras objects, and
  config keys tf_keras does not know (``quantization_config``, ``lora_rank``, …) are
  dropped and listed in :attr:`Rebuild.dropped`;
* nested Functional and Sequential models are inlined (their layers join the outer graph);
* weights are copied layer by layer.

The rebuild is never trusted: :func:`check_outputs` runs both models on sample data and
raises :class:`RewriteError` (a bug of ours, never bad input) when they differ by more than
the tolerance, naming the first layer whose copy computes something else on the same
inputs. Subclassed models with no layer graph are refused with a ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["KERAS3_RTOL", "Rebuild", "RewriteError", "check_outputs", "checked_rebuild",
           "graph_of", "max_relative_error", "rebuild_keras3", "sample_count", "with_output_names"]

# The rebuild runs the same TensorFlow kernels in the same order: outputs must agree to float
# rounding, i.e. within 1e-5 of each output's range (issue #11's bound).
KERAS3_RTOL = 1e-5
_UNKNOWN_KWARG = (re.compile(r"unexpected keyword argument '(\w+)'"),
                  re.compile(r"Keyword argument not understood:\s*'?(\w+)"),
                  re.compile(r"Unrecognized keyword arguments?[^']*'(\w+)'"))


class RewriteError(RuntimeError):
    """A graph rewrite (Keras 3 rebuild, BatchNorm folding, splits, inlining) changed what the
    model computes: an internal error of tflq, never a problem with the user's input."""


@dataclasses.dataclass
class Rebuild:
    """A tf_keras copy of a Keras 3 model.

    Attributes:
      model: the tf_keras model.
      copies: ``[(Keras 3 layer, tf_keras layer)]`` in graph order (nested models inlined).
      dropped: ``{layer name: [config keys tf_keras does not know, dropped]}``.
      inlined: names of nested models whose layers were inlined.
    """

    model: object
    copies: list
    dropped: dict
    inlined: list


def graph_of(model):
    """The Keras 3 Function (Functional, or a built Sequential's inner Functional) holding the
    model's layer graph.

    Raises:
      ValueError: a subclassed model, or a Sequential that was never built.
    """
    import keras

    if isinstance(model, keras.Sequential):
        functional = getattr(model, "_functional", None)
        if functional is None:
            raise ValueError(f"Keras 3 Sequential model {model.name!r} has no input shape; "
                             "build it (keras.Input first) before converting.")
        return functional
    if hasattr(model, "_nodes_by_depth") and getattr(model, "_inputs_struct", None) is not None:
        return model
    raise ValueError(f"Model {model.name!r} is a subclassed Keras 3 model "
                     f"({type(model).__module__}.{type(model).__name__}) with no layer graph: "
                     "rebuild it with the Functional or Sequential API.")


def _plain_object(value, dropped: list):
    """A Keras 3 serialized object as something tf_keras accepts (see module docstring)."""
    import tf_keras

    if isinstance(value, dict) and "class_name" in value and "config" in value:
        module = str(value.get("module") or "")
        if value["class_name"] in ("DTypePolicy", "FloatDTypePolicy", "Policy"):
            return value["config"]["name"]
        kinds = {"keras.initializers": tf_keras.initializers,
                 "keras.regularizers": tf_keras.regularizers,
                 "keras.constraints": tf_keras.constraints}
        kind = kinds.get(module)
        if kind is not None and hasattr(kind, value["class_name"]):
            # An initializer's extra arguments do not matter: the weights are copied.
            keys = [] if kind is tf_keras.initializers else dropped
            return _construct(getattr(kind, value["class_name"]), dict(value["config"]),
                              keys, value["class_name"])
    if isinstance(value, dict):
        return {k: _plain_object(v, dropped) for k, v in value.items()}
    return value


def _construct(factory: Callable, config: dict, dropped: list, what: str):
    """``factory(**config)`` (or ``from_config``), dropping keyword arguments it rejects."""
    for _ in range(len(config) + 1):
        try:
            return factory(**config)
        except (TypeError, ValueError) as e:
            key = next((m.group(1) for p in _UNKNOWN_KWARG for m in [p.search(str(e))] if m),
                       None)
            if key is None or key not in config:
                raise ValueError(f"Keras 3 {what} config cannot be read by tf_keras: "
                                 f"{type(e).__name__}: {e}") from e
            dropped.append(key)
            config.pop(key)
    raise ValueError(f"Keras 3 {what} config cannot be read by tf_keras.")  # pragma: no cover


def _copy_layer(layer, dropped: dict):
    import tf_keras

    class_name = type(layer).__name__
    cls = getattr(tf_keras.layers, class_name, None)
    if cls is None:
        raise ValueError(f"Layer {layer.name!r} is a Keras 3 {class_name} "
                         f"({type(layer).__module__}), which tf_keras has no counterpart for.")
    keys: list = []
    config = _plain_object(layer.get_config(), keys)
    config = {k: v for k, v in config.items() if not (k == "quantization_config" and v is None)}
    copy = _construct(lambda **c: cls.from_config(c), config, keys, f"{class_name} {layer.name!r}")
    if keys:
        dropped[layer.name] = sorted(set(keys))
    return copy


def _walk(graph, inputs: list, apply: Callable, inlined: list):
    """Runs a Keras 3 graph's nodes with ``apply(layer, args, kwargs)`` on ``inputs``; nested
    Functional/Sequential models are walked into (inlined)."""
    import keras

    values = {id(t): v for t, v in zip(graph.inputs, inputs, strict=True)}
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if not node.operation or node.is_input:
                continue
            args, kwargs = node.arguments.fill_in(values)
            op = node.operation
            if isinstance(op, keras.Model):
                inner = graph_of(op)
                inlined.append(op.name)
                flat = [v for v in keras.tree.flatten((args, kwargs)) if v is not None]
                outputs = _walk(inner, flat[:len(inner.inputs)], apply, inlined)
                outputs = outputs[0] if len(outputs) == 1 else outputs
            else:
                outputs = apply(op, args, kwargs)
            for kt, value in zip(node.outputs, keras.tree.flatten(outputs), strict=True):
                values[id(kt)] = value
    return [values[id(t)] for t in graph.outputs]


def rebuild_keras3(model) -> Rebuild:
    """A tf_keras model computing what the Keras 3 ``model`` computes (see module docstring).

    Raises:
      ValueError: a subclassed model (named by class), or a layer tf_keras cannot build.
    """
    import tf_keras

    graph = graph_of(model)
    copies, dropped, inlined, layer_of = [], {}, [], {}

    def apply(layer, args, kwargs):
        if id(layer) not in layer_of:
            layer_of[id(layer)] = _copy_layer(layer, dropped)
            copies.append((layer, layer_of[id(layer)]))
        # Keras 3 records mask=None and the like; tf_keras would store them in its node.
        return layer_of[id(layer)](*args, **{k: v for k, v in kwargs.items() if v is not None})

    # Named as tflq names the Keras 3 model's inputs (its input tensors' names): an unnamed
    # keras.Input has the tensor name "keras_tensor" but the layer name "input_layer", and the
    # calibration data of the rebuild's converter are keyed by the former.
    new_inputs = [tf_keras.Input(shape=tuple(t.shape[1:]), batch_size=None, dtype=t.dtype,
                                 name=t.name) for t in graph.inputs]
    outputs = _walk(graph, new_inputs, apply, inlined)
    rebuilt = tf_keras.Model(new_inputs, outputs[0] if len(outputs) == 1 else outputs,
                             name=model.name)
    for original, copy in copies:
        try:
            copy.set_weights(original.get_weights())
        except ValueError as e:
            raise RewriteError(f"Keras 3 → tf_keras rebuild: layer {original.name!r} "
                               f"({type(original).__name__}) takes other weights in tf_keras: "
                               f"{e}") from e
    return Rebuild(rebuilt, copies, dropped, inlined)


def max_relative_error(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]):
    """The worst output's max |reference − candidate| divided by its range (max − min, or 1
    for a constant output); and that output's index."""
    worst, index = 0.0, 0
    for i, (a, b) in enumerate(zip(reference, candidate, strict=True)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            return float("inf"), i
        span = float(a.max() - a.min()) if a.size else 1.0
        error = float(np.max(np.abs(a - b))) / (span if span > 0 else 1.0) if a.size else 0.0
        if not np.isfinite(error) or error > worst:
            worst, index = (error if np.isfinite(error) else float("inf")), i
    return worst, index


def _as_list(outputs) -> list[np.ndarray]:
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    return [np.asarray(o, np.float32) for o in outputs]


def check_outputs(what: str, reference: Callable, candidate: Callable, samples: list,
                  rtol: float, locate: Callable | None = None) -> float:
    """Raises :class:`RewriteError` unless ``candidate`` reproduces ``reference`` on ``samples``.

    Args:
      what: the rewrite's name, for the message.
      reference, candidate: functions from one model input (an array, or a list in input
        order) to the outputs.
      samples: model inputs to compare on.
      rtol: allowed max |difference| relative to each output's range.
      locate: called with the failing sample when the check fails; returns a sentence naming
        the first layer that differs.

    Returns:
      The worst relative error seen.
    """
    worst = 0.0
    for sample in samples:
        error, index = max_relative_error(_as_list(reference(sample)),
                                          _as_list(candidate(sample)))
        worst = max(worst, error)
        if error > rtol:
            where = locate(sample) if locate is not None else ""
            raise RewriteError(f"internal error: {what} changed the model's output {index} by "
                               f"{error:.3g} of its range (allowed {rtol:g}). {where}".strip())
    return worst


def locate_keras3_difference(model, rebuilt: Rebuild, sample, rtol: float = KERAS3_RTOL) -> str:
    """Walks the Keras 3 graph eagerly on ``sample`` and runs each tf_keras copy on the very
    inputs the original layer received; names the first layer whose outputs differ."""
    import tensorflow as tf

    copy_of = {id(original): copy for original, copy in rebuilt.copies}
    found = []

    def apply(layer, args, kwargs):
        out = layer(*args, **kwargs)
        if not found and id(layer) in copy_of:
            mine = copy_of[id(layer)](*tf.nest.map_structure(_tensor, args),
                                      **tf.nest.map_structure(_tensor, kwargs))
            error, _ = max_relative_error(_as_list(out), _as_list(mine))
            if error > rtol:
                found.append(f"First layer that differs: {layer.name!r} "
                             f"({type(layer).__name__}), by {error:.3g} of its output range.")
        return out

    inputs = sample if isinstance(sample, (list, tuple)) else [sample]
    _walk(graph_of(model), [tf.convert_to_tensor(x) for x in inputs], apply, [])
    return found[0] if found else "No single layer differs on its own inputs."


def _tensor(value):
    import tensorflow as tf

    return tf.convert_to_tensor(value) if hasattr(value, "shape") else value


def checked_rebuild(model, source: str, samples: list):
    """:func:`rebuild_keras3` of the Keras 3 ``model`` (loaded from ``source``), checked on
    ``samples`` (model inputs: arrays, or lists in input order) within :data:`KERAS3_RTOL`.

    Returns ``(tf_keras model, notes)``; the notes say what was inlined and dropped, the worst
    relative error and how many samples were checked.

    Raises:
      ValueError: a subclassed model, or a layer tf_keras cannot build.
      RewriteError: the copy computes something else (names the first layer that differs).
    """
    rebuilt = rebuild_keras3(model)
    worst = check_outputs(
        f"the Keras 3 → tf_keras rebuild of {source!r}",
        lambda x: model(x, training=False), lambda x: rebuilt.model(x, training=False),
        samples, KERAS3_RTOL, lambda x: locate_keras3_difference(model, rebuilt, x))
    return rebuilt.model, {"what": "Keras 3 model rebuilt as tf_keras",
                           "inlined": rebuilt.inlined, "dropped_config_keys": rebuilt.dropped,
                           "max_relative_error": worst, "checked_samples": sample_count(samples)}


def sample_count(samples: list) -> int:
    """How many samples ``samples`` (batches: arrays, or lists in input order) hold."""
    return int(sum(len(s[0] if isinstance(s, (list, tuple)) else s) for s in samples))


def with_output_names(keras, names):
    """``keras`` (tf_keras) with an identity per output named as ``names``, so the .tflite
    signature keeps them: QAT wrappers rename layers quant_<name>, and a Keras 3 model's
    signature names (``output_0``) differ from its tf_keras rebuild's layer names."""
    import tf_keras

    if list(keras.output_names) == list(names):
        return keras
    return tf_keras.Model(keras.inputs, [
        tf_keras.layers.Activation("linear", name=name)(tensor)
        for tensor, name in zip(keras.outputs, names, strict=True)])
