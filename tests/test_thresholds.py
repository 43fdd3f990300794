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
