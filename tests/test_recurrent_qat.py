"""QAT and compression of LSTM models (tflq.ptq.deploy): the LSTM kernels train on TFLite's
int8 grid for them (one scale per gate), the trained float weights go back into the float
model and the converter calibrates it to a fused int8 UNIDIRECTIONAL_SEQUENCE_LSTM. Checked
against numpy (the per-gate int8 weights the .tflite holds), the QAT Keras model (parity) and
the float model. Before, every one of these runs was refused: tfmot has no quantize config
for RNN cells."""

from __future__ import annotations

import re

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from test_recurrent import STEPS, VOCAB, _keras3_model, _tf_keras_model

import tflq
from tflq.models import tf_keras
from tflq.ptq import deploy
from tflq.quant import qat
from tflq.tflite_inspect import find_float_ops, ops_details

FAST = {"epochs": 2, "batch_size": 16, "verbose": 0, "latency_runs": 2, "layer_error_samples": 0}


def _data(model, n, seed):
    """Random token ids (in the model's input dtype) and the float model's own top-1 labels."""
    dtype = model.inputs[0].dtype
    dtype = getattr(dtype, "name", dtype)
    tokens = np.random.default_rng(seed).integers(0, VOCAB, (n, STEPS)).astype(dtype)
    return tokens, np.asarray(model(tokens)).argmax(-1)


def _lstm_weights(content: bytes) -> list[np.ndarray]:
    """The 8 gate matrices of the .tflite's LSTM, dequantized with the interpreter's own scales."""
    interp = Interpreter(model_content=content)
    op = next(o for o in ops_details(interp) if o["op_name"] == "UNIDIRECTIONAL_SEQUENCE_LSTM")
    details = interp.get_tensor_details()
    found = []
    for index in op["inputs"][1:9]:
        scale = details[index]["quantization_parameters"]["scales"]
        assert details[index]["dtype"] == np.int8 and scale.size == 1
        found.append(interp.get_tensor(index).astype(np.float64) * scale[0])
    return found


def _trained_lstm(qat_h5: str) -> dict:
    with qat.quantize_scope():
        model = tf_keras.models.load_model(qat_h5)
    return {w.name.split("/")[-1]: w.numpy() for w in model.get_layer("quant_lstm").weights}


def _per_gate_int8(kernel: np.ndarray) -> list[np.ndarray]:
    """numpy: TFLite's int8 LSTM weights, each gate (units, inputs) at max|w| / 127."""
    out = []
    for block in np.split(kernel, 4, axis=1):
        scale = np.abs(block).max() / 127
        out.append((np.round(block / scale) * scale).T)
    return out


@pytest.mark.parametrize("flavor", ["tf_keras", "keras3"])
def test_qat_of_an_lstm_deploys_the_trained_per_gate_int8_weights(flavor, tmp_path):
    float_model = _tf_keras_model()
    if flavor == "keras3":
        float_model = _keras3_model(float_model.get_weights())
    x, y = _data(float_model, 96, seed=1)
    result = tflq.qat(float_model, (x[:64], y[:64]), (x[64:], y[64:]), out=str(tmp_path), **FAST)
    content = result.modes["int8"].tflite
    interp = Interpreter(model_content=content)
    ops = [o["op_name"] for o in ops_details(interp)]
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in ops and not find_float_ops(content)
    # The .tflite holds exactly the trained kernel on the per-gate int8 grid (numpy reference).
    trained = _trained_lstm(str(next(tmp_path.glob("*_qat.h5"))))
    want = (_per_gate_int8(trained["kernel:0"])
            + _per_gate_int8(trained["recurrent_kernel:0"]))
    for got, expected in zip(_lstm_weights(content), want, strict=True):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    section = result.report["qat"]
    assert section["deploys_exactly"] is True
    assert all(row["found"] and row["exact"] for row in section["weights"])
    assert section["parity"]["top1_agreement"] >= 0.9  # QAT Keras model against the .tflite
    notes = " ".join(result.report["modes"][0]["notes"])
    assert "the converter's int8 of the QAT-trained float weights, calibrated on 64" in notes
    assert "static batch of 1" in notes and "ranges from the converter's calibration" in notes
    assert re.search(r"token-id input\(s\) \['\w+'\] keep float I/O", notes)
    assert "ranges from training" not in notes
    assert "outputs within one LSB n/a (float output)" in (tmp_path / "report.md").read_text()


