"""A SavedModel written by ``model.save`` before TF 2.5 keeps its Keras graph inside
saved_model.pb (Basic Pitch's is one); tf_keras revives its custom layers, saved without
their code, as layers that run their traced functions but cannot be rebuilt from a config.
tflq converts such a model by its signature, and for the features that rewrite or train the
layer graph reads that graph, keeps each weightless revived layer as it was saved, and checks
the graph against the signature. A revived layer with weights is still refused, named; the
advice (load it with its layer classes) works."""

from __future__ import annotations

import os

import numpy as np
import pytest
from tensorflow.core.protobuf import saved_model_pb2
from tf_keras.protobuf import saved_metadata_pb2

import tflq
from tflq import saved_model_graph
from tflq.interpreter import TfliteModel
from tflq.models import load_model, tf_keras
from tflq.tflite_inspect import find_float_ops


class Scale(tf_keras.layers.Layer):
    """A custom layer (no weights) whose code is not in the SavedModel."""

    def call(self, x):
        return x * 2.0


class Offset(tf_keras.layers.Layer):
    """A custom layer with a weight of its own, whose code is not in the SavedModel."""

    def build(self, input_shape):
        self.offset = self.add_weight(name="offset", shape=(int(input_shape[-1]),),
                                      initializer="ones")

    def call(self, x):
        return x + self.offset


def _pre_tf25_saved_model(folder: str, custom=None) -> str:
    """A tf_keras SavedModel rewritten the way TF <= 2.4 wrote it: the Keras metadata of each
    object inside saved_model.pb, no keras_metadata.pb. ``custom``: the custom layer (a
    :class:`Scale` by default)."""
    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input((4,), name="x")
    custom = custom if custom is not None else Scale(name="scale")
    hidden = tf_keras.layers.Dense(6, activation="relu", name="hidden")(custom(inputs))
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


def _x(n: int = 48) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 4)).astype("float32")


def test_equalize_reads_the_graph_and_keeps_the_custom_layer_as_saved(tmp_path, capsys):
    path = _pre_tf25_saved_model(str(tmp_path))
    loaded = load_model(path)
    assert loaded.flavor == "saved_model"  # converted by its signature, as before
    x = _x()
    want = loaded.predict({"x": x[:32]})[0]  # the SavedModel's own signature
    result = tflq.convert(path, x[:32], x[32:], modes=("int8",), equalize=True, progress=False,
                          latency_runs=2, layer_error_samples=0)
    content = result.modes["int8"].tflite
    assert find_float_ops(content) == []
    got = TfliteModel(content).run({"x": x[:32]})[0]  # inside the calibrated ranges
    assert np.abs(got - want).max() <= 0.05 * (want.max() - want.min())  # int8 steps only
    notes = " ".join(result.report["modes"][0]["notes"])
    assert ("Keras graph read from the SavedModel, 1 custom layer(s) saved without their code "
            "kept as saved (their traced functions): ['scale (Scale)'], outputs checked on 32 "
            "calibration samples") in notes
    assert "cross-layer equalization" in notes
    assert "Keras graph read from the SavedModel" in capsys.readouterr().err


def test_qat_trains_around_the_custom_layer_and_deploys_through_the_converter(tmp_path):
    path = _pre_tf25_saved_model(str(tmp_path))
    x = _x(112)
    y = load_model(path).predict({"x": x})[0].argmax(-1)
    result = tflq.qat(path, (x[:48], y[:48]), (x[48:], y[48:]), epochs=1, batch_size=16,
                      verbose=0, latency_runs=2, layer_error_samples=0)
    assert find_float_ops(result.modes["int8"].tflite) == []
    notes = " ".join(result.report["modes"][0]["notes"])
    assert "layer(s) of the model's own classes" in notes and "scale" in notes
    assert "1 custom layer(s) saved without their code kept as saved" in notes
    assert result.report["qat"]["parity"]["top1_agreement"] >= 0.9  # QAT model vs .tflite


def test_a_revived_layer_rebuilds_as_itself_and_two_loads_never_share_it(tmp_path):
    path = _pre_tf25_saved_model(str(tmp_path))
    first, second = (load_model(path).to_tf_keras([_x(4)]) for _ in range(2))
    a, b = first.get_layer("scale"), second.get_layer("scale")
    assert a is not b and type(a) is not type(b)
    assert type(a).from_config(a.get_config()) is a
    assert type(b).from_config(b.get_config()) is b
    copy = tf_keras.models.clone_model(first)  # tflq's rewrites and tfmot copy by config
    assert copy.get_layer("scale") is a
    copy.set_weights(first.get_weights())
    np.testing.assert_array_equal(copy(_x(4)).numpy(), first(_x(4)).numpy())


def test_a_graph_that_differs_from_its_signature_is_refused(tmp_path):
    path = _pre_tf25_saved_model(str(tmp_path))
    loaded = load_model(path)

    def shifted(feed):  # a signature computing something else than the graph
        return [out + 1.0 for out in loaded.predict(feed)]

    with pytest.raises(ValueError, match=r"The Keras graph inside SavedModel .* does not compute "
                                         r"what its serving signature does \(output 0 differs"):
        saved_model_graph.layer_graph(path, path, tf_keras.models.load_model, shifted, ("x",),
                                      [_x(4)])
    with pytest.raises(ValueError, match="needs samples to check it against the signature"):
        saved_model_graph.layer_graph(path, path, tf_keras.models.load_model, loaded.predict,
                                      ("x",), [])


def test_refusal_names_a_custom_layer_with_weights_saved_without_its_code(tmp_path):
    path = _pre_tf25_saved_model(str(tmp_path), Offset(name="offset"))
    x = _x()
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"is a SavedModel whose Keras graph \(inside "
                       r"saved_model.pb, written before TF 2.5\) has custom layer\(s\) saved "
                       r"without their code.*\['offset \(Offset\)'\]. Load it with its layer "
                       "classes"):
        tflq.convert(path, x[:8], x[8:], modes=("int8",), equalize=True, out=str(out))
    assert not out.exists()
    # The advice works: loaded with its class, the same files equalize and convert.
    model = tf_keras.models.load_model(path, compile=False, custom_objects={"Offset": Offset})
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
