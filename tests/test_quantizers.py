"""Quantizer math against hand-computed codes, TF twins against the numpy references,
straight-through gradients, tfmot classes, and the bit-exact pow2 deployment."""

import math

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from conftest import tiny_data

from tflq import models, tflite_inspect
from tflq.models import tf_keras
from tflq.ptq import convert
from tflq.quant import functions, qat, quantizers, schemes

# TF computes in float32, the references in float64.
F32_RTOL = 1e-6
F32_ATOL = 1e-6


def test_linear_codes_edges():
    x = np.array([-1.0, 0.0, 0.5, 1.0, 3.0, 4.0, 9.0])
    q, deq = functions.linear_codes(x, x_min=0.0, x_max=3.0, num_bits=2)
    np.testing.assert_array_equal(q, [0, 0, 0, 1, 3, 3, 3])  # 0.5 → round(0.5)=0 (half-even)
    np.testing.assert_allclose(deq, [0, 0, 0, 1, 3, 3, 3])
    q, deq = functions.linear_codes(np.array([2.0, 2.0]), 2.0, 2.0, 8)  # constant tensor
    np.testing.assert_array_equal(q, [0, 0])
    np.testing.assert_allclose(deq, [2.0, 2.0])


def test_symmetric_codes_edges():
    # scale = 1.27 / 127 = 0.01
    x = np.array([0.0, 1.27, -1.27, 5.0, -5.0, 0.005, 0.015, 1e-9])
    q, deq = functions.symmetric_codes(x, 1.27, 8)
    np.testing.assert_array_equal(q, [0, 127, -127, 127, -127, 0, 2, 0])
    np.testing.assert_allclose(deq, q * 0.01)
    q, _ = functions.symmetric_codes(np.array([-5.0]), 1.27, 8, narrow_range=False)
    assert q[0] == -128
    q, deq = functions.symmetric_codes(np.zeros(3), 0.0, 4)
    np.testing.assert_array_equal(q, 0)
    np.testing.assert_array_equal(deq, 0)


def test_asymmetric_codes_keep_zero_exact():
    q, deq = functions.asymmetric_codes(np.array([0.0, -1.0, 2.0, 3.0]), -1.0, 2.0, 8)
    scale = 3.0 / 255
    zero_point = round(1.0 / scale)  # 85
    np.testing.assert_array_equal(q, [85, 0, 255, 255])
    assert deq[0] == 0.0
    np.testing.assert_allclose(deq, (q - zero_point) * scale)
    # An all-positive range is widened to include zero: zero point 0.
    q, deq = functions.asymmetric_codes(np.array([0.0, 2.0, 4.0]), 1.0, 4.0, 2)
    np.testing.assert_array_equal(q, [0, 2, 3])
    np.testing.assert_allclose(deq, [0.0, 8 / 3, 4.0])


def test_log_companding_codes():
    x = np.array([0.0, 1.0, -1.0, 0.5, 1e-9, 2.0])
    q, deq = functions.log_companding_codes(x, max_abs=1.0, num_bits=4, companding=1.0)
    levels = 7
    expected_half = round(math.log1p(0.5 * levels) / math.log1p(levels) * levels)  # 5
    np.testing.assert_array_equal(q, [0, 7, -7, expected_half, 0, 7])
    assert deq[1] == pytest.approx(1.0) and deq[2] == pytest.approx(-1.0)
    assert deq[3] == pytest.approx((8 ** (5 / 7) - 1) / 7)
    fine = functions.log_companding_codes(np.linspace(0, 1, 1001), 1.0, 6, 0.1)[0]
    assert np.all(np.diff(fine) >= 0)  # monotonic
    q, deq = functions.log_companding_codes(np.ones(2), 0.0, 4)  # constant zero range
    np.testing.assert_array_equal(q, 0)


def test_pow2_codes():
    s = 2.0
    x = np.array([2.0, -1.0, 0.5, 2.0 / 64, 2.0 / 128, 0.0, 0.7, -3.0, 1.5])
    q, deq = functions.pow2_codes(x, s, num_bits=4)  # E = 7 exponents: 2^0 … 2^-6
    # 0.7/2 = 0.35 → log2 = -1.51 → e = -2; 1.5/2 = 0.75 → -0.415 → e = 0; 2/128 → e = -7: zero
    np.testing.assert_array_equal(q, [7, -6, 5, 1, 0, 0, 5, -7, 7])
    np.testing.assert_allclose(deq, [2.0, -1.0, 0.5, 2.0 / 64, 0, 0, 0.5, -2.0, 2.0])


