"""Models with layers of their own classes (Basic Pitch's CQT front end): tflq's QAT graph
quantizes such a layer's output but cannot see the ops inside, so a .tflite converted from
that graph left them in float (166 float ops on Basic Pitch, int8 refused). Range estimators
now work on the converter's calibrated model and QAT deploys through the converter's
calibration of the trained weights, as for LSTMs; both say why in the report."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tflq
from tflq.models import tf_keras
from tflq.quant import graph, qat
from tflq.tflite_inspect import find_float_ops

L = tf_keras.layers
FAST = {"latency_runs": 2, "layer_error_samples": 0, "progress": False}


class _Spectral(L.Layer):
    """A user's front end: a fixed filter bank applied with raw TensorFlow ops."""

    def build(self, input_shape):
        filters = np.random.default_rng(7).normal(size=(3, 3, int(input_shape[-1]), 4))
        self.bank = self.add_weight(name="bank", shape=filters.shape, trainable=False,
                                    initializer=tf_keras.initializers.Constant(filters))

    def call(self, x):
        return tf.nn.relu(tf.nn.conv2d(x, self.bank, 1, "SAME"))


def _model(nested: bool = False):
    tf_keras.utils.set_random_seed(0)
    inp = L.Input((8, 8, 2), name="img")
    if nested:
        inner_in = L.Input((8, 8, 2))
        front = tf_keras.Model(inner_in, _Spectral(name="spectral")(inner_in), name="inner")(inp)
    else:
        front = _Spectral(name="spectral")(inp)
    x = L.Conv2D(4, 3, padding="same", activation="relu")(front)
    x = L.GlobalAveragePooling2D()(x)
    return tf_keras.Model(inp, L.Dense(3, activation="softmax", name="probs")(x))


def _x(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 8, 8, 2)).astype(np.float32)


def test_opaque_layers_names_the_models_own_classes_nested_and_wrapped():
    assert graph.opaque_layers(_model()) == ["spectral"]
    assert graph.opaque_layers(_model(nested=True)) == ["inner/spectral"]
    assert graph.opaque_layers(qat.quantize_model(_model(), "default_int8")) == ["quant_spectral"]
    builtin = tf_keras.Sequential([L.Input((4,)), L.Dense(2), L.Activation("relu")])
    assert graph.opaque_layers(builtin) == []


@pytest.mark.parametrize("estimator", ["minmax", "mse"])
def test_range_estimators_quantize_the_ops_inside_a_custom_layer(estimator):
    model, x = _model(), _x(48)
    result = tflq.convert(model, x[:32], x[32:], modes=("int8",), range_estimator=estimator,
                          num_calibration_samples=32, **FAST)
    content = result.modes["int8"].tflite
    assert find_float_ops(content) == []  # int8-only: the filter bank's CONV_2D is int8 too
    notes = " ".join(result.report["modes"][0]["notes"])
    assert "layer(s) of the model's own classes ['spectral']" in notes
    assert f"range estimator {estimator} on the converter's calibrated model" in notes
    # The float model is the reference.
    deployed = tflq.interpreter.TfliteModel(content).run({"img": x[32:]})[0]
    assert np.abs(deployed - model.predict(x[32:], verbose=0)).max() < 0.1


def test_qat_deploys_a_custom_layer_model_through_the_converters_calibration(tmp_path):
    model, x = _model(), _x(96, seed=1)
    y = model.predict(x, verbose=0).argmax(-1)
    result = tflq.qat(model, (x[:64], y[:64]), (x[64:], y[64:]), epochs=1, batch_size=16,
                      verbose=0, out=str(tmp_path), latency_runs=2, layer_error_samples=0)
    content = result.modes["int8"].tflite
    assert find_float_ops(content) == []
    notes = " ".join(result.report["modes"][0]["notes"])
    assert "layer(s) of the model's own classes ['spectral']" in notes
    assert "the converter's int8 of the QAT-trained float weights, calibrated on 64" in notes
    assert result.report["qat"]["deploys_exactly"] is True
    assert result.report["qat"]["parity"]["top1_agreement"] >= 0.9  # QAT model vs .tflite
