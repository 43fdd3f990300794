"""Cross-layer equalization keeps the float function and evens out channel ranges; bias
correction removes the mean output shift weight quantization causes; TFLite's own int8
weights are the reference for the weight quantizer."""

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from tflq.models import tf_keras
from tflq.ptq import equalize

L = tf_keras.layers
RTOL = 1e-4  # the float-equality bound for equalization


def _block(relu6=False):
    tf_keras.utils.set_random_seed(0)
    relu = (lambda: L.ReLU(6.0)) if relu6 else L.ReLU
    inp = L.Input((16, 16, 3))
    x = L.Conv2D(16, 3, use_bias=False, name="c1")(inp)
    x = relu()(L.BatchNormalization()(x))
    x = L.DepthwiseConv2D(3, use_bias=False, name="dw")(x)
    x = relu()(L.BatchNormalization()(x))
    x = L.BatchNormalization()(L.Conv2D(8, 1, use_bias=False, name="c2")(x))
    x = L.Conv2D(8, 1, activation="relu", name="c3")(x)
    model = tf_keras.Model(inp, L.Dense(4)(L.GlobalAveragePooling2D()(x)))
    rng = np.random.default_rng(0)
    for w in model.weights:  # BatchNorms with very different channel scales
        if "gamma" in w.name:
            w.assign(rng.uniform(0.05, 5.0, w.shape))
        elif "moving_variance" in w.name:
            w.assign(rng.uniform(0.1, 3.0, w.shape))
    return model


def _x(n=32):
    return np.random.default_rng(1).normal(size=(n, 16, 16, 3)).astype(np.float32)


def _with_quantized_weights(model):
    copy = tf_keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for layer in copy.layers:
        if type(layer).__name__ in ("Conv2D", "DepthwiseConv2D"):
            w = layer.get_weights()
            layer.set_weights([equalize.quantize_weights(w[0], type(layer).__name__, False),
                               *w[1:]])
    return copy


def _spread(layer):
    r = equalize._out_ranges(layer)
    return r.min() / r.max()


def test_equalization_keeps_the_float_function_and_evens_ranges():
    model = _block()
    folded = equalize.equalize(model, iterations=0)[0]
    equalized, record = equalize.equalize(model)
    pairs = [(p["first"], p["second"]) for p in record["pairs"]]
    assert pairs == [("c1", "dw"), ("dw", "c2"), ("c2", "c3")]
    assert record["relu6_replaced"] == 0
    assert [s["layer"] for s in record["skipped"]] == ["c3"]  # feeds the pooling
    first = record["pairs"][0]
    assert first["spread_after"] < first["spread_before"]
    x = _x()
    a, b = model.predict(x, verbose=0), equalized.predict(x, verbose=0)
    assert np.abs(a - b).max() <= RTOL * np.abs(a).max()
    assert _spread(equalized.get_layer("c1")) > 2 * _spread(folded.get_layer("c1"))
    # what it is for: per-tensor int8 weights hurt the equalized model much less
    error = {name: np.mean((_with_quantized_weights(m).predict(x, verbose=0) - a) ** 2)
             for name, m in (("folded", folded), ("equalized", equalized))}
    assert error["equalized"] < 0.5 * error["folded"]
    # after equalization each pair's channel ranges match: r1_i == r2_i
    r1 = equalize._out_ranges(equalized.get_layer("c1"))
    r2 = equalize._in_ranges(equalized.get_layer("dw"))
    np.testing.assert_allclose(r1, r2, rtol=1e-2)


def test_relu6_pairs_are_left_alone_unless_replaced_by_relu():
    model = _block(relu6=True)
    _, record = equalize.equalize(model, relu6="keep")
    assert [(p["first"], p["second"]) for p in record["pairs"]] == [("c2", "c3")]
    reasons = {s["layer"]: s["reason"] for s in record["skipped"]}
    assert "ReLU6" in reasons["c1"] and "ReLU6" in reasons["dw"]  # said, not silent
    replaced, record = equalize.equalize(model, relu6="relu")
    assert len(record["pairs"]) == 3 and record["relu6_replaced"] == 2
    assert not any(layer.get_config().get("max_value") == 6 for layer in replaced.layers)


