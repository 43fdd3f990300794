"""A Keras 3 model reaches the converter through its checked tf_keras rebuild, so a Keras 3
.keras, a Keras-3-written .h5 and a tf_keras .h5 of one model give the same .tflite ops in
every mode (``model.export`` adds SHAPE/STRIDED_SLICE/PACK for the free batch dimension of a
Flatten); a model tf_keras cannot rebuild is exported, and the report says so."""

import keras
import numpy as np
import pytest

import tflq
from benchmarks.benchmark_conformance import op_counts
from tflq import interpreter, keras3
from tflq.models import load_model, tf_keras, wrap_model


def _build(api, seed=0):
    """Conv, pooling, Flatten (the layer whose Keras 3 export carries shape ops), Dense."""
    L = api.layers
    inp = api.Input((8, 8, 3), name="img")
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inp)
    x = L.Flatten(name="flat")(L.MaxPooling2D(name="pool")(x))
    model = api.Model(inp, L.Dense(3, activation="softmax", name="probs")(x))
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.4, w.shape).astype(np.float32)
                       for w in model.get_weights()])
    return model


def _images(n, seed=1):
    return np.random.default_rng(seed).uniform(0, 1, (n, 8, 8, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    folder = tmp_path_factory.mktemp("route")
    paths = {"keras3_keras": str(folder / "m.keras"), "keras3_h5": str(folder / "m3.h5"),
             "tf_keras_h5": str(folder / "m2.h5")}
    _build(keras).save(paths["keras3_keras"])
    _build(keras).save(paths["keras3_h5"])
    _build(tf_keras).save(paths["tf_keras_h5"])
    return paths


def test_three_file_flavors_give_the_same_ops_in_every_mode(twins, capsys):
    x = _images(40)
    results = {}
    for key, path in twins.items():
        result = tflq.convert(path, x[:24], x[24:], modes=("float32", "dynamic", "int8"),
                              latency_runs=1, layer_error_samples=0, progress=False)
        results[key] = result
    for mode in ("float32", "dynamic", "int8"):
        ops = {key: op_counts(r.modes[mode].tflite) for key, r in results.items()}
        assert ops["keras3_keras"] == ops["keras3_h5"] == ops["tf_keras_h5"], (mode, ops)
        assert "SHAPE" not in ops["keras3_keras"], ops
        agreement = {key: r.modes[mode].metrics["top1_agreement"] for key, r in results.items()}
        assert agreement["keras3_keras"] == agreement["tf_keras_h5"], (mode, agreement)
    # The .tflite of the Keras 3 file computes what the Keras 3 model computes.
    reference = load_model(twins["keras3_keras"]).predict({"img": x})[0]
    out = interpreter.TfliteModel(results["keras3_keras"].modes["float32"].tflite,
                                  ["output_0"]).run({"img": x})[0]
    np.testing.assert_allclose(out, reference, atol=1e-5)
    route = results["keras3_keras"].report["model"]["conversion"]
    assert route.startswith("Keras 3 model, converted from its tf_keras rebuild"), route
    assert "checked on 24 calibration samples" in route
    assert results["tf_keras_h5"].report["model"]["conversion"].startswith("tf_keras model")
    assert "Conversion: Keras 3 model, converted from its tf_keras rebuild" in \
        results["keras3_h5"].files["report.md"].decode()
    assert "tflq: Keras 3 model, converted from its tf_keras rebuild" in capsys.readouterr().err


def test_the_plain_export_keeps_its_shapeop_counts():
    """The reason for the route: the same Keras 3 model exported carries shape ops (if this
    stops holding, Keras 3's export changed and the route is worth revisiting)."""
    import tempfile

    model = wrap_model(_build(keras))
    content = model.make_converter(tempfile.mkdtemp()).convert()  # not prepared: exported
    assert "SHAPE" in op_counts(content)


class _Doubler(keras.layers.Layer):
    """A custom Keras 3 layer: tf_keras has no counterpart, so there is no rebuild."""

    def call(self, x):
        return x * 2.0


def test_a_model_tf_keras_cannot_rebuild_is_exported_and_the_report_says_why():
    inp = keras.Input((6,), name="x")
    model = keras.Model(inp, keras.layers.Dense(2, name="d")(_Doubler(name="twice")(inp)))
    x = np.random.default_rng(0).uniform(-1, 1, (32, 6)).astype(np.float32)
    result = tflq.convert(model, x[:16], x[16:], modes=("float32",), latency_runs=1,
                          layer_error_samples=0, progress=False)
    route = result.report["model"]["conversion"]
    assert route.startswith("Keras 3 model, exported (model.export): no tf_keras rebuild"), route
    assert "'twice'" in route
    out = interpreter.TfliteModel(result.modes["float32"].tflite, ["output_0"]).run({"x": x})[0]
    np.testing.assert_allclose(out, model(x).numpy(), atol=1e-5)


def test_a_rebuild_that_computes_something_else_stops_the_conversion(twins, tmp_path,
                                                                     monkeypatch):
    """A wrong rebuild is never converted: the job stops with the internal error naming the
    layer (exit 1 in the commands), and nothing is written."""
    original_copy = keras3._copy_layer

    def broken_copy(layer, dropped):
        copy = original_copy(layer, dropped)
        if layer.name == "probs":
            config = copy.get_config()
            config["activation"] = "linear"
            copy = type(copy).from_config(config)
        return copy

    monkeypatch.setattr(keras3, "_copy_layer", broken_copy)
    out = tmp_path / "out"
    x = _images(32)
    with pytest.raises(keras3.RewriteError, match=r"'probs' \(Dense\)"):
        tflq.convert(twins["keras3_keras"], x[:16], x[16:], modes=("float32",),
                     out=str(out), latency_runs=1, progress=False)
    assert not out.exists()


@pytest.mark.parametrize("changes", [{"equalize": True}, {"adaround": True,
                                                          "adaround_iterations": 5},
                                     {"range_estimator": "mse"}])
def test_an_unnamed_keras3_input_calibrates_through_the_rebuild(tmp_path, changes):
    # keras.Input without a name: its tensor is "keras_tensor", its layer "input_layer"; the
    # rebuild took the layer name, so its converter asked the calibration data (keyed by the
    # tensor name) for "input_layer" and stopped with a KeyError.
    from tflq.options import ConvertOptions
    from tflq.ptq import convert

    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(3)])
    loaded = wrap_model(model)
    x = np.random.default_rng(0).uniform(0, 1, (24, 6, 6, 2)).astype(np.float32)
    name = loaded.input_names[0]
    samples = [{name: x[i:i + 1]} for i in range(len(x))]
    result = convert.convert_model(loaded, "int8", str(tmp_path), lambda: iter(samples),
                                   ConvertOptions(**changes))
    runner = interpreter.TfliteModel(result.content)
    got = runner.run({next(iter(runner.input_details)): x})[0]
    want = np.asarray(model(x))
    assert np.mean(np.argmax(got, 1) == np.argmax(want, 1)) >= 0.9
    assert np.max(np.abs(got - want)) < 0.1 * np.ptp(want)