@pytest.mark.parametrize("bad", [1, 17, 2.5, "8"])
def test_bits_out_of_range(bad):
    with pytest.raises(ValueError, match="num_bits must be an integer"):
        functions.linear_codes(np.zeros(2), 0, 1, bad)


@pytest.mark.parametrize("name", ["linear", "symmetric", "asymmetric", "log_companding", "pow2"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_tf_twins_match_numpy(name, per_channel):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    axis = 0 if per_channel else None
    lo, hi = x.min(axis=axis) * 0.8, x.max(axis=axis) * 0.8
    max_abs = np.maximum(np.abs(lo), np.abs(hi))
    bits = 4
    cases = {
        "linear": (functions.linear_codes(x, lo, hi, bits),
                   functions.fake_quant_linear(x, lo, hi, bits)),
        "symmetric": (functions.symmetric_codes(x, max_abs, bits),
                      functions.fake_quant_symmetric(x, max_abs, bits)),
        "asymmetric": (functions.asymmetric_codes(x, lo, hi, bits),
                       functions.fake_quant_asymmetric(x, lo, hi, bits)),
        "log_companding": (functions.log_companding_codes(x, max_abs, bits, 0.5),
                           functions.fake_quant_log_companding(x, max_abs, bits, 0.5)),
        "pow2": (functions.pow2_codes(x, max_abs, bits),
                 functions.fake_quant_pow2(x, max_abs, bits)),
    }
    (_, expected), got = cases[name]
    np.testing.assert_allclose(got.numpy(), expected, rtol=F32_RTOL, atol=F32_ATOL)


def test_straight_through_gradient_is_clipped():
    x = tf.constant([-2.0, -0.5, 0.0, 0.5, 2.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = functions.fake_quant_linear(x, -1.0, 1.0, 4)
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [0, 1, 1, 1, 0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = functions.fake_quant_pow2(x, 1.0, 4) * 3.0
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [0, 3, 3, 3, 0])


@pytest.mark.parametrize("alias", quantizers.available())
def test_registry_and_config_round_trip(alias):
    q = quantizers.get(alias)
    assert q.alias == alias
    again = quantizers.get(quantizers.serialize(q))
    assert again == q and again is not q
    assert quantizers.get(q) is q and quantizers.get(None) is None


def test_registry_errors():
    with pytest.raises(ValueError, match=r"Unknown quantizer 'int3'. Available: \["):
        quantizers.get("int3")
    with pytest.raises(ValueError, match="Expected None, a quantizer alias"):
        quantizers.get(3)
    with pytest.raises(ValueError, match="num_bits must be an integer in \\[2, 8\\]"):
        quantizers.Pow2Quantizer(num_bits=9)
    with pytest.raises(ValueError, match="ema_decay must be in"):
        quantizers.LinearQuantizer(ema_decay=1.5)


def test_deployment_truth_declarations():
    assert quantizers.Pow2Quantizer(num_bits=4).deploys_exactly("weights")
    assert not quantizers.Pow2Quantizer(num_bits=5).deploys_exactly("weights")
    assert quantizers.SymmetricQuantizer(num_bits=8).deploys_exactly("weights")
    assert not quantizers.AsymmetricQuantizer(num_bits=8).deploys_exactly("weights")
    assert quantizers.AsymmetricQuantizer(num_bits=8).deploys_exactly("activations")
    assert not quantizers.LogCompandingQuantizer().deploys_exactly("weights")


def _pow2_conv_model():
    tfmot_keras = quantizers.tfmot.quantization.keras
    activation = tfmot_keras.quantizers.MovingAverageQuantizer(
        num_bits=8, per_axis=False, symmetric=False, narrow_range=False)
    config = schemes.LayerQuantizeConfig(weights={"kernel": quantizers.Pow2Quantizer(4)},
                                     activations={"activation": activation})
    annotate = tfmot_keras.quantize_annotate_layer
    return tf_keras.Sequential([
        tf_keras.Input((8, 8, 1), name="img"),
        annotate(tf_keras.layers.Conv2D(4, 3, activation="relu"), config),
        annotate(tf_keras.layers.Flatten()),
        annotate(tf_keras.layers.Dense(3)),
    ])


def test_layer_quantize_config_round_trip():
    config = schemes.LayerQuantizeConfig(
        weights={"kernel": "pow2"},
        activations={"activation": quantizers.tfmot.quantization.keras.quantizers
                     .MovingAverageQuantizer(8, False, False, False)},
        output=quantizers.AsymmetricQuantizer(ema_decay=0.9))
    again = schemes.LayerQuantizeConfig.from_config(config.get_config())
    assert again.get_config() == config.get_config()
    assert again.weights["kernel"] == quantizers.Pow2Quantizer()


def test_pow2_weights_deploy_bit_exactly(tmp_path):
    tf_keras.utils.set_random_seed(0)
    tfmot_keras = quantizers.tfmot.quantization.keras
    with qat.quantize_scope():
        model = tfmot_keras.quantize_apply(_pow2_conv_model())
    model.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = tiny_data(64)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    conv = next(layer for layer in model.layers if "conv2d" in layer.name)
    kernel = next(w for w in conv.weights if w.name.endswith("kernel:0")).numpy()
    _, expected = functions.pow2_codes(kernel, np.abs(kernel).max(axis=(0, 1, 2)), 4)

    # A QAT model carries its own ranges (FakeQuant ops): convert without calibration.
    converter = models.wrap_model(model, "qat").make_converter(str(tmp_path))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    content = converter.convert()
    assert tflite_inspect.find_float_ops(content) == []
    interp = Interpreter(model_content=content)
    weights = [t for t in interp.get_tensor_details() if list(t["shape"]) == [4, 3, 3, 1]]
    assert len(weights) == 1 and weights[0]["dtype"] == np.int8
    codes = interp.get_tensor(weights[0]["index"]).astype(np.int64)
    scales = weights[0]["quantization_parameters"]["scales"]
    assert set(np.unique(np.abs(codes))) <= {0, 1, 2, 4, 8, 16, 32, 64}
    deployed = codes * scales[:, None, None, None]  # TFLite layout: (out, h, w, in)
    np.testing.assert_array_equal(deployed.transpose(1, 2, 3, 0).astype(np.float32),
                                  expected.astype(np.float32))


def test_activation_quantizer_meanstd_ranges():
    x = np.concatenate([np.linspace(-1, 1, 999), [50.0]]).astype(np.float32)  # one outlier
    layer = tf_keras.layers.Layer()
    for estimator, expected in [
            ("minmax", (-1.0, 50.0)),
            ("meanstd", (max(-1.0, x.mean() - 2 * x.std()), min(50.0, x.mean() + 2 * x.std())))]:
        q = quantizers.ActivationQuantizer(ema_decay=0.0, estimator=estimator, k=2.0)
        weights = q.build(tf.TensorShape(x.shape), f"a_{estimator}", layer)
        y = q(tf.constant(x), True, weights)
        got = (float(weights["min_var"].numpy()), float(weights["max_var"].numpy()))
        np.testing.assert_allclose(got, expected, rtol=1e-5)
        # The forward pass is TFLite's activation format on that range (nudged zero point).
        ref = tf.quantization.fake_quant_with_min_max_vars(x, min(got[0], 0), got[1], 8)
        np.testing.assert_array_equal(y.numpy(), ref.numpy())
    with pytest.raises(ValueError, match="Unknown estimator 'median'"):
        quantizers.ActivationQuantizer(estimator="median")
    with pytest.raises(ValueError, match="int8 per-tensor format"):
        quantizers.ActivationQuantizer(num_bits=4)


def test_learned_step_forward_and_gradients():
    x = tf.constant([[-1.0, -0.26, 0.0, 0.24, 0.9]])
    s = tf.Variable(0.1)
    with tf.GradientTape() as tape:
        y = functions.fake_quant_learned_step(x, s, 4)  # Q = 7: range ±0.7
        loss = tf.reduce_sum(y)
    ds = tape.gradient(loss, s)
    np.testing.assert_allclose(y.numpy(), [[-0.7, -0.3, 0.0, 0.2, 0.7]], atol=1e-6)
    ratio = x.numpy() / 0.1
    q = np.clip(np.round(ratio), -7, 7)
    expected = np.where(ratio > 7, 7, np.where(ratio < -7, -7, q - ratio)).sum() / np.sqrt(5 * 7)
    np.testing.assert_allclose(ds.numpy(), expected, rtol=1e-5)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = functions.fake_quant_learned_step(x, s, 4)
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [[0, 1, 1, 1, 0]])


def test_lsq_scheme_trains_its_step_and_deploys_exactly(tmp_path):
    from tflq.quant import schemes

    assert schemes.get_scheme("lsq").exact
    x, y = tiny_data(64)
    model = tf_keras.Sequential([tf_keras.Input((8, 8, 1), name="img"),
                                 tf_keras.layers.Conv2D(4, 3), tf_keras.layers.Flatten(),
                                 tf_keras.layers.Dense(3)])
    q = qat.quantize_model(model, "lsq")
    q.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    q.fit(x, y, epochs=1, batch_size=16, verbose=0)
    q.fit(x, y, epochs=1, batch_size=16, verbose=0)
    steps = [w for w in q.trainable_weights if "step" in w.name]
    assert len(steps) == 2 and all(np.all(w.numpy() > 0) for w in steps)
    rows = tflite_inspect.weight_requantization(q, convert.convert_qat(q, str(tmp_path)))
    assert all(r["found"] and r["exact"] for r in rows)


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_channels_ranges_per_output_channel(multiplier):
    # One range per output channel c·m of a (h, w, c, m) depthwise kernel; the plain
    # per-axis quantizer would take the last axis (m) only.
    rng = np.random.default_rng(3)
    kernel = rng.normal(size=(3, 3, 4, multiplier)) * np.logspace(-3, 0, 4).reshape(1, 1, 4, 1)
    layer = tf_keras.layers.DepthwiseConv2D(3, depth_multiplier=multiplier)
    layer.build((None, 8, 8, 4))
    wrapped = quantizers.DepthwiseChannels(quantizers.SymmetricQuantizer(8, per_axis=True))
    weights = wrapped.build(tf.TensorShape(kernel.shape), "k", layer)
    got = wrapped(tf.constant(kernel, tf.float32), False, weights).numpy()
    max_abs = np.abs(kernel).max(axis=(0, 1))  # (c, m): per output channel c·m
    _, want = functions.symmetric_codes(kernel, max_abs[None, None], 8)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    per_tensor = quantizers.SymmetricQuantizer(8, per_axis=True)
    flat = per_tensor(tf.constant(kernel, tf.float32), False, per_tensor.build(
        tf.TensorShape(kernel.shape), "k2", layer)).numpy()
    if multiplier == 1:  # the bug this wrapper fixes: small channels rounded to zero
        assert np.count_nonzero(flat[:, :, 0]) < np.count_nonzero(got[:, :, 0])


def test_depthwise_channels_rejects_a_non_depthwise_kernel():
    layer = tf_keras.layers.Dense(3)
    layer.build((None, 4))
    with pytest.raises(ValueError, match=r"4-D depthwise kernel \(h, w, c, m\). Received: shape=\(4, 3\)"):
        quantizers.DepthwiseChannels().build(tf.TensorShape((4, 3)), "k", layer)


@pytest.mark.parametrize("gates", [4, 3])
def test_gate_blocks_range_per_gate_of_a_recurrent_kernel(gates):
    # TFLite's int8 LSTM holds each gate's matrix with one scale max|w|/127; a per-axis
    # quantizer alone would give every column its own range, per tensor one for all gates.
    rng = np.random.default_rng(4)
    units = 5
    kernel = rng.normal(size=(6, gates * units)) * np.repeat(np.logspace(-2, 0, gates), units)
    layer = tf_keras.layers.Dense(3)
    layer.build((None, 4))
    wrapped = quantizers.GateBlocks(quantizers.SymmetricQuantizer(8, per_axis=True), gates)
    weights = wrapped.build(tf.TensorShape(kernel.shape), "k", layer)
    got = wrapped(tf.constant(kernel, tf.float32), False, weights).numpy()
    want = []
    for block in np.split(kernel, gates, axis=1):  # numpy: one symmetric scale per gate
        scale = np.abs(block).max() / 127
        want.append(np.round(block / scale) * scale)
    np.testing.assert_allclose(got, np.concatenate(want, axis=1), rtol=1e-5, atol=1e-9)


def test_gate_blocks_rejects_kernels_it_cannot_split():
    layer = tf_keras.layers.Dense(3)
    layer.build((None, 4))
    with pytest.raises(ValueError, match=r"2-D recurrent kernel. Received: shape=\(3, 3, 4\)"):
        quantizers.GateBlocks().build(tf.TensorShape((3, 3, 4)), "k", layer)
    wrapped = quantizers.GateBlocks(gates=4)
    with pytest.raises(ValueError, match="a kernel of 6 columns does not split into 4 gates"):
        wrapped.build(tf.TensorShape((2, 6)), "k", layer)
