"""Preflight finds what hurts int8 quantization, each finding with a fix; the CLI and the
section in every report."""

import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from absl.testing import flagsaver
from conftest import EXAMPLE_DIR, snapshot

from pipelines import preflight as cli
from tflq import report
from tflq.models import tf_keras, wrap_model
from tflq.ptq import preflight

L = tf_keras.layers


def troubled_model():
    """Every problem preflight knows, each in one layer."""
    tf_keras.utils.set_random_seed(0)
    inp = L.Input((8, 8, 3), name="img")
    x = L.Conv2D(8, 3, padding="same", name="conv")(inp)
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.Conv2D(8, 1, activation="swish", name="swish_conv")(x)
    x = L.Lambda(lambda t: tf.math.cumsum(t, axis=-1), name="cumsum")(x)
    x = L.Flatten()(x)
    model = tf_keras.Model(inp, L.Dense(3, name="head")(x))
    dw = model.get_layer("dw")
    kernel = dw.get_weights()[0]
    kernel[..., 0, 0] *= 1000.0  # one channel 1000x wider than the others
    dw.set_weights([kernel, dw.get_weights()[1]])
    head = model.get_layer("head")
    w = np.random.default_rng(0).normal(0, 0.01, head.get_weights()[0].shape)
    w[0, 0] = 50.0  # a single outlier weight
    head.set_weights([w.astype(np.float32), head.get_weights()[1]])
    return model


def test_every_check_finds_its_problem():
    model = troubled_model()
    x = np.random.default_rng(1).uniform(0, 255, (2000, 8, 8, 3)).astype(np.float32)
    x[0, 4, 4, :] = 1e6  # one pixel far outside the rest: activation outliers
    evaluation = -x[:8]
    result = preflight.run(wrap_model(model), {"img": x}, {"img": evaluation})
    found = {(f["kind"], f["layer"]) for f in result["findings"]}
    assert ("per_tensor_collapse", "dw") in found
    assert ("weight_outliers", "head") in found
    assert ("unfused_activation", "swish_conv") in found
    assert any(kind == "activation_outliers" for kind, _ in found)
    assert any(kind == "float_ops" and layer.startswith("CUMSUM") for kind, layer in found)
    kinds = [f for f in result["findings"] if f["kind"] == "input_range"]
    assert len(kinds) == 2  # raw pixels without Rescaling; evaluation outside calibration
    assert all(f["fix"] for f in result["findings"])
    stats = result["activation_stats"]["conv"]
    reference = tf_keras.Model(model.inputs, model.get_layer("conv").output).predict(x, verbose=0)
    assert stats["max"] == pytest.approx(reference.max(), rel=1e-3)


def test_a_model_that_quantizes_well_has_no_findings():
    model = tf_keras.models.load_model(os.path.join(EXAMPLE_DIR, "fashion_mnist_cnn.keras"),
                                       compile=False)
    x = np.random.default_rng(2).uniform(0, 1, (32, 28, 28, 1)).astype(np.float32)
    result = preflight.run(wrap_model(model), {"image": x})
    assert result["findings"] == [] and result["float_ops"] == []
    assert report.format_findings([]).startswith("No findings")


def test_without_data_only_static_checks_and_ops_run():
    result = preflight.run(wrap_model(troubled_model()))
    kinds = {f["kind"] for f in result["findings"]}
    assert {"per_tensor_collapse", "weight_outliers", "unfused_activation",
            "float_ops"} <= kinds
    assert "activation_outliers" not in kinds and result["activation_stats"] == {}


def test_model_expecting_raw_pixels_fed_0_1_data():
    inp = L.Input((4, 4, 1))
    model = tf_keras.Model(inp, L.Dense(2)(L.Flatten()(L.Rescaling(1 / 255.0)(inp))))
    findings = preflight.input_findings(model, np.random.default_rng(3).uniform(0, 1, (8, 4, 4, 1)))
    assert [f.kind for f in findings] == ["input_range"] and "expects 0..255" in findings[0].detail


