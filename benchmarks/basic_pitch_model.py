"""Basic Pitch's Keras graph with its own layer classes: ``benchmarks.basic_pitch_model:load``.

The corpus's Basic Pitch model (basic-pitch 0.4.0, a SavedModel written by TF 2.4) keeps its
Keras graph inside ``saved_model.pb``, and its custom layers (the CQT front end, harmonic
stacking, the reshapes) live in the package's Python code. Loaded without that code, tf_keras
revives them as opaque layers that nothing can rebuild, so the features that rewrite or wrap
the layer graph (CLE, QAT, compression) refuse the model, naming those layers.

This loader is what a user of tflq writes for such a model (a ``module:function`` factory):
it imports the classes from the package's own wheel (fetched and sha256-checked by
:mod:`benchmarks.corpus`; pure Python, imported from the zip) and loads the SavedModel with
them. basic-pitch 0.4.0's classes do not rebuild from their own ``get_config`` (it writes
``sample_rate`` where ``CQT2010v2`` takes ``sr``, and ``name``/``trainable``/``dtype`` that
their constructors do not take), so each gets a ``from_config`` that passes only the
arguments its constructor takes; nothing else of the package changes, and the weights are the
SavedModel's.
"""

from __future__ import annotations

import inspect
import os
import sys

from benchmarks import corpus

__all__ = ["NAME", "load", "layer_classes"]

NAME = "basic_pitch_nmp"
# Constructor argument names basic-pitch's get_config writes under another key.
_RENAMED = {"sample_rate": "sr"}


def _fixed(cls):
    """``cls`` with a ``from_config`` that passes only what its constructor takes."""
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}

    @classmethod
    def from_config(klass, config):
        config = {_RENAMED.get(k, k): v for k, v in config.items()}
        layer = klass(**{k: v for k, v in config.items() if k in accepted})
        if "name" not in accepted and "name" in config:
            layer._name = config["name"]
        return layer

    return type(cls.__name__, (cls,), {"from_config": from_config,
                                       "__module__": cls.__module__})


def layer_classes(cache: str | None = None) -> dict:
    """``{class name: fixed class}`` of every Keras layer class of basic-pitch's modules."""
    from tflq.models import tf_keras

    wheel = corpus.fetch_archive(corpus.MODELS[NAME], cache or corpus.DEFAULT_CACHE)
    if wheel not in sys.path:
        sys.path.insert(0, wheel)  # a pure-Python wheel imports from the zip
    import logging

    logging.disable(logging.WARNING)  # basic_pitch/__init__ warns about optional runtimes
    try:
        from basic_pitch import nn
        from basic_pitch.layers import nnaudio, signal
    finally:
        logging.disable(logging.NOTSET)
    found = {}
    for module in (nn, signal, nnaudio):
        for name, value in vars(module).items():
            if isinstance(value, type) and issubclass(value, tf_keras.layers.Layer):
                found[name] = _fixed(value)
    return found


def load(cache: str | None = None):
    """The Basic Pitch tf_keras model with its layer classes (see the module docstring)."""
    from tflq.models import tf_keras

    cache = cache or os.environ.get("TFLQ_CORPUS_CACHE") or corpus.DEFAULT_CACHE
    path = corpus.fetch_model(NAME, cache)
    return tf_keras.models.load_model(path, compile=False, custom_objects=layer_classes(cache))
