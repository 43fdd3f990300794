"""Recurrent models (tflq.recurrent): Embedding + LSTM in tf_keras and Keras 3 convert with a
static batch of 1 to a fused UNIDIRECTIONAL_SEQUENCE_LSTM in float32, dynamic and int8; the
.tflite agrees with the float Keras model on the same token ids, batches run sample by sample
exactly as fresh interpreters run each sample, and the report line says why the batch is 1.
Before tflq.recurrent every one of these conversions stopped at
"'tf.TensorListReserve' op requires element_shape to be static"."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from tflq import layer_error, recurrent
from tflq.interpreter import TfliteModel
from tflq.models import tf_keras, wrap_model
from tflq.options import ConvertOptions
from tflq.ptq import convert
from tflq.quant import qat
from tflq.tflite_inspect import find_float_ops, ops_details

VOCAB, STEPS, UNITS, CLASSES = 40, 7, 6, 3
# float32 TFLite runs the same LSTM math in another kernel: float rounding only.
FLOAT32_ATOL = 1e-5
# dynamic range (int8 weights) and full int8 change softmax probabilities by a few output steps
# (1/256 each for int8); loose bounds, labelled as such, on a tiny random model.
DYNAMIC_ATOL = 0.03
INT8_ATOL = 0.05


def _tf_keras_model():
    """tf_keras, float32 token input (as ethnicolr's .h5), dropout on the LSTM."""
    inputs = tf_keras.Input((STEPS,), dtype="float32", name="tokens")
    x = tf_keras.layers.Embedding(VOCAB, 8)(inputs)
    x = tf_keras.layers.LSTM(UNITS, dropout=0.2, recurrent_dropout=0.2, name="lstm")(x)
    outputs = tf_keras.layers.Dense(CLASSES, activation="softmax", name="probs")(x)
    model = tf_keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in model.get_weights()])
    return model


def _keras3_model(weights):
    """Keras 3 Sequential, int32 token input (as SentiToolKit), same weights."""
    model = keras.Sequential([keras.Input((STEPS,), dtype="int32"), keras.layers.Embedding(VOCAB, 8),
                              keras.layers.LSTM(UNITS, recurrent_dropout=0.3, name="lstm"),
                              keras.layers.Dense(CLASSES, activation="softmax")])
    model.set_weights(weights)
    return model


@pytest.fixture(scope="module")
def models():
    k2 = _tf_keras_model()
    return {"tf_keras": wrap_model(k2), "keras3": wrap_model(_keras3_model(k2.get_weights()))}


@pytest.fixture(scope="module")
def converted(models, tmp_path_factory):
    """``converted(flavor, mode)``: the Conversion, made once per module."""
    cache = {}

    def get(flavor, mode):
        if (flavor, mode) not in cache:
            loaded = models[flavor]
            cache[flavor, mode] = convert.convert_model(
                loaded, mode, str(tmp_path_factory.mktemp("convert")),
                representative=_representative(loaded))
        return cache[flavor, mode]
    return get


def _tokens(loaded, n, seed):
    spec = loaded.inputs[0]
    ids = np.random.default_rng(seed).integers(0, VOCAB, (n, STEPS))
    return {spec.name: ids.astype(spec.dtype)}


def _representative(loaded):
    def gen():
        batch = _tokens(loaded, 16, seed=5)
        for i in range(16):
            yield {k: v[i:i + 1] for k, v in batch.items()}  # ints stay ints
    return gen


@pytest.mark.parametrize("flavor", ["tf_keras", "keras3"])
@pytest.mark.parametrize("mode,atol", [("float32", FLOAT32_ATOL),
                                       pytest.param("dynamic", DYNAMIC_ATOL, marks=pytest.mark.slow),
                                       ("int8", INT8_ATOL)])
def test_lstm_converts_fused_and_matches_the_float_model(models, converted, flavor, mode, atol):
    loaded = models[flavor]
    result = converted(flavor, mode)
    ops = [op["op_name"] for op in ops_details(Interpreter(model_content=result.content))]
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in ops and "WHILE" not in ops
    if mode == "int8":
        assert find_float_ops(result.content) == []
        assert result.float_ops == ()
    assert any("static batch of 1 because of recurrent layer 'lstm'" in n for n in result.notes)
    feed = _tokens(loaded, 9, seed=1)
    reference = loaded.keras_model(next(iter(feed.values())), training=False)
    signature = Interpreter(model_content=result.content).get_signature_list()
    assert signature == {"serving_default": {"inputs": list(loaded.input_names),
                                             "outputs": list(loaded.output_names)}}
    runner = TfliteModel(result.content, loaded.output_names)
    assert runner.static_batch
    np.testing.assert_allclose(runner.run(feed)[0], np.asarray(reference), atol=atol)