def run_cli(capsys, **values):
    with flagsaver.flagsaver(**values):
        code = cli.main(["preflight"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_json_and_markdown(capsys, tmp_path):
    model_path = tmp_path / "m.h5"
    tf_keras.models.save_model(tf_keras.models.clone_model(troubled_model()), model_path)
    x = np.random.default_rng(4).uniform(0, 255, (40, 8, 8, 3)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    np.savez(tmp_path / "eval.npz", x=x[:10])
    code, out, err = run_cli(capsys, model=str(model_path), data=str(tmp_path / "calib.npz"),
                             eval_data=str(tmp_path / "eval.npz"), num_calibration_samples=30,
                             seed=3, out=str(tmp_path / "pf"))
    assert code == 0, err
    assert "| unfused_activation | swish_conv |" in out
    report = json.load(open(tmp_path / "pf" / "preflight.json"))
    assert report["data"].endswith("calib.npz") and report["findings"]
    assert "| check | where | what | suggested fix |" in (tmp_path / "pf" / "preflight.md").read_text()


@pytest.mark.parametrize("values, message", [
    ({}, "--model is required"),
    ({"model": "/no/model.keras"}, "Model path not found"),
    ({"model": "{example}", "eval_data": "{example_data}"}, "--eval_data needs --data"),
    ({"model": "{example}", "data": "/no/data.npz"}, "Data path not found"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(capsys, tmp_path, values, message):
    example = os.path.join(EXAMPLE_DIR, "fashion_mnist_cnn.keras")
    data = os.path.join(EXAMPLE_DIR, "calibration-images-idx3-ubyte.gz")
    values = {k: v.format(example=example, example_data=data) for k, v in values.items()}
    before = snapshot(tmp_path)
    code, _, err = run_cli(capsys, out=str(tmp_path / "pf"), **values)
    assert code == 2 and err.startswith("error: ") and re.search(message, err), err
    assert snapshot(tmp_path) == before and not os.path.exists(tmp_path / "pf")


def _twin(api):
    """One model in tf_keras or Keras 3 with a collapsing depthwise channel, an outlier weight
    and an unfused swish."""
    La = api.layers
    inp = api.Input((8, 8, 3), name="img")
    x = La.Conv2D(8, 3, padding="same", name="conv")(inp)
    x = La.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = La.Conv2D(8, 1, activation="swish", name="swish_conv")(x)
    model = api.Model(inp, La.Dense(3, name="head")(La.Flatten()(x)))
    rng = np.random.default_rng(0)
    weights = [rng.normal(0, 0.3, w.shape).astype(np.float32) for w in model.get_weights()]
    weights[2][..., 0, 0] *= 1000.0  # dw kernel: one channel 1000x wider
    weights[6][0, 0] = 50.0  # head kernel: one outlier
    model.set_weights(weights)
    return model


def test_a_keras3_model_gets_the_checks_of_its_tf_keras_twin():
    """Keras 3 models were checked for float ops only (the layer checks read tf_keras layers
    and silently found nothing); they now read the checked tf_keras rebuild."""
    import keras

    x = np.random.default_rng(1).uniform(0, 1, (32, 8, 8, 3)).astype(np.float32)
    found = {}
    for name, api in (("tf_keras", tf_keras), ("keras3", keras)):
        result = preflight.run(wrap_model(_twin(api)), {"img": x})
        found[name] = sorted((f["kind"], f["layer"]) for f in result["findings"])
    assert found["keras3"] == found["tf_keras"], found
    assert ("per_tensor_collapse", "dw") in found["keras3"], found
    assert ("weight_outliers", "head") in found["keras3"], found


def test_a_model_without_layers_says_the_checks_were_skipped(tmp_path):
    class Doubler(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def __call__(self, x):
            return {"y": 2.0 * x}

    module = Doubler()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures=module.__call__)
    from tflq.models import load_model

    x = np.random.default_rng(0).uniform(-1, 1, (16, 4)).astype(np.float32)
    result = preflight.run(load_model(str(tmp_path / "sm")), {"x": x})
    skipped = [f for f in result["findings"] if f["kind"] == "skipped"]
    assert len(skipped) == 1 and "need a Keras layer graph" in skipped[0]["detail"], result
