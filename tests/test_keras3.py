"""Keras 3 models everywhere: Keras-3-written .h5 files load, the Keras 3 → tf_keras rebuild
computes what the original computes (or names the layer that does not), and a Keras 3
.keras, a Keras-3-written .h5 and a tf_keras .h5 of one model give the same int8 model."""

import os

import keras
import numpy as np
import pytest

from tflq import interpreter, keras3
from tflq.models import load_model, tf_keras, wrap_model
from tflq.options import ConvertOptions
from tflq.ptq import convert
from tflq.quant import qat

CORPUS = "/work/corpus/files"


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.4, (3, 3, 3, 4)), rng.normal(0, 0.1, 4),            # stem
            rng.uniform(0.5, 1.5, 4), rng.normal(0, 0.1, 4),                    # bn gamma, beta
            rng.normal(0, 0.1, 4), rng.uniform(0.5, 1.5, 4),                    # bn mean, var
            rng.normal(0, 0.4, (3, 3, 4, 1)), rng.normal(0, 0.4, (1, 1, 4, 4)),  # separable
            rng.normal(0, 0.4, (4, 3)), rng.normal(0, 0.1, 3)]                  # dense


def _build(api, weights):
    """One model in tf_keras or Keras 3: conv, BN, a nested block with a separable conv and a
    residual Add, pooling and a Dense head."""
    L = api.layers
    inner_in = api.Input((8, 8, 4))
    y = L.SeparableConv2D(4, 3, padding="same", use_bias=False, name="sep")(inner_in)
    inner = api.Model(inner_in, L.Add(name="residual")([y, inner_in]), name="block")
    inp = api.Input((8, 8, 3), name="img")
    x = L.Conv2D(4, 3, padding="same", name="stem")(inp)
    x = L.Activation("relu")(L.BatchNormalization(name="bn")(x))
    x = L.GlobalAveragePooling2D(name="gap")(inner(x))
    model = api.Model(inp, L.Dense(3, name="logits")(x))
    model.set_weights([np.asarray(w, np.float32) for w in weights])
    return model