def test_batched_run_equals_the_interpreters_own_per_sample_runs(models, converted):
    loaded = models["tf_keras"]
    content = converted("tf_keras", "int8").content
    feed = _tokens(loaded, 5, seed=2)
    batched = TfliteModel(content, loaded.output_names).run(feed)[0]
    name = loaded.input_names[0]
    expected = []
    for i in range(5):  # a fresh interpreter per sample: no state carried between samples
        runner = Interpreter(model_content=content).get_signature_runner()
        detail = runner.get_input_details()[name]
        scale, zero = runner.get_output_details()[loaded.output_names[0]]["quantization"]
        out = runner(**{name: feed[name][i:i + 1].astype(detail["dtype"])})[loaded.output_names[0]]
        expected.append(out if not scale else (out.astype(np.float64) - zero) * scale)
    np.testing.assert_allclose(batched, np.concatenate(expected), rtol=0, atol=1e-7)


def test_find_recurrent_layers_looks_into_nested_models_and_wrappers():
    inner_in = tf_keras.Input((5, 3))
    inner = tf_keras.Model(inner_in, tf_keras.layers.GRU(4, return_sequences=True, name="gru")(inner_in),
                           name="encoder")
    inputs = tf_keras.Input((5, 3))
    x = inner(inputs)
    x = tf_keras.layers.Bidirectional(tf_keras.layers.LSTM(2), name="bi")(x)
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(1, name="head")(x))
    assert recurrent.find_recurrent_layers(model) == ["encoder/gru", "bi"]
    plain = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(2)])
    assert recurrent.find_recurrent_layers(plain) == []
    k3 = keras.Sequential([keras.Input((5, 3)), keras.layers.SimpleRNN(2, name="rnn")])
    assert recurrent.find_recurrent_layers(k3) == ["rnn"]


def test_inference_copy_zeroes_only_dropout_and_keeps_outputs(models):
    loaded = models["tf_keras"]
    copy = recurrent.inference_copy(loaded.keras_model, loaded.inputs)
    assert copy.changed == {"lstm": {"dropout": 0.2, "recurrent_dropout": 0.2}}
    lstm = copy.model.get_layer("lstm")
    assert (lstm.dropout, lstm.recurrent_dropout) == (0.0, 0.0)
    assert loaded.keras_model.get_layer("lstm").recurrent_dropout == 0.2  # original untouched
    x = _tokens(loaded, 4, seed=3)["tokens"]
    # Without recurrent dropout tf_keras runs its fused LSTM function instead of the generic
    # loop: the same math in another order (float rounding, seen up to 3e-8 here).
    np.testing.assert_allclose(copy.model(x, training=False), loaded.keras_model(x, training=False),
                               rtol=0, atol=1e-6)
    no_dropout = recurrent.inference_copy(copy.model, loaded.inputs)
    assert no_dropout.model is copy.model and no_dropout.changed == {}


def test_probe_inputs_are_valid_token_ids(models):
    loaded = models["keras3"]
    probe = recurrent.probe_inputs(loaded.keras_model, loaded.inputs)
    assert probe.dtype == np.int32 and probe.shape == (4, STEPS)
    assert probe.min() >= 0 and probe.max() < VOCAB


def test_models_without_recurrent_layers_keep_the_free_batch(tmp_path):
    model = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(2)])
    loaded = wrap_model(model)
    assert loaded.static_batch() is None and loaded.conversion_notes == ()
    result = convert.convert_model(loaded, "float32", str(tmp_path))
    assert result.notes == ()
    assert not TfliteModel(result.content).static_batch


def test_int16x8_is_refused_before_converting(models, tmp_path):
    loaded = models["tf_keras"]
    for allow in (False, True):  # with float ops allowed the .tflite fails to prepare in LiteRT
        with pytest.raises(ValueError, match=r"Mode 'int16x8' does not support recurrent layer\(s\) \['lstm'\]"):
            convert.convert_model(loaded, "int16x8", str(tmp_path), representative=_representative(loaded),
                                  options=ConvertOptions(allow_float_ops=allow))


def test_converter_refusal_names_every_op_without_a_kernel(tmp_path, monkeypatch):
    class Refusing:  # the converter's message: one line per op it cannot quantize
        def convert(self):
            raise RuntimeError("Quantization to 16x8-bit not yet supported for op: 'CAST'.\n"
                               "Quantization to 16x8-bit not yet supported for op: 'NEG'.")
    loaded = wrap_model(tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(2)]))
    monkeypatch.setattr(loaded, "make_converter", lambda workdir: Refusing())
    with pytest.raises(ValueError, match=r"not yet supported for ops: 'CAST', 'NEG'\."):
        convert.convert_model(loaded, "float32", str(tmp_path))

