"""Sigmoid, softmax and tanh outputs on TFLite's fixed int8 grid in the QAT graph.

Found on Basic Pitch (spotify/basic-pitch): its note head is a Conv2D with a sigmoid read by
a reshape that is a model output and by a Concatenate. With no FakeQuant of its own, the
sigmoid's output took its scale from both readers and the converter stopped with
"'tfl.concatenation' op quantization parameters violate the same scale constraint" in every
range-estimator, QAT and PQAT run. Here the same shape with built-in layers only: a sigmoid
read by two concatenations whose other inputs have very different ranges.
"""

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

import tflq
from tflq import interpreter, tflite_inspect
from tflq.models import tf_keras
from tflq.ptq import convert
from tflq.quant import qat, schemes

L = tf_keras.layers


def _two_readers(fused: bool):
    """A sigmoid head read by two Concatenates (outputs "note" and, through a conv, "onset")."""
    tf_keras.utils.set_random_seed(0)
    inp = L.Input((8, 8, 4), name="img")
    if fused:
        head = L.Conv2D(1, 3, padding="same", activation="sigmoid")(inp)
    else:
        head = L.Activation("sigmoid")(L.Conv2D(1, 3, padding="same")(inp))
    small = L.ReLU()(L.Conv2D(2, 3, padding="same")(inp))
    large = L.ReLU()(L.Conv2D(2, 3, padding="same", name="large")(inp))
    note = L.Concatenate(name="note")([head, small])
    onset = L.Conv2D(1, 3, padding="same", name="onset")(L.Concatenate()([head, large]))
    model = tf_keras.Model(inp, [note, onset])
    model.get_layer("large").set_weights([w * 6 for w in model.get_layer("large").get_weights()])
    return model


def _x(n=32, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 8, 8, 4)).astype(np.float32)


def _logistic_output_grids(content):
    """(scale, zero point) of every LOGISTIC op's output, read from the interpreter."""
    inspector = Interpreter(model_content=content)
    tensors = {d["index"]: d for d in inspector.get_tensor_details()}
    grids = []
    for op in inspector._get_ops_details():
        if op["op_name"] == "LOGISTIC":
            scale, zero_point = tensors[op["outputs"][0]]["quantization"]
            grids.append((scale, zero_point))
    return grids


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "standalone"])
def test_a_sigmoid_read_by_two_concatenations_converts(fused):
    model = _two_readers(fused)
    x = _x()
    result = tflq.convert(model, x[:16], x[16:], modes=("int8",), range_estimator="minmax",
                          num_calibration_samples=16, latency_runs=2, layer_error_samples=0,
                          progress=False)
    content = result.modes["int8"].tflite
    assert tflite_inspect.find_float_ops(content) == []
    # The converter's own calibration fails on this graph too (its log says "violate the same
    # scale constraint"): tflq says there is nothing to compare with instead of failing.
    notes = " ".join(result.report["modes"][-1]["notes"])
    assert "the plain converter refuses this model, so nothing to compare with" in notes
    grids = _logistic_output_grids(content)
    assert len(grids) == 1 and grids[0][0] == pytest.approx(1 / 256) and grids[0][1] == -128
    tflite = interpreter.TfliteModel(content)
    outputs = dict(zip(tflite.output_names, tflite.run({"img": x[16:]}), strict=True))
    note = next(o for o in outputs.values() if o.shape[-1] == 3)
    expected = model.predict(x[16:], verbose=0)[0]
    # The float model is the reference: the sigmoid channel is within two steps of the note
    # output's grid plus its input's step through the slope (≤ 1/4).
    step = (expected.max() - min(0.0, expected.min())) / 255  # that output's int8 step
    assert np.abs(note[..., 0] - expected[..., 0]).max() <= 2 * step + 1 / 64


def test_qat_trains_and_deploys_such_a_model(tmp_path):
    model = _two_readers(fused=True)
    x = _x(64)
    q = qat.quantize_model(model, "default_int8")
    q.compile("adam", "mse")
    targets = model.predict(x, verbose=0)
    q.fit(x, targets, epochs=1, batch_size=16, verbose=0)
    content = convert.convert_qat(q, str(tmp_path))
    assert tflite_inspect.find_float_ops(content) == []
    tflite = interpreter.TfliteModel(content)
    deployed = {o.shape[-1]: (o, tflite.output_scale(n))
                for n, o in zip(tflite.output_names, tflite.run({"img": x}), strict=True)}
    trained = q.predict(x, verbose=0)
    # The QAT model is the reference. The int8 kernels round now and then a step apart from
    # the FakeQuant ops (through the sigmoid's slope or a requantization): a few output steps.
    for want in trained:
        got, step = deployed[want.shape[-1]]
        assert np.abs(got - want).max() <= 4 * step
        assert np.abs(got - want).mean() <= step / 2  # mostly the same step


def test_a_probability_output_nothing_reads_is_left_to_the_kernel():
    """Rounding a classifier's probabilities in training would put the loss on values rounded
    to 0; the kernel's fixed grid applies at deployment anyway."""
    inp = L.Input((4,))
    model = tf_keras.Model(inp, L.Dense(3, activation="softmax")(L.Dense(4)(inp)))
    q = qat.quantize_model(model, "default_int8")
    head = q.layers[-1]
    assert head.quantize_config.get_output_quantizers(head.layer) == []


@pytest.mark.parametrize("activation, scale, zero_point",
                         [("sigmoid", 1 / 256, -128), ("softmax", 1 / 256, -128),
                          ("tanh", 1 / 128, 0)])
def test_the_fixed_quantizer_is_tflites_grid(activation, scale, zero_point):
    quantizer = schemes.fixed_output_quantizer(activation)
    values = np.linspace(-1.2, 1.2, 2001).astype(np.float32)
    got = np.asarray(quantizer(tf.constant(values), training=False, weights={}))
    # numpy reference: TFLite's int8 quantize-dequantize on that grid.
    want = (np.clip(np.round(values / scale) + zero_point, -128, 127) - zero_point) * scale
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_an_unknown_activation_has_no_fixed_grid():
    with pytest.raises(KeyError):
        schemes.fixed_output_quantizer("relu")
