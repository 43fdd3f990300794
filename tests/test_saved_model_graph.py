"""A SavedModel written by ``model.save`` before TF 2.5 keeps its Keras graph inside
saved_model.pb (Basic Pitch's is one). tflq converts it by its signature; the features that
rewrite or train the layer graph refuse it with the reason: custom layers saved without their
code, named. Loaded with its layer classes (what the refusal advises), the same model runs
those features."""

from __future__ import annotations

import os

import numpy as np
import pytest
from tensorflow.core.protobuf import saved_model_pb2
from tf_keras.protobuf import saved_metadata_pb2

import tflq
from tflq.models import load_model, tf_keras


class Scale(tf_keras.layers.Layer):
    """A custom layer whose code is not in the SavedModel."""

    def call(self, x):
        return x * 2.0


def _pre_tf25_saved_model(folder: str) -> str:
    """A tf_keras SavedModel rewritten the way TF <= 2.4 wrote it: the Keras metadata of each
    object inside saved_model.pb, no keras_metadata.pb."""
    inputs = tf_keras.Input((4,), name="x")
    hidden = tf_keras.layers.Dense(6, activation="relu", name="hidden")(Scale(name="scale")(inputs))
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(3, name="out")(hidden))
    path = os.path.join(folder, "sm")
    model.save(path, save_format="tf")
    metadata = saved_metadata_pb2.SavedMetadata()
    with open(os.path.join(path, "keras_metadata.pb"), "rb") as f:
        metadata.ParseFromString(f.read())
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    nodes = saved.meta_graphs[0].object_graph_def.nodes
    for node in metadata.nodes:
        nodes[node.node_id].user_object.identifier = node.identifier
        nodes[node.node_id].user_object.metadata = node.metadata
    with open(os.path.join(path, "saved_model.pb"), "wb") as f:
        f.write(saved.SerializeToString())
    os.remove(os.path.join(path, "keras_metadata.pb"))
    return path


def test_refusal_names_the_custom_layers_saved_without_their_code(tmp_path):
    path = _pre_tf25_saved_model(str(tmp_path))
    assert load_model(path).flavor == "saved_model"  # converted by its signature, as before
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"is a SavedModel whose Keras graph \(inside "
                       r"saved_model.pb, written before TF 2.5\) has custom layer\(s\) saved "
                       r"without their code.*\['scale \(Scale\)'\]. Load it with its layer "
                       "classes"):
        tflq.convert(path, x[:8], x[8:], modes=("int8",), equalize=True, out=str(out))
    assert not out.exists()
    # The advice works: loaded with its class, the same files equalize and convert.
    model = tf_keras.models.load_model(path, compile=False, custom_objects={"Scale": Scale})
    result = tflq.convert(model, x[:8], x[8:], modes=("int8",), equalize=True)
    assert result.modes["int8"].tflite


def test_a_savedmodel_with_no_keras_graph_keeps_its_refusal(tmp_path):
    module = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
    path = str(tmp_path / "plain")
    import tensorflow as tf

    tf.saved_model.save(module, path)  # no Keras metadata anywhere
    assert not os.path.exists(os.path.join(path, "keras_metadata.pb"))
    with pytest.raises(ValueError, match="is a SavedModel without Keras metadata: it has no "
                                         "layer graph to train or rewrite"):
        load_model(path).to_tf_keras([])