def test_layer_error_starts_every_sample_from_a_zero_lstm_state(models, converted):
    loaded = models["tf_keras"]
    sample = {k: v[:1] for k, v in _tokens(loaded, 1, seed=4).items()}
    float32, int8 = converted("tf_keras", "float32").content, converted("tf_keras", "int8").content
    once = layer_error.measure(float32, {"int8": int8}, [sample])["int8"]["layers"]
    twice = layer_error.measure(float32, {"int8": int8}, [sample, sample])["int8"]["layers"]
    lstm = [i for i, row in enumerate(once) if row["op"] == "UNIDIRECTIONAL_SEQUENCE_LSTM"]
    assert lstm and once[lstm[0]]["matched"]
    for a, b in zip(once, twice, strict=True):  # the same sample twice: the same error
        assert a["rmse"] == pytest.approx(b["rmse"], rel=1e-9, abs=1e-12)


def test_qat_graph_refuses_recurrent_layers_naming_them(models, tmp_path):
    with pytest.raises(ValueError, match=r"Recurrent layer\(s\) \['lstm'\] cannot go into tflq's "
                                         "QAT-graph conversion"):
        qat.quantize_model(models["tf_keras"].keras_model)
    loaded = models["keras3"]  # its checked tf_keras rebuild is what QAT would wrap
    rebuilt = loaded.to_tf_keras([_tokens(loaded, 4, seed=2)[loaded.input_names[0]]])
    with pytest.raises(ValueError, match=r"Recurrent layer\(s\) \['lstm'\]"):
        qat.quantize_model(rebuilt)


def test_static_batch_model_refuses_inputs_of_different_batch_sizes(tmp_path):
    a, b = tf_keras.Input((3,), batch_size=1, name="a"), tf_keras.Input((2,), batch_size=1, name="b")
    dense = tf_keras.layers.Dense(2, name="out")(tf_keras.layers.Concatenate()([a, b]))
    model = tf_keras.Model([a, b], dense)
    content = convert.convert_model(wrap_model(model), "float32", str(tmp_path)).content
    runner = TfliteModel(content)
    assert runner.static_batch
    x = {"a": np.ones((3, 3), np.float32), "b": np.ones((3, 2), np.float32)}
    np.testing.assert_allclose(runner.run(x)[0], model.predict([x["a"], x["b"]], verbose=0), atol=1e-6)
    with pytest.raises(ValueError, match=r"different batch sizes \[2, 3\]"):
        runner.run({"a": x["a"], "b": x["b"][:2]})

def _gru_model():
    inputs = tf_keras.Input((STEPS,), dtype="int32", name="tokens")
    x = tf_keras.layers.Embedding(VOCAB, 8)(inputs)
    x = tf_keras.layers.GRU(UNITS, name="gru")(x)
    return tf_keras.Model(inputs, tf_keras.layers.Dense(CLASSES, activation="softmax")(x))


def test_gru_converts_in_float_and_integer_modes_are_refused_before_converting(tmp_path):
    loaded = wrap_model(_gru_model())
    assert loaded.static_batch().unfused == ("gru",)
    result = convert.convert_model(loaded, "float32", str(tmp_path))
    ops = [op["op_name"] for op in ops_details(Interpreter(model_content=result.content))]
    assert "WHILE" in ops  # no fused GRU kernel in TFLite
    feed = _tokens(loaded, 3, seed=6)
    np.testing.assert_allclose(TfliteModel(result.content).run(feed)[0],
                               loaded.keras_model(feed["tokens"]), atol=FLOAT32_ATOL)
    # the calibrator segfaults on the WHILE loop: never reached
    with pytest.raises(ValueError, match=r"Mode 'int8' cannot calibrate recurrent layer\(s\) \['gru'\]"):
        convert.convert_model(loaded, "int8", str(tmp_path), representative=_representative(loaded))


