"""LiteRT Quantizer backend: every recipe on a real converted model, checked through the
interpreter against the float model; bad recipes and missing data refused."""

import numpy as np
import pytest
from conftest import tiny_data

from tflq import interpreter, tflite_inspect
from tflq.models import tf_keras, wrap_model
from tflq.ptq import convert, litert_backend


@pytest.fixture(scope="module")
def float_tflite(tmp_path_factory):
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([
        tf_keras.Input((8, 8, 1), name="img"),
        tf_keras.layers.Conv2D(8, 3, activation="relu"),
        tf_keras.layers.Flatten(),
        tf_keras.layers.Dense(64, activation="relu"),
        tf_keras.layers.Dense(3, name="logits"),
    ])
    model.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = tiny_data(256)
    model.fit(x, y, epochs=5, batch_size=32, verbose=0)
    content = convert.convert_model(wrap_model(model), "float32",
                                    str(tmp_path_factory.mktemp("f"))).content
    return content, x


def _samples(x):
    return lambda: ({"img": x[i:i + 1]} for i in range(64))


@pytest.mark.parametrize("recipe", sorted(litert_backend.RECIPES))
def test_every_recipe_runs_and_agrees_with_the_float_model(float_tflite, recipe):
    content, x = float_tflite
    quantized = litert_backend.quantize(content, recipe, _samples(x))
    reference = interpreter.TfliteModel(content).run({"img": x})[0]
    out = interpreter.TfliteModel(quantized).run({"img": x})[0]
    assert np.mean(out.argmax(1) == reference.argmax(1)) >= 0.9
    if recipe == "static_wi8_ai8":
        assert tflite_inspect.find_float_ops(quantized) == []
    assert len(quantized) < 0.45 * len(content)  # 8- or 4-bit weights instead of 32


def test_int4_weights_are_smaller_than_int8(float_tflite):
    content, x = float_tflite
    sizes = {r: len(litert_backend.quantize(content, r)) for r in
             ("dynamic_wi8_afp32", "dynamic_wi4_afp32")}
    assert sizes["dynamic_wi4_afp32"] < 0.75 * sizes["dynamic_wi8_afp32"]


def test_bad_recipes_and_missing_data(float_tflite):
    content, _ = float_tflite
    with pytest.raises(ValueError, match=r"Unknown LiteRT recipe 'int3'. Available: \["):
        litert_backend.quantize(content, "int3")
    with pytest.raises(ValueError, match="'static_wi8_ai8' needs calibration data"):
        litert_backend.quantize(content, "static_wi8_ai8")
    with pytest.raises(ValueError, match="LiteRT Quantizer could not apply 'dynamic_wi8_afp32'"):
        litert_backend.quantize(b"not a tflite model", "dynamic_wi8_afp32")
    assert litert_backend.available()
