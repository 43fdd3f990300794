"""--range_search (tflq.ptq.thresholds): the converter's calibrated model requantized with
searched activation ranges, checked against the converter, the TFLite int8 spec and the
float model."""

import numpy as np
import pytest

from tflq.interpreter import TfliteModel
from tflq.keras3 import RewriteError
from tflq.models import tf_keras, wrap_model
from tflq.options import ConvertOptions, Mode
from tflq.ptq import convert, thresholds


def _model(seed=0):
    tf_keras.utils.set_random_seed(seed)
    inp = tf_keras.layers.Input((8, 8, 3), name="img")
    x = tf_keras.layers.Conv2D(8, 3, activation="relu", name="c1")(inp)
    x = tf_keras.layers.Conv2D(8, 3, name="c2")(x)
    y = tf_keras.layers.Dense(4, name="head")(tf_keras.layers.GlobalAveragePooling2D()(x))
    return wrap_model(tf_keras.Model(inp, y))


def _samples(n=48, seed=0):
    rng = np.random.default_rng(seed)
    # Heavy tails: a few large values stretch min/max, so the converter's ranges waste levels.
    x = rng.standard_t(2, size=(n, 8, 8, 3)).astype(np.float32)
    return [{"img": x[i:i + 1]} for i in range(n)]


def _converter(model, samples, workdir, options):
    converter = model.make_converter(str(workdir))
    convert.configure(converter, Mode.INT8, options, lambda: iter(samples))
    return converter


def _batches(samples):
    return [{"img": np.concatenate([s["img"] for s in samples[i:i + 16]])}
            for i in range(0, len(samples), 16)]


def _sqnr(reference, test):  # numpy, independent of tflq.metrics
    reference, test = np.asarray(reference, np.float64), np.asarray(test, np.float64)
    return 10 * np.log10(np.sum(reference ** 2) / np.sum((reference - test) ** 2))


@pytest.mark.parametrize("per_channel", [True, False])
def test_requantizing_the_calibrated_model_unchanged_is_the_converter(tmp_path, per_channel):
    model, samples = _model(), _samples()
    options = ConvertOptions(per_channel=per_channel)
    plain = _converter(model, samples, tmp_path, options).convert()
    calibrated = thresholds.calibrate(_converter(model, samples, tmp_path, options))
    ours = thresholds.check_requantize(calibrated, plain, options, _batches(samples), None)
    x = np.concatenate([s["img"] for s in samples])
    np.testing.assert_array_equal(TfliteModel(ours).run({"img": x})[0],
                                  TfliteModel(plain).run({"img": x})[0])


def test_a_requantization_that_differs_from_the_converter_is_our_bug(tmp_path):
    model, samples = _model(), _samples()
    per_tensor = _converter(model, samples, tmp_path, ConvertOptions(per_channel=False)).convert()
    calibrated = thresholds.calibrate(_converter(model, samples, tmp_path, ConvertOptions()))
    with pytest.raises(RewriteError, match="does not reproduce the converter's int8"):
        thresholds.check_requantize(calibrated, per_tensor, ConvertOptions(), _batches(samples),
                                    None)


def test_given_ranges_become_the_int8_scale_and_zero_point_of_the_spec(tmp_path):
    model, samples = _model(), _samples()
    calibrated = thresholds.calibrate(_converter(model, samples, tmp_path, ConvertOptions()))
    recorded = thresholds.ranged_tensors(calibrated)
    assert recorded, "the calibrated model records no activation range"
    index = next(iter(recorded))
    lo, hi = -0.5, 1.5
    content = thresholds.requantize(calibrated, ConvertOptions(), {index: (lo, hi)})
    from ai_edge_litert.interpreter import Interpreter

    name = Interpreter(model_content=calibrated).get_tensor_details()[index]["name"]
    details = {d["name"]: d for d in Interpreter(model_content=content).get_tensor_details()}
    scale, zero_point = details[name]["quantization"]
    expected_scale = (hi - lo) / 255  # TFLite int8 spec: asymmetric, [-128, 127]
    assert scale == pytest.approx(expected_scale, rel=1e-6)
    assert zero_point == int(round(-128 - lo / expected_scale))


def test_search_is_never_worse_than_the_converter_on_the_calibration_samples(tmp_path):
    model, samples = _model(), _samples()
    options = ConvertOptions()
    plain = _converter(model, samples, tmp_path, options).convert()
    calibrated = thresholds.calibrate(_converter(model, samples, tmp_path, options))
    content, record = thresholds.search(calibrated, options, _batches(samples), None)
    x = np.concatenate([s["img"] for s in samples])
    reference = model.predict({"img": x})[0]
    searched = _sqnr(reference, TfliteModel(content).run({"img": x})[0])
    converter = _sqnr(reference, TfliteModel(plain).run({"img": x})[0])
    assert searched >= converter - 0.05, (searched, converter)
    assert record["calibration_sqnr_db"]["searched"] == pytest.approx(searched, abs=0.1)
    assert record["tensors"] == len(thresholds.ranged_tensors(calibrated))
    assert 0 <= record["changed"] <= record["tensors"]
    assert record["start"] in thresholds.STARTS


