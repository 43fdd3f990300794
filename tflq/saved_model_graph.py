"""The Keras layer graph inside a SavedModel loaded by its signature: read and checked for the
features that rewrite or train the graph (:func:`layer_graph`), or the refusal saying why
there is none (:func:`no_layer_graph`).

A SavedModel written by ``model.save`` before TF 2.5 keeps its Keras graph inside
``saved_model.pb``. tf_keras loads it, reviving custom layers saved without their code as
layers that run their traced functions but cannot be rebuilt from their config. tflq keeps
each such layer as it is: every copy of the graph (BatchNorm folding, QAT wrapping) reuses the
loaded layer object, which is safe because it holds no weights (a revived layer with weights
is refused: training or rewriting would share them).
"""

from __future__ import annotations

import numpy as np

__all__ = ["no_layer_graph", "is_revived", "layer_graph", "GRAPH_RTOL"]

GRAPH_RTOL = 1e-5  # the Keras graph's outputs against the signature's, relative to the range


def is_revived(layer) -> bool:
    """Is ``layer`` one tf_keras revived from a SavedModel without its code?"""
    return type(layer).__module__.endswith("saved_model.load")


def layer_graph(source: str, path: str, load_keras, predict, input_names, samples: list):
    """The Keras graph of the SavedModel at ``path``, checked against its signature.

    Args:
      source: what the user passed.
      path: the SavedModel folder.
      load_keras: ``tf_keras.models.load_model``.
      predict: the signature's function from a batch dict (by input name) to its outputs,
        in the order of the model's output names.
      input_names: the signature's input names, in input order.
      samples: model inputs to check the graph on (at least one).

    Returns:
      ``(model, notes)``: the tf_keras model (its revived layers rebuild as themselves) and
      ``{"what", "kept", "max_relative_error", "checked_samples"}``.

    Raises:
      ValueError: no Keras graph (:func:`no_layer_graph` says why), a revived layer with
        weights, no samples, or a graph whose outputs differ from the signature's by more
        than :data:`GRAPH_RTOL` of their range.
    """
    from tflq.keras3 import max_relative_error, sample_count

    try:
        keras = load_keras(path, compile=False)
    except Exception:  # noqa: BLE001 - no Keras graph in it at all
        keras = None
    if not hasattr(keras, "layers"):  # a tf.Module SavedModel: an object, no Keras graph
        keras = None
    revived = [layer for layer in _all_layers(keras) if is_revived(layer)]
    weighted = [layer for layer in revived if layer.weights]
    if keras is None or not getattr(keras, "_is_graph_network", False) or weighted:
        raise ValueError(no_layer_graph(source, keras, weighted))
    if not samples:
        raise ValueError(f"Reading the Keras graph of SavedModel {source!r} needs samples to "
                         "check it against the signature on.")
    _rebuild_as_themselves(revived)
    worst = 0.0
    for sample in samples:
        parts = sample if isinstance(sample, (list, tuple)) else [sample]
        want = predict(dict(zip(input_names, parts, strict=True)))
        error, index = max_relative_error(want, _output_list(keras(sample, training=False)))
        if error > GRAPH_RTOL:
            raise ValueError(
                f"The Keras graph inside SavedModel {source!r} does not compute what its "
                f"serving signature does (output {index} differs by {error:.3g} of its range, "
                f"allowed {GRAPH_RTOL:g}); bring the Keras model file.")
        worst = max(worst, error)
    what = "Keras graph read from the SavedModel" + (
        f", {len(revived)} custom layer(s) saved without their code kept as saved (their traced "
        f"functions): {_named(revived)}" if revived else "")
    return keras, {"what": what, "kept": [layer.name for layer in revived],
                   "max_relative_error": worst, "checked_samples": sample_count(samples)}


def _named(layers) -> str:
    """``['name (Class)', …]`` of the first six ``layers`` (`` …`` when there are more)."""
    names = [f"{layer.name} ({type(layer).__name__})" for layer in layers]
    return f"{names[:6]}{' …' if len(names) > 6 else ''}"


def _all_layers(model):
    """The layers of ``model`` and of the models nested in it (a revived layer not entered)."""
    for layer in getattr(model, "layers", None) or []:
        yield layer
        if not is_revived(layer):
            yield from _all_layers(layer)


def _output_list(out) -> list:
    """Keras outputs in the order of a SavedModel's output names (a dict by sorted key)."""
    if isinstance(out, dict):
        return [np.asarray(out[k]) for k in sorted(out)]
    return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]


def _rebuild_as_themselves(revived):
    """Makes ``from_config`` of each revived layer's class return the layer of that name:
    tflq's graph copies and tfmot rebuild layers from their configs, which a revived layer
    cannot do. tfmot finds classes by name, and two layers of one saved class may be revived
    as two classes, so each class resolves every revived layer of the model. Each load
    revives its own classes, so two models never share them."""
    by_name = {layer.name: layer for layer in revived}

    def from_config(_cls, config, custom_objects=None):
        return by_name[config["name"]]

    for cls in {type(layer) for layer in revived}:
        cls.from_config = classmethod(from_config)


def no_layer_graph(source: str, keras, weighted=()) -> str:
    """Why a SavedModel loaded by its signature has no layer graph tflq can rewrite or train.

    Args:
      source: what the user passed.
      keras: what ``tf_keras.models.load_model`` made of it (None: no Keras graph at all).
      weighted: its revived layers that hold weights (tflq would share them).
    """
    if keras is None:
        return (f"{source!r} is a SavedModel without Keras metadata: it has no layer graph to "
                "train or rewrite. Bring the Keras model file.")
    held = ("custom layer(s) saved without their code and holding weights, which tf_keras "
            "revives as layers nothing can rebuild (tflq keeps weightless ones as saved): "
            f"{_named(weighted)}" if weighted else "layers tf_keras loads")
    return (f"{source!r} is a SavedModel whose Keras graph (inside saved_model.pb, written "
            f"before TF 2.5) has {held}. Load it with its layer classes "
            "(tf_keras.models.load_model(path, custom_objects=...)) in a 'module:function' "
            "factory and pass that as the model.")
