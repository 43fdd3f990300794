"""Model loading: every format, both Keras flavors, and every way a model file can be bad."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from conftest import REPO, build_tiny_cnn, tiny_data

from tflq import models
from tflq.models import tf_keras

# Reloaded models run the same float graph; differences come from op ordering only.
FLOAT_RTOL = 1e-5


def _expected(model, x):
    return np.asarray(model(x, training=False))


def test_legacy_keras_is_active():
    assert models.legacy_keras_active()


def test_importing_tflq_models_selects_tf_keras_in_a_fresh_process():
    # conftest sets TF_USE_LEGACY_KERAS itself; a fresh process without it shows that
    # importing tflq.models alone makes TensorFlow's tf.keras the tf_keras tfmot needs.
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    code = ("import tflq.models as m, tensorflow as tf, tf_keras, os; "
            "print(os.environ['TF_USE_LEGACY_KERAS'], m.legacy_keras_active(), "
            "tf.keras.Model is tf_keras.Model)")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["1", "True", "True"]


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_tf_keras_files_load_and_predict(tiny_model, tmp_path, suffix):
    path = str(tmp_path / f"m{suffix}")
    tiny_model.save(path)
    loaded = models.load_model(path)
    assert loaded.flavor == models.FLAVOR_TF_KERAS
    assert loaded.input_names == ("img",)
    assert loaded.inputs[0].shape == (8, 8, 1)
    assert loaded.inputs[0].dtype == "float32"
    x, _ = tiny_data(5)
    np.testing.assert_allclose(loaded.predict({"img": x})[0], _expected(tiny_model, x),
                               rtol=FLOAT_RTOL, atol=1e-6)


def test_tf_keras_saved_model_folder(tiny_model, tmp_path):
    path = str(tmp_path / "sm")
    tiny_model.save(path, save_format="tf")
    loaded = models.load_model(path)
    assert loaded.flavor == models.FLAVOR_TF_KERAS
    x, _ = tiny_data(4)
    np.testing.assert_allclose(loaded.predict({"img": x})[0], _expected(tiny_model, x),
                               rtol=FLOAT_RTOL, atol=1e-6)


def _keras3_two_input_model():
    a = keras.Input((4,), name="a")
    b = keras.Input((3,), name="b")
    h = keras.layers.Concatenate()([a, b])
    out = keras.layers.Dense(2, name="out")(h)
    return keras.Model([a, b], out)


def test_keras3_file_loads_as_keras3(tmp_path):
    model = _keras3_two_input_model()
    path = str(tmp_path / "k3.keras")
    model.save(path)
    loaded = models.load_model(path)
    assert loaded.flavor == models.FLAVOR_KERAS3
    assert loaded.input_names == ("a", "b")
    rng = np.random.default_rng(0)
    feed = {"a": rng.normal(size=(3, 4)).astype("float32"),
            "b": rng.normal(size=(3, 3)).astype("float32")}
    expected = np.asarray(model([feed["a"], feed["b"]]))
    np.testing.assert_allclose(loaded.predict(feed)[0], expected, rtol=FLOAT_RTOL, atol=1e-6)


def test_plain_saved_model_folder_uses_signature(tmp_path):
    model = _keras3_two_input_model()
    path = str(tmp_path / "export")
    model.export(path, verbose=False)
    loaded = models.load_model(path)
    assert loaded.flavor == models.FLAVOR_SAVED_MODEL
    assert set(loaded.input_names) == {"a", "b"}
    feed = {"a": np.ones((2, 4), "float32"), "b": np.full((2, 3), 2.0, "float32")}
    expected = np.asarray(model([feed["a"], feed["b"]]))
    np.testing.assert_allclose(loaded.predict(feed)[0], expected, rtol=FLOAT_RTOL, atol=1e-6)


def make_factory_model():
    return build_tiny_cnn(seed=3)


def make_not_a_model():
    return "not a model"


def test_factory_spec_loads():
    loaded = models.load_model("test_keras_compat:make_factory_model")
    assert loaded.flavor == models.FLAVOR_TF_KERAS
    assert loaded.stem == "make_factory_model"


def test_wrap_model_refuses_subclassed_model():
    class Net(tf_keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="subclassed tf_keras model"):
        models.wrap_model(Net())


def test_fingerprint_changes_with_bytes(tiny_keras_path, tmp_path):
    other = tmp_path / "copy.keras"
    other.write_bytes(open(tiny_keras_path, "rb").read())
    a = models.load_model(tiny_keras_path).fingerprint()
    assert a == models.load_model(str(other)).fingerprint()
    with open(other, "ab") as f:
        f.write(b"x")
    assert models.load_model(str(other)).fingerprint() != a


@pytest.mark.parametrize("spec, message", [
    ("", "Expected a model path"),
    ("/no/such/model.keras", "Model path not found"),
    ("no_such_module_xyz:build", "cannot import 'no_such_module_xyz'"),
    ("test_keras_compat:no_such_function", "has no function"),
    ("test_keras_compat:make_not_a_model", "Expected a tf_keras or Keras 3 model"),
])
def test_bad_model_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        models.load_model(spec)


def test_damaged_model_files(tiny_keras_path, tiny_model, tmp_path):
    good = open(tiny_keras_path, "rb").read()
    cases = {
        "empty.keras": (b"", "is empty"),
        "garbage.keras": (b"\x00not a zip at all" * 10, "corrupt or truncated"),
        "truncated.keras": (good[: len(good) // 2], "corrupt or truncated"),
        "model.txt": (b"hello", "Unknown model format"),
    }
    h5 = tmp_path / "good.h5"
    tiny_model.save(str(h5))
    cases["truncated.h5"] = (h5.read_bytes()[:200], "could not be loaded.*truncated")
    cases["garbage.h5"] = (b"plain text, not hdf5", "not a valid HDF5 file")
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError, match=message):
            models.load_model(str(path))


def test_folder_without_saved_model(tmp_path):
    with pytest.raises(ValueError, match="not a SavedModel"):
        models.load_model(str(tmp_path))


def test_make_converter_for_each_flavor(tiny_keras_path, tmp_path):
    for loaded in (models.load_model(tiny_keras_path),
                   models.wrap_model(_keras3_two_input_model(), "k3")):
        content = loaded.make_converter(str(tmp_path)).convert()
        signature = Interpreter(model_content=content).get_signature_list()["serving_default"]
        assert sorted(signature["inputs"]) == sorted(loaded.input_names)
        assert list(signature["outputs"]) == list(loaded.output_names)