@pytest.mark.parametrize("per_channel", [True, False])
def test_weight_quantizer_matches_the_converters_int8_weights(per_channel, tmp_path):
    tf_keras.utils.set_random_seed(2)
    inp = L.Input((6, 6, 3))
    conv = L.Conv2D(5, 3)
    model = tf_keras.Model(inp, conv(inp))
    kernel = np.random.default_rng(3).normal(size=(3, 3, 3, 5)).astype(np.float32)
    kernel[..., 0] *= 20.0  # one wide channel: per-tensor differs from per-channel
    conv.set_weights([kernel, np.zeros(5, np.float32)])
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    x = np.random.default_rng(4).normal(size=(20, 6, 6, 3)).astype(np.float32)
    converter.representative_dataset = lambda: ([x[i:i + 1]] for i in range(20))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter._experimental_disable_per_channel = not per_channel
    interp = Interpreter(model_content=converter.convert())
    op = next(o for o in interp._get_ops_details() if o["op_name"] == "CONV_2D")
    detail = interp.get_tensor_details()[int(op["inputs"][1])]
    codes = interp.get_tensor(detail["index"]).astype(np.float64)
    scales = np.asarray(detail["quantization_parameters"]["scales"])
    deployed = codes * (scales.reshape(-1, 1, 1, 1) if scales.size > 1 else scales[0])
    ours = equalize.quantize_weights(kernel, "Conv2D", per_channel).transpose(3, 0, 1, 2)
    np.testing.assert_allclose(ours, deployed, rtol=1e-5, atol=1e-6)


def test_bias_correction_removes_the_mean_shift_of_quantized_weights():
    tf_keras.utils.set_random_seed(5)
    inp = L.Input((8, 8, 4))
    conv = L.Conv2D(6, 3, name="c")
    model = tf_keras.Model(inp, conv(inp))
    kernel = np.random.default_rng(6).normal(size=(3, 3, 4, 6)).astype(np.float32)
    kernel[..., 0] *= 30.0
    conv.set_weights([kernel, np.zeros(6, np.float32)])
    x = np.random.default_rng(7).normal(1.0, 1.0, (64, 8, 8, 4)).astype(np.float32)
    float_out = model.predict(x, verbose=0)

    def quantized_output(bias):
        q = tf_keras.Model(inp, L.Conv2D(6, 3)(inp))
        q.layers[1].set_weights([equalize.quantize_weights(kernel, "Conv2D", False), bias])
        return q.predict(x, verbose=0)

    before = np.abs((quantized_output(np.zeros(6, np.float32)) - float_out).mean(axis=(0, 1, 2)))
    shifts = equalize.bias_correct(model, lambda: iter([x[:32], x[32:]]), per_channel=False)
    after = np.abs((quantized_output(conv.get_weights()[1]) - float_out).mean(axis=(0, 1, 2)))
    assert set(shifts) == {"c"} and before.max() > 1e-3
    assert after.max() < 1e-2 * before.max()


def _nested_mobilenet(alpha_spread=(-2.5, 0.5)):
    """A MobileNetV2-style backbone (expand + ReLU6, depthwise + BN + ReLU6, linear project,
    residual Add) nested inside a Functional model, as fine-tuned models are; depthwise
    channels span three orders of magnitude as in pretrained MobileNets."""
    tf_keras.utils.set_random_seed(8)
    rng = np.random.default_rng(8)
    inp = L.Input((12, 12, 3))
    x = L.Conv2D(8, 3, padding="same", name="stem")(inp)
    x = L.ReLU(6.0, name="stem_relu")(L.BatchNormalization(name="stem_bn")(x))
    for b in range(2):
        skip = x
        y = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(24, 1, use_bias=False,
                                                       name=f"expand{b}")(x)))
        y = L.ReLU(6.0)(L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same",
                                                                use_bias=False,
                                                                name=f"dw{b}")(y)))
        y = L.BatchNormalization()(L.Conv2D(8, 1, use_bias=False, name=f"project{b}")(y))
        x = L.Add()([skip, y])
    backbone = tf_keras.Model(inp, x, name="backbone")
    for w in backbone.weights:
        if "gamma" in w.name:
            w.assign(rng.uniform(0.2, 2.0, w.shape))
    for b in range(2):
        # Small depthwise channels feed large project weights (the next layer compensates,
        # as training leaves it): per-tensor depthwise weights lose those channels.
        spread = rng.permutation(np.logspace(*alpha_spread, 24))
        layer = backbone.get_layer(f"dw{b}")
        layer.set_weights([layer.get_weights()[0] * spread.reshape(1, 1, -1, 1)])
        project = backbone.get_layer(f"project{b}")
        project.set_weights([project.get_weights()[0] / spread.reshape(1, 1, -1, 1)])
    outer_in = L.Input((12, 12, 3))
    logits = L.Dense(6, name="head")(L.GlobalAveragePooling2D()(backbone(outer_in)))
    return tf_keras.Model(outer_in, logits)


