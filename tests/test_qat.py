"""QAT over whole models: BatchNorm folding keeps the float function, every layer is
wrapped, QAT models convert with their own ranges, save/load round-trips, bad input."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import EXAMPLE_DIR, tiny_data

from tflq import interpreter, tflite_inspect
from tflq.data import read_idx
from tflq.models import tf_keras, wrap_model
from tflq.ptq import convert
from tflq.quant import fold, qat, schemes

L = tf_keras.layers
# default_int8 weights: the converter recomputes max/127 in float32; codes agree, values
# differ by float rounding of the scale times at most 127.
FLOAT32_SCALE_ROUNDING = 1e-6
# Folding rescales kernels in float32: outputs agree to float rounding, relative to their size.
FOLD_RTOL = 1e-4


@pytest.fixture(scope="module")
def fashion():
    model = tf_keras.models.load_model(os.path.join(EXAMPLE_DIR, "fashion_mnist_cnn.keras"),
                                       compile=False)
    x = read_idx(os.path.join(EXAMPLE_DIR, "evaluation-images-idx3-ubyte.gz"))
    y = read_idx(os.path.join(EXAMPLE_DIR, "evaluation-labels-idx1-ubyte.gz"))
    return model, (x[:400, ..., None] / 255.0).astype(np.float32), y[:400].astype(np.int64)


def _qat_tflite(model, tmp_path):
    converter = wrap_model(model, "qat").make_converter(str(tmp_path))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


def _coverage_model():
    i = tf_keras.Input((16, 16, 3), name="img")
    h = L.Rescaling(1 / 255.0)(i)
    h = L.Conv2D(8, 3, padding="same")(h)
    h = L.PReLU(shared_axes=[1, 2])(h)
    h = L.SeparableConv2D(8, 3, padding="same", activation="relu")(h)
    b = L.DepthwiseConv2D(3, padding="same")(h)
    b = L.BatchNormalization()(b)            # folds into the depthwise conv
    h = L.Add()([h, b])
    h = L.BatchNormalization()(h)            # not after a conv: becomes a 1x1 depthwise conv
    h = L.Multiply()([h, b])
    h = L.Conv2DTranspose(4, 3, strides=2, padding="same")(h)
    h = L.UpSampling2D()(h)
    h = L.Permute((2, 1, 3))(h)
    h = L.Concatenate()([h, h])
    h = L.AveragePooling2D(8)(h)
    h = L.Reshape((-1,))(h)
    return tf_keras.Model(i, L.Dense(5)(h))


def _train_a_step(model, x, targets):
    model.compile("adam", "mse")
    model.fit(x, targets, epochs=1, batch_size=16, verbose=0)


def test_fold_batch_norms_keeps_the_float_function(fashion):
    model, x, _ = fashion
    folded = fold.fold_batch_norms(model)
    assert not any(type(layer).__name__ == "BatchNormalization" for layer in folded.layers)
    ref = model.predict(x, verbose=0)
    np.testing.assert_allclose(folded.predict(x, verbose=0), ref,
                               atol=FOLD_RTOL * np.abs(ref).max())


def test_fold_standalone_and_depthwise_batch_norms():
    tf_keras.utils.set_random_seed(0)
    model = _coverage_model()
    x = np.random.default_rng(0).uniform(0, 255, (32, 16, 16, 3)).astype(np.float32)
    _train_a_step(model, x, np.random.default_rng(1).normal(size=(32, 5)))
    folded = fold.fold_batch_norms(model)
    kinds = [type(layer).__name__ for layer in folded.layers]
    # depthwise+BN folded; standalone BN and Rescaling became 1x1 depthwise convs
    assert "BatchNormalization" not in kinds and "Rescaling" not in kinds
    assert kinds.count("DepthwiseConv2D") == 3
    ref = model.predict(x, verbose=0)
    np.testing.assert_allclose(folded.predict(x, verbose=0), ref,
                               atol=FOLD_RTOL * np.abs(ref).max())


@pytest.mark.parametrize("scheme", ["default_int8", "pow2"])
def test_qat_bundled_cnn_converts_fully_integer_with_parity(fashion, tmp_path, scheme):
    model, x, y = fashion
    q = qat.quantize_model(model, scheme)
    q.compile(tf_keras.optimizers.Adam(1e-4),
              tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    q.fit(x, y, epochs=1, batch_size=50, verbose=0)
    content = _qat_tflite(q, tmp_path)
    assert tflite_inspect.find_float_ops(content) == []
    tflite = interpreter.TfliteModel(content).run({"image": x})[0]
    keras_out = q.predict(x, verbose=0)
    assert np.mean(tflite.argmax(1) == keras_out.argmax(1)) >= 0.99


def test_every_layer_type_is_wrapped_and_float_ops_are_listed(tmp_path):
    tf_keras.utils.set_random_seed(0)
    model = _coverage_model()
    x = np.random.default_rng(0).uniform(0, 255, (32, 16, 16, 3)).astype(np.float32)
    targets = np.random.default_rng(1).normal(size=(32, 5))
    _train_a_step(model, x, targets)
    q = qat.quantize_model(model, "default_int8")
    wrapped = {type(layer.layer).__name__ for layer in q.layers if hasattr(layer, "layer")}
    assert "SeparableConv2D" not in wrapped  # split into depthwise + 1x1 conv
    assert {"Conv2D", "PReLU", "DepthwiseConv2D", "Add", "Multiply",
            "Conv2DTranspose", "UpSampling2D", "Concatenate", "AveragePooling2D",
            "Dense"} <= wrapped
    _train_a_step(q, x, targets)
    assert tflite_inspect.find_float_ops(_qat_tflite(q, tmp_path)) == []


def test_qat_model_save_and_reload(fashion, tmp_path):
    model, x, _ = fashion
    q = qat.quantize_model(model, "pow2", overrides=[{"type": "Dense", "scheme": "default_int8"}])
    expected = q.predict(x[:20], verbose=0)
    for name in ("q.keras", "q.h5"):
        q.save(tmp_path / name)
        with qat.quantize_scope():
            again = tf_keras.models.load_model(tmp_path / name)
        np.testing.assert_array_equal(again.predict(x[:20], verbose=0), expected)


def test_overrides_change_the_weights_of_matching_layers(fashion):
    model, x, _ = fashion
    q = qat.quantize_model(model, "default_int8",
                           overrides=[{"match": "^conv2d$", "scheme": "pow2", "weight_bits": 3}])
    configs = {layer.layer.name: layer.quantize_config for layer in q.layers
               if hasattr(layer, "quantize_config")}
    kernel_quantizer = configs["conv2d"].weights["kernel"]
    assert kernel_quantizer.alias == "pow2" and kernel_quantizer.num_bits == 3
    assert type(configs["conv2d_1"].weights["kernel"]).__name__ == "LastValueQuantizer"


@pytest.mark.parametrize("kwargs, message", [
    ({"scheme": "int3"}, r"Unknown scheme 'int3'. Available: \["),
    ({"overrides": [{"match": "no_such_layer", "weight_bits": 4}]}, "matches no layer"),
    ({"overrides": [{"weight_bits": 4}]}, "needs 'match'"),
    ({"overrides": [{"match": "conv", "weight_bits": 12}]}, r"weight_bits must be in \[2, 8\]"),
    ({"overrides": [{"match": "(", "weight_bits": 4}]}, "not a valid regex"),
    ({"overrides": [{"match": "conv", "bits": 4}]}, r"Unknown override key\(s\) \['bits'\]"),
])
def test_bad_scheme_arguments(fashion, kwargs, message):
    with pytest.raises(ValueError, match=message):
        qat.quantize_model(fashion[0], **kwargs)


def test_models_qat_refuses_with_a_reason():
    class Sub(tf_keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="subclassed models have no layer graph"):
        qat.quantize_model(Sub())


class _Double(tf_keras.layers.Layer):
    """A user's own layer class (Basic Pitch has several): not registered with tf_keras."""

    def call(self, x):
        return x * 2.0


