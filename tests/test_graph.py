"""Graph rebuilding before QAT: nested models inlined, unfusable activations split off,
LayerNormalization decomposed; the float function is kept (checked against the original
model), and the rebuilt models quantize to fully integer TFLite models."""

import numpy as np
import pytest
import tensorflow as tf

from tflq import interpreter, tflite_inspect
from tflq.models import tf_keras
from tflq.ptq import convert
from tflq.quant import fold, graph, layers, qat

L = tf_keras.layers
# The rebuild only regroups float32 ops (LayerNorm's mean/variance in another order).
REBUILD_RTOL = 1e-4


def _random_affine(model, seed=0):
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if "gamma" in w.name:
            w.assign(rng.normal(1.0, 0.3, w.shape))
        elif "beta" in w.name:
            w.assign(rng.normal(0.0, 0.3, w.shape))


def _nested_ln_model():
    i2 = L.Input((8, 8, 4))
    y = L.Conv2D(4, 3, padding="same", activation="relu6", name="inner_conv")(i2)
    y = L.LayerNormalization(epsilon=1e-6, name="inner_ln")(y)
    inner = tf_keras.Model(i2, y, name="inner")
    shared = L.Conv2D(4, 1, name="shared_conv")
    inp = L.Input((8, 8, 3), name="img")
    x = L.Conv2D(4, 1, name="stem")(inp)
    x = inner(x)
    x = L.Add()([shared(x), shared(x * 0.5)])        # one layer called twice stays shared
    x = L.Conv2D(4, 1, activation="swish", name="swish_conv")(x)
    x = L.Activation("sigmoid")(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.LayerNormalization(name="head_ln")(x)
    out = L.Activation("softmax")(L.Dense(5, name="logits")(x))
    model = tf_keras.Model(inp, out)
    _random_affine(model)
    return model


def _se_block_model():
    """EfficientNet's squeeze-and-excitation block: swish convs and a sigmoid gate."""
    inp = L.Input((16, 16, 3), name="img")
    x = L.Conv2D(8, 3, padding="same", activation="swish")(inp)
    s = L.GlobalAveragePooling2D(keepdims=True)(x)
    s = L.Conv2D(2, 1, activation="swish")(s)
    s = L.Conv2D(8, 1, activation="sigmoid")(s)
    x = L.Multiply()([x, s])
    return tf_keras.Model(inp, L.Dense(5)(L.GlobalAveragePooling2D()(x)))


def _convnext_block_model():
    """ConvNeXt's ingredients: Rescaling + Normalization preprocessing, depthwise conv,
    LayerNormalization, Dense on a feature map (gelu), LayerScale, ``inputs + x``."""
    from tf_keras.src.applications.convnext import LayerScale

    inp = L.Input((8, 8, 3), name="img")
    x = L.Rescaling(1 / 255.0)(inp)
    x = L.Normalization(mean=[0.4, 0.5, 0.6], variance=[0.05, 0.06, 0.07])(x)
    x = L.Conv2D(8, 1, name="stem")(x)
    y = L.DepthwiseConv2D(3, padding="same")(x)
    y = L.LayerNormalization(epsilon=1e-6)(y)
    y = L.Dense(16, activation="gelu", name="pw1")(y)
    y = L.Dense(8, name="pw2")(y)
    y = LayerScale(0.5, 8, name="scale")(y)
    x = x + L.Activation("linear")(y)
    return tf_keras.Model(inp, L.Dense(5)(L.GlobalAveragePooling2D()(x)))


def _x(n=32, shape=(8, 8, 3), seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, *shape)).astype(np.float32)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(a).max()


def test_rebuild_keeps_the_float_function_and_inlines_everything():
    model = _nested_ln_model()
    assert graph.needs_rebuild(model) and graph.nested_models(model) == ["inner"]
    rebuilt = graph.rebuild(model)
    x = _x()
    assert _rel(model.predict(x, verbose=0), rebuilt.predict(x, verbose=0)) < REBUILD_RTOL
    names = [layer.name for layer in rebuilt.layers]
    assert not any(isinstance(layer, tf_keras.Model) for layer in rebuilt.layers)
    assert "inner_conv" in names and "inner_conv_activation" in names
    assert "swish_conv_activation" in names
    assert not any(type(layer).__name__ == "LayerNormalization" for layer in rebuilt.layers)
    assert {"inner_ln_mean", "inner_ln_rsqrt", "inner_ln_affine", "head_ln_to_4d"} <= set(names)
    assert len(rebuilt.get_layer("shared_conv")._inbound_nodes) == 2
    assert rebuilt.get_layer("inner_conv").get_config()["activation"] == "linear"
    assert not graph.needs_rebuild(rebuilt)


def test_layer_norm_decomposition_matches_numpy():
    inp = L.Input((6,))
    ln = L.LayerNormalization(epsilon=1e-3)
    model = tf_keras.Model(inp, ln(inp))
    _random_affine(model, seed=2)
    x = np.random.default_rng(3).normal(2.0, 3.0, (10, 6)).astype(np.float32)
    gamma, beta = ln.get_weights()
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    expected = (x - mean) / np.sqrt(var + 1e-3) * gamma + beta
    np.testing.assert_allclose(graph.rebuild(model).predict(x, verbose=0), expected,
                               rtol=REBUILD_RTOL, atol=REBUILD_RTOL)


