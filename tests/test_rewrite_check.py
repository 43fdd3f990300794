"""Every float rewrite before QAT and calibration checks itself: a rewrite that changes the
outputs raises RewriteError (an internal error, not bad input) naming the layer; and the
mini-Xception wiring bug (tfmot's separable split renaming layers into collisions) is gone."""

import numpy as np
import pytest

from tflq.keras3 import RewriteError
from tflq.models import tf_keras, wrap_model
from tflq.options import ConvertOptions
from tflq.ptq import convert
from tflq.quant import fold, graph, qat

L = tf_keras.layers


def _mini_xception(size=32):
    """Input → 2 valid convs with BN → 2 residual modules (two SeparableConv2D + BN, strided
    max-pool, added to a strided 1×1 conv + BN shortcut) → conv head → softmax."""
    rng = np.random.default_rng(0)
    inp = L.Input((size, size, 1), name="face")
    x = inp
    for _ in range(2):
        x = L.Activation("relu")(L.BatchNormalization()(L.Conv2D(8, 3, use_bias=False)(x)))
    for filters in (16, 32):
        shortcut = L.BatchNormalization()(
            L.Conv2D(filters, 1, strides=2, padding="same", use_bias=False)(x))
        y = L.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x)
        y = L.Activation("relu")(L.BatchNormalization()(y))
        y = L.BatchNormalization()(L.SeparableConv2D(filters, 3, padding="same",
                                                     use_bias=False)(y))
        x = L.Add()([L.MaxPooling2D(3, strides=2, padding="same")(y), shortcut])
    x = L.GlobalAveragePooling2D()(L.Conv2D(3, 3, padding="same")(x))
    model = tf_keras.Model(inp, L.Activation("softmax")(x))
    for layer in model.layers:  # BN statistics of a trained model, not the identity
        if isinstance(layer, L.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c),
                               rng.normal(0, 0.2, c), rng.uniform(0.5, 2.0, c)])
    return model


@pytest.fixture()
def xception_like():
    model = _mini_xception()
    # A model loaded from a file: its layer names (conv2d, conv2d_1, …) were given in another
    # session, so names Keras generates now collide with them.
    tf_keras.backend.clear_session()
    return model


def _faces(n=8, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, 32, 32, 1)).astype(np.float32)


def test_mini_xception_prepares_with_the_same_float_outputs(xception_like):
    x = _faces()
    notes = []
    prepared = graph.prepare(xception_like, [x], notes)
    assert not any(type(layer).__name__ == "SeparableConv2D" for layer in prepared.layers)
    assert not any(type(layer).__name__ == "BatchNormalization" for layer in prepared.layers)
    np.testing.assert_allclose(prepared(x).numpy(), xception_like(x).numpy(), rtol=0, atol=1e-6)
    assert any(n.startswith("BatchNorm folding") for n in notes), notes


def test_mini_xception_qat_and_range_estimator_work(xception_like, tmp_path):
    x = _faces(32)
    q = qat.quantize_model(xception_like, samples=[x])
    q(x, training=True)
    np.testing.assert_allclose(q(x).numpy(), xception_like(x).numpy(), atol=0.05)

    def representative():
        for i in range(0, 32, 8):
            yield {"face": x[i:i + 8]}

    result = convert.convert_model(wrap_model(xception_like), "int8", str(tmp_path),
                                   representative, ConvertOptions(range_estimator="mse"))
    assert result.float_ops == ()


def test_a_broken_fold_is_reported_with_the_layer(monkeypatch):
    model = _mini_xception()
    real = fold._bn_scale_shift
    target = model.layers[2].name  # the first BatchNormalization

    def corrupted(bn):
        scale, shift = real(bn)
        if bn.name == target:
            scale = scale * 1.5  # the bug: a wrong folded weight
        return scale, shift

    monkeypatch.setattr(fold, "_bn_scale_shift", corrupted)
    with pytest.raises(RewriteError, match=rf"BatchNorm folding.*'{target}'"):
        graph.prepare(model, [_faces()])
    with pytest.raises(RewriteError, match="internal error"):
        qat.quantize_model(model)  # synthetic samples when none are given
    assert issubclass(RewriteError, RuntimeError) and not issubclass(RewriteError, ValueError)


def test_a_broken_rebuild_is_reported_with_the_layer(monkeypatch):
    model = _mini_xception()
    sep = next(layer for layer in model.layers if type(layer).__name__ == "SeparableConv2D")
    real = graph.rebuild

    def broken(m, split_also=frozenset()):
        rebuilt = real(m, split_also)
        layer = rebuilt.get_layer(sep.name)  # the pointwise half keeps the layer's name
        layer.set_weights([w * 0.5 for w in layer.get_weights()])
        return rebuilt

    monkeypatch.setattr(graph, "rebuild", broken)
    with pytest.raises(RewriteError, match=rf"graph rebuild.*'{sep.name}' \(SeparableConv2D\)"):
        graph.prepare(model, [_faces()])


def test_synthetic_samples_follow_the_inputs():
    model = tf_keras.Sequential([tf_keras.Input((None,), dtype="int32"),
                                 L.Embedding(10, 4), L.GlobalAveragePooling1D()])
    (sample,) = graph.synthetic_samples(model)
    assert sample.shape == (4, 8) and sample.dtype == np.int32 and not sample.any()