def _images(n=32, seed=1):
    return np.random.default_rng(seed).uniform(0, 1, (n, 8, 8, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def three_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("k3")
    weights = _weights()
    paths = {"keras3_keras": str(folder / "m.keras"), "keras3_h5": str(folder / "m3.h5"),
             "tf_keras_h5": str(folder / "m2.h5")}
    k3 = _build(keras, weights)
    k3.save(paths["keras3_keras"])
    k3.save(paths["keras3_h5"])
    _build(tf_keras, weights).save(paths["tf_keras_h5"])
    return paths


def test_keras3_h5_loads_with_keras3(three_files):
    import h5py

    with h5py.File(three_files["keras3_h5"]) as f:
        assert str(f.attrs["keras_version"]).startswith("3.")  # the file really is Keras 3's
    k3h5 = load_model(three_files["keras3_h5"])
    reference = load_model(three_files["tf_keras_h5"])
    assert k3h5.flavor == "keras3" and reference.flavor == "tf_keras"
    x = _images()
    np.testing.assert_allclose(k3h5.predict({"img": x})[0], reference.predict({"img": x})[0],
                               rtol=1e-5, atol=1e-6)


def test_rebuild_inlines_nested_models_and_matches_the_original(three_files):
    model = load_model(three_files["keras3_keras"])
    x = _images()
    rebuilt = model.to_tf_keras([x[:16], x[16:]])
    assert isinstance(rebuilt, tf_keras.Model)
    assert {"sep", "residual", "stem", "bn"} <= {layer.name for layer in rebuilt.layers}
    assert model.rebuild_notes["inlined"] == ["block"]
    assert model.rebuild_notes["checked_samples"] == 32
    # Independent reference: the Keras 3 model itself, run eagerly.
    np.testing.assert_allclose(rebuilt(x).numpy(), np.asarray(model.keras_model(x)),
                               rtol=0, atol=1e-5)


def test_rebuild_that_changes_a_layer_names_it(three_files, monkeypatch):
    original_copy = keras3._copy_layer

    def broken_copy(layer, dropped):
        copy = original_copy(layer, dropped)
        if layer.name == "stem":  # a translation bug: the copy's stride is wrong
            config = copy.get_config()
            config["activation"] = "relu"
            copy = type(copy).from_config(config)
        return copy

    monkeypatch.setattr(keras3, "_copy_layer", broken_copy)
    model = load_model(three_files["keras3_keras"])
    with pytest.raises(keras3.RewriteError, match=r"internal error.*'stem' \(Conv2D\)"):
        model.to_tf_keras([_images()])


def test_subclassed_keras3_models_are_refused_by_class():
    class Tower(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    tower = Tower()
    tower(np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="subclassed Keras 3 model .*Tower"):
        keras3.rebuild_keras3(tower)
    with pytest.raises(ValueError, match="subclassed Keras 3 model .*Tower"):
        qat.quantize_model(tower)


def _int8(model, tmp_path, **options):
    x = _images(64, seed=2)

    def representative():
        for i in range(0, 64, 8):
            yield {"img": x[i:i + 8]}

    return convert.convert_model(model, "int8", str(tmp_path), representative,
                                 ConvertOptions(**options)).content


def _ops(content):
    from tflq import tflite_inspect

    runner = interpreter.TfliteModel(content)
    return sorted(op["op_name"] for op in tflite_inspect.ops_details(runner.interpreter))


@pytest.mark.parametrize("options", [{}, {"range_estimator": "minmax"}, {"equalize": True}],
                         ids=["converter", "range_estimator", "equalize"])
def test_three_file_flavors_give_the_same_int8_model(three_files, tmp_path, options):
    x = _images(48, seed=3)
    results = {}
    for key, path in three_files.items():
        model = load_model(path)
        content = _int8(model, tmp_path / key, **options)
        out = interpreter.TfliteModel(content).run({"img": x})[0]
        reference = model.predict({"img": x})[0]
        results[key] = (_ops(content), out, float(np.mean(out.argmax(1) == reference.argmax(1))))
    ops = {key: r[0] for key, r in results.items()}
    assert ops["keras3_keras"] == ops["keras3_h5"] == ops["tf_keras_h5"], ops
    agreement = {key: r[2] for key, r in results.items()}
    assert agreement["keras3_keras"] == agreement["keras3_h5"] == agreement["tf_keras_h5"]
    # Same weights, same calibration: the int8 outputs match to one output step or so.
    np.testing.assert_allclose(results["keras3_keras"][1], results["tf_keras_h5"][1], atol=0.05)


def test_qat_quantizes_a_keras3_model_like_its_tf_keras_twin():
    weights = _weights()
    x = _images(16)
    twins = [qat.quantize_model(_build(api, weights), samples=[x]) for api in (keras, tf_keras)]
    for q in twins:
        q(x, training=True)  # sets the activation ranges from the same batch
    np.testing.assert_allclose(twins[0](x).numpy(), twins[1](x).numpy(), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["drowsiness_cnn/drowsiness_cnn_model.h5",
                                  "sentitoolkit_lstm/SentiToolKit.keras",
                                  "mltk_keyword_spotting_mobilenetv2_k3resave/"
                                  "keyword_spotting_mobilenetv2_k3.h5"])
def test_real_keras3_files_rebuild_exactly(name):
    path = os.path.join(CORPUS, name)
    if not os.path.exists(path):
        pytest.fail(f"corpus file missing: {path} (see benchmarks/corpus.py)")
    model = load_model(path)
    spec = model.inputs[0]
    x = np.random.default_rng(0).uniform(0, 1, (8, *spec.shape)).astype(spec.dtype)
    rebuilt = model.to_tf_keras([x])
    assert model.rebuild_notes["max_relative_error"] <= keras3.KERAS3_RTOL
    np.testing.assert_allclose(rebuilt(x).numpy(), model.predict({spec.name: x})[0], atol=1e-5)
    wrap_model(rebuilt)  # a tf_keras model tflq takes like any other


def test_selective_converts_a_keras3_model_after_the_first_scratch_is_gone(three_files, tmp_path):
    """Found by the conformance benchmark on the drowsiness CNN (Keras-3-written .h5): the
    job deletes its scratch folder, which held the cached Keras 3 export, before selective
    quantization asks for a new converter ("SavedModel file does not exist")."""
    import shutil

    import tflq
    from tflq import tflite_inspect

    model = load_model(three_files["keras3_h5"])
    first = tmp_path / "first"
    first.mkdir()
    model.make_converter(str(first))
    shutil.rmtree(first)
    second = tmp_path / "second"
    second.mkdir()
    assert model.make_converter(str(second)).convert()  # exported again into `second`
    x = _images(40, seed=4)
    result = tflq.convert(three_files["keras3_h5"], {"img": x[:24]}, {"img": x[24:]},
                          modes=("int8",), selective=True, min_agreement=0.5,
                          num_calibration_samples=24, latency_runs=1, layer_error_samples=0,
                          progress=False)
    row = result.modes["int8"].metrics
    assert row["float_ops"] == list(tflite_inspect.find_float_ops(result.modes["int8"].tflite))
    assert "selective" in " ".join(row["notes"])


def test_sample_count_counts_rows_of_single_and_multi_input_batches():
    single = [np.zeros((3, 2)), np.zeros((5, 2))]
    multi = [[np.zeros((4, 1)), np.zeros((4, 7))], [np.zeros((2, 1)), np.zeros((2, 7))]]
    assert keras3.sample_count(single) == 8
    assert keras3.sample_count(multi) == 6  # rows of the first input, not inputs × rows
    assert keras3.sample_count([]) == 0