def test_equalize_finds_pairs_inside_a_nested_relu6_backbone():
    model = _nested_mobilenet()
    equalized, record = equalize.equalize(model, relu6="relu")
    pairs = {(p["first"], p["second"]) for p in record["pairs"]}
    assert {("expand0", "dw0"), ("dw0", "project0"), ("expand1", "dw1"),
            ("dw1", "project1")} <= pairs
    assert record["relu6_replaced"] == 5
    # The function changes only where an activation exceeded 6; the cost is measured.
    x = np.random.default_rng(9).normal(size=(16, 12, 12, 3)).astype(np.float32)
    cost = equalize.float_change(model, equalized, lambda: iter([x[:8], x[8:]]))
    assert 0.0 <= cost["top1_agreement"] <= 1.0 and cost["sqnr_db"] > 0
    relu_only = equalize.equalize(model, iterations=0, relu6="relu")[0]  # not equalized
    a, b = relu_only.predict(x, verbose=0), equalized.predict(x, verbose=0)
    assert np.abs(a - b).max() <= RTOL * np.abs(a).max()


def test_per_tensor_cle_restores_a_nested_relu6_mobilenet(tmp_path):
    # Small depthwise channels (weights and activations) round to zero under one int8
    # scale; CLE + bias correction inside the nested backbone brings them back.
    from tflq import options
    from tflq.metrics import sqnr_db
    from tflq.models import wrap_model
    from tflq.ptq import convert

    model = _nested_mobilenet()
    loaded = wrap_model(model, "nested")
    name = loaded.input_names[0]
    x = np.random.default_rng(10).uniform(0, 1, size=(96, 12, 12, 3)).astype(np.float32)

    def representative():
        for i in range(48):
            yield {name: x[i:i + 1]}

    def run(content):
        interp = Interpreter(model_content=content)
        detail = interp.get_input_details()[0]
        interp.resize_tensor_input(detail["index"], x[48:].shape)
        interp.allocate_tensors()
        interp.set_tensor(detail["index"], x[48:])
        interp.invoke()
        return interp.get_tensor(interp.get_output_details()[0]["index"])

    want = model.predict(x[48:], verbose=0)
    sqnr = {}
    for label, opts in (("per_channel", options.ConvertOptions()),
                        ("per_tensor", options.ConvertOptions(per_channel=False)),
                        ("bounded", options.ConvertOptions(per_channel=False, equalize=True)),
                        ("relu", options.ConvertOptions(per_channel=False, equalize=True,
                                                        equalize_relu6="relu"))):
        conversion = convert.convert_model(loaded, "int8", str(tmp_path), representative, opts)
        sqnr[label] = sqnr_db(want, run(conversion.content))
        if label in ("bounded", "relu"):
            details = conversion.details["equalize"]
            assert len(details["pairs"]) >= 4
            assert details["relu6_replaced"] == (5 if label == "relu" else 0)
    # Small channels collapse in the plain converter, per tensor and (through the per-tensor
    # activation scale of the depthwise output) per channel too; equalized, they survive,
    # with ReLU6 kept (bounded scales) as with ReLU6 replaced.
    for label in ("bounded", "relu"):
        assert sqnr[label] > sqnr["per_tensor"] + 10.0
        assert sqnr[label] > sqnr["per_channel"] + 10.0


