"""Running .tflite models: (de)quantization math and agreement with the Keras model."""

import numpy as np
import pytest
from conftest import tiny_data

from tflq import interpreter, models, options
from tflq.ptq import convert

# A float32 .tflite computes the same graph as Keras; only op order differs.
FLOAT_TFLITE_ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny(tiny_model, tmp_path_factory):
    loaded = models.wrap_model(tiny_model, "tiny")
    work = str(tmp_path_factory.mktemp("conv"))
    x, _ = tiny_data(32, seed=9)

    def gen():
        for row in x:
            yield {"img": row[None]}

    def build(mode, **kw):
        return convert.convert_model(loaded, mode, work, gen, options.ConvertOptions(**kw)).content

    return loaded, build


def test_quantize_matches_formula_and_clamps():
    x = np.array([-10.0, -0.26, 0.0, 0.25, 0.249, 10.0])
    q = interpreter.quantize(x, 0.5, 3, np.int8)
    expected = np.clip(np.round(x / 0.5) + 3, -128, 127).astype(np.int8)
    np.testing.assert_array_equal(q, expected)
    assert q.dtype == np.int8
    assert interpreter.quantize(np.array([1e9]), 1.0, 0, np.int16)[0] == 32767


def test_dequantize_matches_formula():
    q = np.array([-128, -1, 0, 5, 127], np.int8)
    np.testing.assert_allclose(interpreter.dequantize(q, 0.1, -3), (q.astype(float) + 3) * 0.1,
                               rtol=1e-6)


def test_float32_tflite_equals_keras(tiny):
    loaded, build = tiny
    model = interpreter.TfliteModel(build("float32"), loaded.output_names)
    x, _ = tiny_data(20, seed=2)
    np.testing.assert_allclose(model.run({"img": x})[0], loaded.predict({"img": x})[0],
                               atol=FLOAT_TFLITE_ATOL)


def test_integer_io_matches_float_io_within_one_step(tiny):
    loaded, build = tiny
    float_io = interpreter.TfliteModel(build("int8"), loaded.output_names)
    int_io = interpreter.TfliteModel(build("int8", integer_io=True), loaded.output_names)
    step = int_io.output_scale("logits")
    assert step is not None and float_io.output_scale("logits") is None
    x, _ = tiny_data(20, seed=3)
    a, b = float_io.run({"img": x})[0], int_io.run({"img": x})[0]
    assert np.max(np.abs(a - b)) <= step * 1.0001  # one output quantization step


def test_bad_arguments(tiny):
    loaded, build = tiny
    content = build("float32")
    with pytest.raises(ValueError, match="num_threads must be at least 1"):
        interpreter.TfliteModel(content, num_threads=0)
    with pytest.raises(ValueError, match=r"no output\(s\) \['nope'\]"):
        interpreter.TfliteModel(content, ["nope"])
    with pytest.raises(ValueError, match="Missing input 'img'"):
        interpreter.TfliteModel(content).run({"other": np.zeros((1, 8, 8, 1), np.float32)})


def test_measure_latency_side_by_side(tiny):
    loaded, build = tiny
    models = {m: interpreter.TfliteModel(build(m), loaded.output_names) for m in ("float32", "int8")}
    x, _ = tiny_data(4)
    result = interpreter.measure_latency(models, {"img": x}, warmup=1, runs=6, rounds=3)
    assert set(result) == {"float32", "int8"}
    for stats in result.values():
        assert stats["runs"] == 6 and 0 < stats["median"] <= stats["p90"]
    with pytest.raises(ValueError, match="must be positive"):
        interpreter.measure_latency(models, {"img": x}, runs=0)