@pytest.mark.parametrize("flavor", ["tf_keras", "keras3"])
@pytest.mark.parametrize("changes", [{"range_estimator": "percentile"}, {"range_search": True}])
def test_range_estimators_and_search_work_on_the_converters_calibrated_model(
        models, flavor, changes, tmp_path, capsys):
    # tflq's QAT graph cannot hold an LSTM (tfmot has no RNN quantize config): ranges are set on
    # the converter's calibrated model, after requantizing it unchanged reproduced the
    # converter's int8 exactly (else RewriteError).
    loaded = models[flavor]
    result = convert.convert_model(loaded, "int8", str(tmp_path),
                                   representative=_representative(loaded),
                                   options=ConvertOptions(**changes))
    ops = [op["op_name"] for op in ops_details(Interpreter(model_content=result.content))]
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in ops and not result.float_ops
    feed = _tokens(loaded, 8, seed=11)
    want = np.asarray(loaded.keras_model(feed[loaded.inputs[0].name]))
    np.testing.assert_allclose(TfliteModel(result.content).run(feed)[0], want, atol=INT8_ATOL)
    key = "ranges" if "range_estimator" in changes else "range_search"
    assert key in result.details
    assert "tflq's QAT graph cannot hold recurrent layers" in capsys.readouterr().err


def test_unfused_layers_reads_the_lstm_configuration():
    inputs = tf_keras.Input((5, 3))
    a = tf_keras.layers.LSTM(2, name="plain")(inputs)
    b = tf_keras.layers.LSTM(2, activation="relu", name="relu_lstm")(inputs)
    c = tf_keras.layers.Bidirectional(tf_keras.layers.LSTM(2), name="bi")(inputs)
    d = tf_keras.layers.SimpleRNN(2, name="simple")(inputs)
    model = tf_keras.Model(inputs, tf_keras.layers.Concatenate()([a, b, c, d]))
    assert sorted(recurrent.unfused_layers(model)) == ["relu_lstm", "simple"]


def test_two_inputs_two_outputs_keep_their_signature_names(tmp_path):
    tokens = tf_keras.Input((STEPS,), dtype="int32", name="tokens")
    extra = tf_keras.Input((STEPS, 2), name="extra")
    x = tf_keras.layers.Concatenate()([tf_keras.layers.Embedding(VOCAB, 4)(tokens), extra])
    x = tf_keras.layers.LSTM(UNITS, name="lstm")(x)
    model = tf_keras.Model([tokens, extra], [tf_keras.layers.Dense(CLASSES, name="probs")(x),
                                             tf_keras.layers.Dense(1, name="score")(x)])
    loaded = wrap_model(model)
    content = convert.convert_model(loaded, "float32", str(tmp_path)).content
    signature = Interpreter(model_content=content).get_signature_list()["serving_default"]
    assert sorted(signature["inputs"]) == ["extra", "tokens"]
    assert sorted(signature["outputs"]) == ["probs", "score"]
    rng = np.random.default_rng(7)
    feed = {"tokens": rng.integers(0, VOCAB, (4, STEPS)).astype("int32"),
            "extra": rng.standard_normal((4, STEPS, 2)).astype("float32")}
    expected = model([feed["tokens"], feed["extra"]], training=False)
    got = TfliteModel(content, ["score", "probs"]).run(feed)  # outputs by name, in asked order
    np.testing.assert_allclose(got[0], expected[1], atol=FLOAT32_ATOL)
    np.testing.assert_allclose(got[1], expected[0], atol=FLOAT32_ATOL)


@pytest.mark.parametrize("changes, keys", [
    ({"equalize": True, "range_search": True}, {"equalize", "range_search"}),
    ({"adaround": True, "adaround_iterations": 20, "range_search": True},
     {"adaround", "range_search"}),
    ({"equalize": True, "range_estimator": "mse"}, {"equalize", "ranges"}),
    ({"adaround": True, "adaround_iterations": 20, "range_estimator": "percentile"},
     {"adaround", "ranges"})])
def test_equalize_and_adaround_combine_with_range_search_on_an_lstm(models, changes, keys,
                                                                   tmp_path, capsys):
    # Equalization and AdaRound rewrite the tf_keras model (nothing to pair here; AdaRound
    # rounds the Dense head), then range search or a range estimator works on the
    # converter's calibrated model (tflq's QAT graph cannot hold the LSTM).
    loaded = models["tf_keras"]
    result = convert.convert_model(loaded, "int8", str(tmp_path),
                                   representative=_representative(loaded),
                                   options=ConvertOptions(**changes))
    ops = [op["op_name"] for op in ops_details(Interpreter(model_content=result.content))]
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in ops and not result.float_ops
    assert keys <= set(result.details)
    if "adaround" in keys:
        assert [r["deployed_exactly"] for r in result.details["adaround"]["layers"]] == [True]
    if "ranges" in keys:
        assert result.details["ranges"]["route"] == "converter"
        assert "tflq's QAT graph cannot hold recurrent layers" in capsys.readouterr().err
    feed = _tokens(loaded, 8, seed=11)
    want = np.asarray(loaded.keras_model(feed[loaded.inputs[0].name]))
    np.testing.assert_allclose(TfliteModel(result.content).run(feed)[0], want, atol=INT8_ATOL)