def test_bounded_relu6_equalization_keeps_the_float_model_where_relu6_clips():
    """ReLU6 kept: a channel that ReLU6 clips on the calibration data keeps scale 1 (moving
    its clip would change the model), the others grow no further than keeps their
    calibration maximum × 1.25 below the moved clip; the equalized float model equals the
    original on that data, and on fresh data from the same distribution."""
    model = _block(relu6=True)
    x = _x(64) * 2.0  # large enough inputs that some channels clip at 6
    calibration = lambda: iter([x[:32], x[32:]])  # noqa: E731
    folded = equalize.equalize(model, iterations=0, relu6="relu")[0]
    equalized, record = equalize.equalize(model, relu6="bounded", batches=calibration)
    assert [(p["first"], p["second"]) for p in record["pairs"]] == [
        ("c1", "dw"), ("dw", "c2"), ("c2", "c3")]
    assert record["relu6_replaced"] == 0 and record["relu6_bounded_pairs"] == 2
    assert sum(layer.get_config().get("max_value") == 6 for layer in equalized.layers) == 2
    # Independently: the channels the folded float model drives past 6 are held; no other
    # channel grows beyond 6 / (1.25 × its maximum).
    pre = tf_keras.Model(folded.inputs, folded.get_layer("c1").output)(x).numpy()
    top = pre.reshape(-1, pre.shape[-1]).max(axis=0)
    near_clip = top > 6.0
    held = {p["first"]: p["relu6_held_channels"] for p in record["pairs"]}
    assert 0 < near_clip.sum() < near_clip.size and held["c1"] == near_clip.sum()
    # c1's output channel i is divided by its total scale s_i: its activations by s_i too.
    scale = equalize._out_ranges(folded.get_layer("c1")) / equalize._out_ranges(
        equalized.get_layer("c1"))
    np.testing.assert_allclose(scale[near_clip], 1.0, rtol=1e-6)
    assert np.all(1.25 * top[~near_clip] / scale[~near_clip] <= 6.0 * (1 + 1e-5))
    assert np.any(scale[~near_clip] < 0.99)  # the others did move
    assert record["pairs"][0]["spread_after"] < record["pairs"][0]["spread_before"]
    fresh = np.random.default_rng(7).normal(size=x.shape).astype(np.float32) * 2.0
    for data in (x, fresh):
        a, b = model.predict(data, verbose=0), equalized.predict(data, verbose=0)
        assert np.abs(a - b).max() <= RTOL * np.abs(a).max()
    with pytest.raises(ValueError, match="relu6='bounded' needs calibration batches: 2 pair"):
        equalize.equalize(model)
    with pytest.raises(ValueError, match="relu6 must be one of"):
        equalize.equalize(model, relu6="clip")


