"""Sigmoid, softmax and tanh outputs on TFLite's fixed int8 grid in the QAT graph.

Found on Basic Pitch (spotify/basic-pitch): its note head is a Conv2D with a sigmoid that is
read by a custom reshape layer (a model output) and by a Concatenate. With no FakeQuant of
its own, the sigmoid's output took its scale from both readers and the converter stopped
with "'tfl.concatenation' op quantization parameters violate the same scale constraint"
in every range-estimator, QAT and PQAT run.
"""

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from tflq import interpreter, tflite_inspect
from tflq.models import tf_keras
from tflq.ptq import convert, ranges
from tflq.quant import qat, schemes

L = tf_keras.layers


class _Squeeze(L.Layer):
    """A user's own layer that only reshapes (Basic Pitch's FlattenFreqCh)."""

    def call(self, x):
        return tf.squeeze(x, -1)


def _two_readers(fused: bool):
    """A sigmoid head read by a custom reshape (output "note") and a Concatenate."""
    inp = L.Input((8, 8, 4), name="img")
    if fused:
        head = L.Conv2D(1, 3, padding="same", activation="sigmoid")(inp)
    else:
        head = L.Activation("sigmoid")(L.Conv2D(1, 3, padding="same")(inp))
    note = _Squeeze(name="note")(head)
    branch = L.ReLU()(L.Conv2D(4, 3, padding="same")(inp))
    joined = L.Concatenate(name="concat")([head, branch])
    onset = L.Conv2D(1, 3, padding="same", activation="sigmoid", name="onset")(joined)
    return tf_keras.Model(inp, [note, onset])


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
def test_a_sigmoid_read_by_a_reshape_and_a_concatenation_converts(fused, tmp_path):
    tf_keras.utils.set_random_seed(0)
    model = _two_readers(fused)
    x = _x()
    q, _ = ranges.calibrated_model(model, lambda: iter([x[:16], x[16:]]), "minmax")
    content = convert.convert_qat(q, str(tmp_path))
    assert tflite_inspect.find_float_ops(content) == []
    grids = _logistic_output_grids(content)
    assert len(grids) == 2 and all(s == pytest.approx(1 / 256) and z == -128 for s, z in grids)
    outputs = interpreter.TfliteModel(content).run({"img": x})
    note = next(o for o in outputs if o.ndim == 3)
    expected = model.predict(x, verbose=0)[0]
    # The float model is the reference: a sigmoid step (1/256), its input's step through the
    # sigmoid's slope (≤ 1/4) and the note output's own step, with a little headroom.
    assert np.abs(note - expected).max() <= 4 / 256


def test_qat_trains_and_deploys_such_a_model(tmp_path):
    tf_keras.utils.set_random_seed(0)
    model = _two_readers(fused=True)
    x = _x(64)
    q = qat.quantize_model(model, "default_int8")
    q.compile("adam", "mse")
    targets = model.predict(x, verbose=0)
    q.fit(x, targets, epochs=1, batch_size=16, verbose=0)
    content = convert.convert_qat(q, str(tmp_path))
    assert tflite_inspect.find_float_ops(content) == []
    tflite = interpreter.TfliteModel(content)
    deployed = {o.ndim: (o, tflite.output_scale(n))
                for n, o in zip(tflite.output_names, tflite.run({"img": x}), strict=True)}
    trained = q.predict(x, verbose=0)
    # The QAT model is the reference. The int8 kernels round the sigmoid's input a step apart
    # from the FakeQuant now and then; through the slope (≤ 1/4) that is a few output steps.
    for want in trained:
        got, step = deployed[want.ndim]
        assert np.abs(got - want).max() <= 4 * step
        assert np.mean(np.abs(got - want) < step / 2) > 0.8  # mostly the same step


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