def test_range_search_through_convert_model_reports_what_it_did(tmp_path, capsys):
    model, samples = _model(), _samples()
    conversion = convert.convert_model(model, Mode.INT8, str(tmp_path), lambda: iter(samples),
                                       ConvertOptions(range_search=True, integer_io=True))
    assert conversion.float_ops == ()
    record = conversion.details["range_search"]
    assert record["tensors"] >= 2
    assert any(n.startswith("range search:") for n in conversion.notes)
    assert "tflq: range search:" in capsys.readouterr().err
    runner = TfliteModel(conversion.content)
    assert np.dtype(runner.input_details["img"]["dtype"]) == np.int8
    x = np.concatenate([s["img"] for s in samples])
    assert _sqnr(model.predict({"img": x})[0], runner.run({"img": x})[0]) > 10


@pytest.mark.parametrize("changes", [{"range_estimator": "mse"}, {"selective": True},
                                     {"auto": True}])
def test_range_search_refuses_options_that_set_ranges_another_way(changes):
    with pytest.raises(ValueError, match="--range_search"):
        ConvertOptions(range_search=True, **changes)


def test_reference_of_splits_rows_by_even_and_odd_batches():
    batches = [{"img": np.zeros((n, 1))} for n in (2, 3, 1)]
    outputs = [np.arange(6) * 10, np.arange(6)]
    even, odd = thresholds.reference_of(outputs, batches, 0), thresholds.reference_of(
        outputs, batches, 1)
    np.testing.assert_array_equal(even[0], [0, 10, 50])
    np.testing.assert_array_equal(odd[1], [2, 3, 4])
    single = thresholds.reference_of(outputs, batches[:1], 1)
    np.testing.assert_array_equal(single[0], outputs[0])


def _plain_saved_model(tmp_path):
    """A SavedModel without Keras metadata (a tf.Module): no layer graph for the QAT route."""
    from tflq.models import load_model, tf

    rng = np.random.default_rng(4)
    w1 = tf.constant(rng.normal(size=(6, 16)).astype(np.float32))
    w2 = tf.constant(rng.normal(size=(16, 3)).astype(np.float32))

    class Net(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32, name="x")])
        def __call__(self, x):
            hidden = tf.nn.relu(tf.matmul(x, w1))
            return {"y": tf.matmul(hidden, w2)}

    module = Net()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures=module.__call__)
    x = rng.standard_t(2, size=(300, 6)).astype(np.float32)  # heavy tails
    return load_model(str(tmp_path / "sm")), x, np.maximum(x @ w1.numpy(), 0.0)


def test_range_estimators_work_on_a_saved_model_without_a_layer_graph(tmp_path, capsys):
    model, x, hidden = _plain_saved_model(tmp_path)
    samples = [{"x": x[i:i + 1]} for i in range(len(x))]
    plain = convert.convert_model(model, Mode.INT8, str(tmp_path), lambda: iter(samples))
    # minmax is what the converter records: the model computes exactly the plain int8.
    minmax = convert.convert_model(model, Mode.INT8, str(tmp_path), lambda: iter(samples),
                                   ConvertOptions(range_estimator="minmax"))
    assert np.array_equal(TfliteModel(minmax.content).run({"x": x})[0],
                          TfliteModel(plain.content).run({"x": x})[0])
    # percentile: the hidden tensor's int8 scale is the numpy percentile of its values / 255
    # (zero point −128: ReLU output, range [0, p]); the converter's is max / 255.
    options = ConvertOptions(range_estimator="percentile", percentile=99.0)
    clipped = convert.convert_model(model, Mode.INT8, str(tmp_path), lambda: iter(samples),
                                    options)
    p, top = np.percentile(hidden, 99.0), hidden.max()
    assert top > 3 * p  # the data make the two choices far apart
    scales = [d["quantization_parameters"]["scales"] for d in
              TfliteModel(clipped.content).interpreter.get_tensor_details()
              if d["dtype"] == np.int8 and list(d["quantization_parameters"]["zero_points"])
              == [-128]]  # ranges [0, hi]: the ReLU output (the input's is [min, max])
    assert any(abs(s[0] - p / 255) < 0.02 * p / 255 for s in scales), (p / 255, scales)
    assert not any(abs(s[0] - top / 255) < 0.02 * top / 255 for s in scales)
    assert clipped.details["ranges"]["route"] == "converter"
    assert clipped.details["ranges"]["changed"] >= 1
    err = capsys.readouterr().err
    assert "range estimator percentile on the converter's calibrated model" in err
    assert "a SavedModel converts from its signature, not a Keras layer graph" in err
    # Equalization still needs weights in a layer graph: refused, saying why.
    with pytest.raises(ValueError, match="SavedModel without Keras metadata"):
        convert.convert_model(model, Mode.INT8, str(tmp_path), lambda: iter(samples),
                              ConvertOptions(equalize=True))