def test_unlabelled_distillation_and_pow2_say_the_weights_were_requantized(tmp_path):
    float_model = _tf_keras_model()
    x, _ = _data(float_model, 80, seed=2)
    result = tflq.qat(float_model, x[:64], x[64:], scheme="pow2", strategy="distill",
                      teacher=float_model, **FAST)
    section = result.report["qat"]
    assert section["distillation"]["alpha"] == 0 and section["deploys_exactly"] is False
    notes = " ".join(result.report["modes"][0]["notes"])
    assert "pow2 weights do not fit TFLite's int8 weight format" in notes
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in [
        o["op_name"] for o in ops_details(Interpreter(model_content=result.modes["int8"].tflite))]
    assert not any(row["exact"] for row in section["weights"] if row["type"] == "LSTM")


def test_pruned_qat_of_an_lstm_model_keeps_the_sparsity_in_the_tflite(capsys):
    # compress prunes Conv/Dense kernels (--layer_types); the LSTM trains on its gate grid,
    # unpruned, and the report and stderr say so.
    float_model = _tf_keras_model()
    x, y = _data(float_model, 96, seed=3)
    result = tflq.compress(float_model, (x[:64], y[:64]), (x[64:], y[64:]), sparsity=0.5,
                           quantization="qat", epochs=2, batch_size=16, verbose=0,
                           latency_runs=2)
    content = result.modes["int8"].tflite
    assert not find_float_ops(content)
    assert result.report["compression"]["layers"] == ["probs"]
    interp = Interpreter(model_content=content)
    dense = next(o for o in ops_details(interp) if o["op_name"] == "FULLY_CONNECTED")
    codes = interp.get_tensor(dense["inputs"][1])
    assert np.mean(codes == 0) >= 0.5  # the pruned half is still zero after QAT and int8
    assert all(np.count_nonzero(g) > 0.9 * g.size for g in _lstm_weights(content))
    notes = " ".join(result.report["modes"][0]["notes"])
    lstm = float_model.get_layer("lstm")
    assert re.search(r"left uncompressed: \d layer\(s\) holding [\d.]+% of the kernel weights: .*"
                     rf"{lstm.name} \(LSTM\)", notes), notes
    assert "tflq: left uncompressed" in capsys.readouterr().err


def test_recurrent_layers_tflq_cannot_train_are_refused_naming_them():
    inputs = tf_keras.Input((STEPS, 3))
    gru = tf_keras.layers.GRU(4, name="gru")(inputs)
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(2)(gru))
    with pytest.raises(ValueError, match=r"Recurrent layer\(s\) \['gru'\] cannot be trained by "
                                         "tflq's QAT.*GRU and SimpleRNN have no int8 kernel"):
        qat.quantize_model(model, lstm_ok=True)
    bidirectional = tf_keras.layers.Bidirectional(tf_keras.layers.LSTM(4), name="bi")(inputs)
    model = tf_keras.Model(inputs, bidirectional)
    with pytest.raises(ValueError, match=r"\['bi'\] cannot be trained.*Bidirectional"):
        qat.quantize_model(model, lstm_ok=True)
    # A graph the converter converts as trained (--adaround with an estimator) takes none.
    with pytest.raises(ValueError, match=r"\['lstm'\] cannot go into tflq's QAT-graph conversion"):
        qat.quantize_model(_tf_keras_model())


def test_trained_float_copies_the_wrapped_weights_and_names_a_lost_layer():
    float_model = _tf_keras_model()
    prepared = []
    student = qat.quantize_model(float_model, lstm_ok=True, prepared=prepared)
    for variable in student.trainable_weights:  # as if trained
        variable.assign(variable + 0.01)
    copy = deploy.trained_float(student, prepared[0])
    by_name = {w.name.split("/", 1)[-1]: w.numpy() for w in student.weights}
    for layer in copy.layers:
        for weight in layer.weights:
            np.testing.assert_array_equal(weight.numpy(),
                                          by_name[weight.name.split("/", 1)[-1]])
    assert not np.array_equal(copy.get_weights()[1], float_model.get_weights()[1])
    other = tf_keras.models.clone_model(prepared[0], clone_function=lambda layer: type(
        layer).from_config({**layer.get_config(), "name": "head"} if layer.name == "probs"
                           else layer.get_config()))
    with pytest.raises(RuntimeError, match=r"no trained value for 'head/kernel:0' \(layer 'head'\)"):
        deploy.trained_float(student, other)