def test_layer_norm_step_rsqrt_floor_only_acts_below_epsilon():
    step = layers.LayerNormStep("rsqrt", floor=1e-3)
    out = step(tf.constant([0.0, 1e-3, 4.0])).numpy()
    np.testing.assert_allclose(out, [1 / np.sqrt(1e-3), 1 / np.sqrt(1e-3), 0.5], rtol=1e-6)
    assert layers.LayerNormStep.from_config(step.get_config()).floor == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="Unknown LayerNormStep step 'cube'"):
        layers.LayerNormStep("cube")


def test_models_without_anything_to_rebuild_are_left_alone():
    inp = L.Input((4,))
    model = tf_keras.Model(inp, L.Dense(2, activation="relu")(inp))
    assert not graph.needs_rebuild(model)
    assert not graph.needs_split(model.layers[1])


def test_rebuild_refuses_nested_subclassed_and_name_clashes():
    class Sub(tf_keras.Model):
        def call(self, x):
            return x * 2.0

    inp = L.Input((4,))
    sub = Sub(name="sub")
    model = tf_keras.Model(inp, L.Dense(2)(sub(inp)))
    # tf_keras records the subclassed model as a nested model; rebuild refuses it (it has
    # no layer graph to inline) rather than dropping it silently.
    assert graph.nested_models(model) == ["sub"]
    with pytest.raises(ValueError, match="Nested model 'sub' is subclassed"):
        graph.rebuild(model)
    i2 = L.Input((4,))
    inner = tf_keras.Model(i2, L.Dense(4, name="dense_x")(i2), name="inner")
    outer_in = L.Input((4,))
    clash = tf_keras.Model(outer_in, L.Dense(2, name="dense_x")(inner(outer_in)))
    with pytest.raises(ValueError, match="Two layers are named 'dense_x'"):
        graph.rebuild(clash)


def test_convnext_ingredients_become_wrappable_layers():
    model = _convnext_block_model()
    rebuilt = graph.rebuild(model)
    x = _x() * 255.0
    assert _rel(model.predict(x, verbose=0), rebuilt.predict(x, verbose=0)) < REBUILD_RTOL
    kinds = {layer.name: type(layer).__name__ for layer in rebuilt.layers}
    assert kinds["pw1"] == "Conv2D" and kinds["pw2"] == "Conv2D"   # Dense on a feature map
    assert kinds["scale_affine"] == "DepthwiseConv2D"               # LayerScale
    assert "TFOpLambda" not in kinds.values() and "Add" in kinds.values()
    folded = fold.fold_batch_norms(rebuilt)                          # Normalization → 1x1 conv
    assert not any(type(layer).__name__ == "Normalization" for layer in folded.layers)
    assert _rel(model.predict(x, verbose=0), folded.predict(x, verbose=0)) < REBUILD_RTOL


@pytest.mark.parametrize("build, shape", [(_nested_ln_model, (8, 8, 3)),
                                          (_se_block_model, (16, 16, 3)),
                                          (_convnext_block_model, (8, 8, 3))])
def test_rebuilt_models_quantize_fully_integer(build, shape, tmp_path):
    tf_keras.utils.set_random_seed(0)
    model = build()
    x = _x(64, shape)
    q = qat.quantize_model(model, "default_int8")
    softmax_out = model.layers[-1].get_config().get("activation") == "softmax"
    q.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=not softmax_out))
    q.fit(x, np.random.default_rng(1).integers(0, 5, 64), epochs=2, batch_size=16, verbose=0)
    content = convert.convert_qat(q, str(tmp_path))
    assert tflite_inspect.find_float_ops(content) == []
    deployed = interpreter.TfliteModel(content).run({"img": x})[0]
    keras_out = q.predict(x, verbose=0)
    assert np.mean(deployed.argmax(1) == keras_out.argmax(1)) >= 0.9
    # Sigmoid/softmax outputs (layers or fused) read by other layers are pinned to TFLite's
    # fixed output grid (1/256, zp -128); a model output is left to the kernel's own.
    pinned = 0
    outputs = {t.node.layer.name for t in q.outputs}
    for layer in q.layers:
        inner = getattr(layer, "layer", None)
        activation = inner.get_config().get("activation") if inner is not None else None
        if isinstance(activation, dict):  # a fused one, inside tfmot's QuantizeAwareActivation
            activation = activation["config"]["activation"]
        if activation not in ("sigmoid", "softmax"):
            continue
        found = layer.quantize_config.get_output_quantizers(inner)
        if layer.name in outputs:
            assert found == []
            continue
        [fixed] = found
        pinned += 1
        assert fixed.get_config()["init_min"] == 0.0
        assert fixed.get_config()["init_max"] * 256 == 255
    # nested LN: the sigmoid layer before pooling; SE block: the gate's fused sigmoid.
    assert pinned == {_nested_ln_model: 1, _se_block_model: 1, _convnext_block_model: 0}[build]