def test_a_model_with_its_own_layer_classes_is_wrapped():
    # tfmot rebuilds the model from its config by class name: the model's own classes go
    # into its scope (before: "Unable to clone model ... custom Keras layers").
    inputs = tf_keras.Input((4,))
    hidden = _Double(name="double")(tf_keras.layers.Dense(5, name="d1")(inputs))
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(2, name="d2")(hidden))
    student = qat.quantize_model(model)
    assert type(student.get_layer("quant_double").layer) is _Double
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    student(x, training=True)  # tfmot's ranges start at ±6: one batch moves them a little
    got, want = np.ravel(student(x, training=False)), np.ravel(model(x))
    assert np.corrcoef(got, want)[0, 1] > 0.99  # int8 steps of ~12/255 on a ±1 output


def test_keras3_models_are_rebuilt_and_wrapped():
    k3 = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="k3_dense")])
    q = qat.quantize_model(k3)
    assert "k3_dense" in {layer.layer.name for layer in q.layers if hasattr(layer, "layer")}


def test_models_nested_in_models_are_inlined_and_wrapped():
    inner = tf_keras.Sequential([tf_keras.Input((4,)), L.Dense(3, name="inner_dense")],
                                name="inner")
    outer = tf_keras.Sequential([tf_keras.Input((4,)), inner, L.Dense(2, name="outer_dense")])
    q = qat.quantize_model(outer)
    wrapped = {layer.layer.name for layer in q.layers if hasattr(layer, "layer")}
    assert {"inner_dense", "outer_dense"} <= wrapped
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    q(x, training=True)  # the first training-mode call sets the activation ranges
    np.testing.assert_allclose(q.predict(x, verbose=0), outer.predict(x, verbose=0),
                               atol=0.1)  # 8-bit fake quantization of a tiny Dense stack


def test_scheme_table_declares_deployment_truth():
    assert schemes.get_scheme("default_int8").exact and schemes.get_scheme("pow2").exact
    assert not schemes.get_scheme("asymmetric").exact
    assert not schemes.get_scheme("log_companding").exact