def test_pairs_inside_a_nested_backbone_are_found_and_reported(tmp_path):
    from tflq.models import wrap_model
    from tflq.options import ConvertOptions
    from tflq.ptq import convert

    L = tf_keras.layers
    rng = np.random.default_rng(0)
    b_in = L.Input((8, 8, 3))
    y = L.Conv2D(4, 3, padding="same", activation="relu", name="bb_conv1")(b_in)
    y = L.Conv2D(4, 1, activation="relu", name="bb_conv2")(y)
    backbone = tf_keras.Model(b_in, y, name="backbone")
    inp = L.Input((8, 8, 3), name="img")
    model = tf_keras.Model(inp, L.Dense(2)(L.GlobalAveragePooling2D()(backbone(inp))))
    for w in model.weights:  # uneven channel ranges: what equalization is for
        w.assign(rng.normal(0, 1, w.shape) * rng.uniform(0.05, 3, w.shape[-1:]))
    x = rng.uniform(0, 1, (16, 8, 8, 3)).astype(np.float32)
    equalized, record = equalize.equalize(model, samples=[x])
    assert [(p["first"], p["second"]) for p in record["pairs"]] == [("bb_conv1", "bb_conv2")]
    np.testing.assert_allclose(equalized(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-5)

    def representative():
        yield {"img": x}

    result = convert.convert_model(wrap_model(model), "int8", str(tmp_path), representative,
                                   ConvertOptions(equalize=True))
    assert any(note.startswith("cross-layer equalization: 1 pairs") for note in result.notes), \
        result.notes


def test_nearly_dead_channels_are_not_scaled():
    """A BatchNorm gamma of 1e-30 (as in the MLPerf Tiny VWW MobileNetV1) leaves a channel
    whose folded kernel is ~1e-30 of the others: scaling it by sqrt(r1/r2) ~ 1e-15 would divide
    its bias by that and blow the activation range up. It is left unscaled and counted."""
    model = _block()
    bn = model.layers[2]
    gamma, beta, mean, var = bn.get_weights()
    gamma[3] = 1e-30
    beta[3] = 0.5  # the dead channel still carries a constant
    bn.set_weights([gamma, beta, mean, var])
    equalized, record = equalize.equalize(model)
    first = record["pairs"][0]
    assert (first["first"], first["dead_channels_left"]) == ("c1", 1)
    assert first["spread_before"] < 1e6  # the dead channel is not what the spread reports
    bias = equalized.get_layer("c1").get_weights()[1]
    assert np.all(np.isfinite(bias)) and np.abs(bias).max() < 1e3
    x = _x()
    a, b = model.predict(x, verbose=0), equalized.predict(x, verbose=0)
    assert np.abs(a - b).max() <= RTOL * np.abs(a).max()
    r1 = equalize._out_ranges(equalized.get_layer("c1"))
    folded = equalize._out_ranges(equalize.equalize(model, iterations=0)[0].get_layer("c1"))
    assert r1[3] == pytest.approx(folded[3])  # untouched


def test_pairs_pass_through_zero_padding_as_in_strided_mobilenet_blocks():
    """MobileNetV2's strided blocks pad between expand (+ReLU6) and depthwise: zero padding
    commutes with a per-channel scale, so the pair is equalized and the function kept."""
    tf_keras.utils.set_random_seed(4)
    inp = L.Input((9, 9, 3))
    x = L.ReLU(6.0)(L.Conv2D(8, 1, name="expand")(inp))
    x = L.ZeroPadding2D(((0, 1), (0, 1)))(x)
    x = L.ReLU(6.0)(L.DepthwiseConv2D(3, strides=2, name="dw")(x))
    model = tf_keras.Model(inp, L.Conv2D(4, 1, name="project")(x))
    kernel, bias = model.get_layer("expand").get_weights()
    model.get_layer("expand").set_weights([kernel * np.logspace(-2, 0, 8), bias])
    x = np.random.default_rng(3).normal(size=(32, 9, 9, 3)).astype(np.float32)
    equalized, record = equalize.equalize(model, batches=lambda: iter([x]))
    pairs = {(p["first"], p["second"]) for p in record["pairs"]}
    assert pairs == {("expand", "dw"), ("dw", "project")}
    assert record["pairs"][0]["spread_after"] < record["pairs"][0]["spread_before"]
    a, b = model.predict(x, verbose=0), equalized.predict(x, verbose=0)
    assert np.abs(a - b).max() <= RTOL * np.abs(a).max()


def test_channels_the_consumer_ignores_are_zeroed_so_they_do_not_set_the_per_tensor_scale():
    """nsfwjs' first depthwise has channels whose folded BatchNorm (gamma ≈ 0) in the next layer
    ignores them, with kernels 57x the live ones': they set the per-tensor scale. Their
    weights are zeroed (bias kept), which keeps the float function and the per-tensor
    error falls."""
    model = _block()
    c1 = model.get_layer("c1")
    kernel = c1.get_weights()[0]
    kernel[..., 5] *= 100.0  # the ignored channel holds the largest weights
    c1.set_weights([kernel])
    bn = model.layers[5]  # after the depthwise: its channel 5 becomes ~1e-30 when folded
    assert bn.name.startswith("batch_normalization") and model.layers[4].name == "dw"
    gamma, *rest = bn.get_weights()
    gamma[5] = 1e-30
    bn.set_weights([gamma, *rest])
    folded = equalize.equalize(model, iterations=0)[0]
    equalized, record = equalize.equalize(model)
    zeroed = {p["first"]: p["ignored_channels_zeroed"] for p in record["pairs"]}
    assert zeroed == {"c1": 1, "dw": 0, "c2": 0}
    got = equalized.get_layer("c1").get_weights()
    assert np.all(got[0][..., 5] == 0) and np.abs(got[0][..., :5]).max() > 0
    assert got[1][5] == folded.get_layer("c1").get_weights()[1][5]  # its bias kept
    x = _x()
    a = model.predict(x, verbose=0)
    assert np.abs(equalized.predict(x, verbose=0) - a).max() <= RTOL * np.abs(a).max()
    # the same equalized model with channel 5's weights left in: per-tensor int8 hurts more
    kept = tf_keras.models.clone_model(equalized)
    kept.set_weights(equalized.get_weights())
    kernel = got[0].copy()
    gamma1, _, _, var1 = model.layers[2].get_weights()  # c1's BatchNorm, folded by hand
    scale = gamma1[5] / np.sqrt(var1[5] + model.layers[2].epsilon)
    kernel[..., 5] = model.get_layer("c1").get_weights()[0][..., 5] * scale
    assert np.abs(kernel[..., 5]).max() > 2 * np.abs(got[0][..., :5]).max()
    kept.get_layer("c1").set_weights([kernel, got[1]])
    assert np.abs(kept.predict(x, verbose=0) - a).max() <= RTOL * np.abs(a).max()
    error = {name: np.mean((_with_quantized_weights(m).predict(x, verbose=0) - a) ** 2)
             for name, m in (("zeroed", equalized), ("kept", kept))}
    assert error["zeroed"] < 0.5 * error["kept"], error