def test_tiny_data_helper_is_learnable():
    # The rule of tiny_data (the brightest third of the image is the class) can be learned:
    # the tiny CNN of the QAT tests, trained 20 epochs on 300 samples, gets most of 300 new
    # samples right (chance: 1/3). (conftest's session model, 2 epochs on 64 samples, is
    # only trained far enough for non-degenerate ranges: 45 % here.)
    x, y = tiny_data(300, seed=11)
    assert x.shape == (300, 8, 8, 1) and set(np.unique(y)) == {0, 1, 2}
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([tf_keras.Input((8, 8, 1)), L.Conv2D(4, 3, activation="relu"),
                                 L.Flatten(), L.Dense(3)])
    model.compile(tf_keras.optimizers.Adam(1e-2),
                  tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=20, batch_size=32, verbose=0)
    x_new, y_new = tiny_data(300, seed=12)
    accuracy = np.mean(model.predict(x_new, verbose=0).argmax(1) == y_new)
    assert accuracy > 0.8, accuracy


@pytest.mark.parametrize("scheme, exact", [("default_int8", True), ("pow2", True),
                                           ("asymmetric", False), ("log_companding", False)])
def test_weights_in_the_tflite_against_the_qat_weights(fashion, tmp_path, scheme, exact):
    model, x, y = fashion
    q = qat.quantize_model(model, scheme)
    q.compile(tf_keras.optimizers.Adam(1e-5),
              tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    q.fit(x[:100], y[:100], epochs=1, batch_size=50, verbose=0)
    rows = tflite_inspect.weight_requantization(q, convert.convert_qat(q, str(tmp_path)))
    assert [r["layer"] for r in rows] == ["conv2d", "conv2d_1", "conv2d_2", "dense", "logits"]
    assert all(r["found"] for r in rows)
    assert all(r["exact"] for r in rows) is exact
    if scheme == "pow2":  # power-of-two codes times power-of-two steps: no rounding at all
        assert max(r["max_abs_error"] for r in rows) == 0.0
    elif exact:  # tfmot's symmetric scale is recomputed in float32 by the converter
        assert max(r["max_abs_error"] for r in rows) < FLOAT32_SCALE_ROUNDING
    else:
        assert all(r["max_abs_error"] > 0 and r["sqnr_db"] > 20 for r in rows)


def test_scalar_op_lambdas_become_wrappable_layers(tmp_path):
    tf_keras.utils.set_random_seed(0)
    i = tf_keras.Input((8, 8, 3), name="img")
    h = L.Conv2D(4, 3)(i)
    h = L.ReLU(6.0)(h + 3.0) * (1.0 / 6.0)  # MobileNetV3's hard sigmoid: two TFOpLambda
    model = tf_keras.Model(i, L.Dense(2)(L.Flatten()(h)))
    assert [type(x).__name__ for x in model.layers].count("TFOpLambda") == 2
    replaced = fold.replace_scalar_op_lambdas(model)
    assert [type(x).__name__ for x in replaced.layers].count("ScalarOp") == 2
    x = np.random.default_rng(0).uniform(-1, 1, (16, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(replaced.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)
    q = qat.quantize_model(model)
    _train_a_step(q, x, np.zeros((16, 2)))
    assert tflite_inspect.find_float_ops(_qat_tflite(q, tmp_path)) == []


@pytest.mark.parametrize("scheme", ["default_int8", "pow2"])
def test_conv1d_text_model_trains_and_converts_fully_integer(tmp_path, scheme):
    """An Embedding + Conv1D text model stopped QAT inside fit with a tfmot traceback
    ("'reduce_dims' is used before assignment": per-axis ranges of a 3-D kernel); Conv1D
    weights now take one range, and the .tflite computes what the QAT model computes."""
    tf_keras.utils.set_random_seed(0)
    inp = L.Input((12,), name="tokens")
    x = L.Embedding(50, 8, name="emb")(inp)
    x = L.GlobalMaxPooling1D()(L.Conv1D(8, 3, activation="relu", name="conv")(x))
    model = tf_keras.Model(inp, L.Dense(3, name="logits")(x))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50, (64, 12)).astype(np.float32)
    q = qat.quantize_model(model, scheme)
    assert "quant_conv" in [layer.name for layer in q.layers]
    # Token ids are not fake-quantized (int8 would round them to other embedding rows).
    assert not [layer.name for layer in q.layers if type(layer).__name__ == "InputQuantize"]
    _train_a_step(q, tokens, rng.normal(size=(64, 3)))
    content = _qat_tflite(q, tmp_path)
    assert tflite_inspect.find_float_ops(content) == []
    tflite = interpreter.TfliteModel(content).run({"tokens": tokens})[0]
    keras_out = q.predict(tokens, verbose=0)
    assert np.mean(tflite.argmax(1) == keras_out.argmax(1)) >= 0.9
    np.testing.assert_allclose(tflite, keras_out, atol=0.1 * np.ptp(keras_out))
