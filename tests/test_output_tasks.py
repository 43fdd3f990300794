"""Per-output validation end to end: tasks read from small real-shaped models (Keras 2, Keras 3,
a plain SavedModel), and a five-headed model (classification, multilabel frames,
segmentation, detection boxes, a regression value) converted with every output measured,
checked against numpy references on the float model's and the interpreter's own outputs."""

import math

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

import tflq
from tflq import output_tasks, report_outputs
from tflq.jobs import outputs as job_outputs
from tflq.models import load_model, tf_keras, wrap_model

LENGTH = 32  # audio-like input: [N, 32, 1]
# The float model run eagerly here and in a tf.function by tflq rounds differently in float32:
# error sums differ by ~2e-6 relative. Discrete metrics (agreements, F1) match exactly.
FLOAT_RUN_RTOL = 1e-4


def five_heads():
    """One model with an output of every task, in this order: classes (softmax), frames
    (per-step sigmoid), seg (per-step softmax), boxes ([N, 3, 4] corners, max ≥ min) and
    value (one linear number)."""
    tf_keras.utils.set_random_seed(0)
    layers = tf_keras.layers
    inp = tf_keras.Input((LENGTH, 1), name="audio")
    h = layers.Conv1D(8, 3, padding="same", activation="relu")(inp)
    frames = layers.Conv1D(6, 1, activation="sigmoid", name="frames")(h)
    seg = layers.Conv1D(4, 1, activation="softmax", name="seg")(h)
    flat = layers.Dense(16, activation="relu")(layers.Flatten()(h))
    classes = layers.Dense(5, activation="softmax", name="classes")(flat)
    mins = layers.Reshape((3, 2))(layers.Dense(6, activation="sigmoid")(flat))
    sizes = layers.Reshape((3, 2))(layers.Dense(6, activation="softplus")(flat))
    maxs = layers.Add()([mins, sizes])
    boxes = layers.Concatenate(name="boxes")([mins, maxs])
    value = layers.Dense(1, name="value")(flat)
    return tf_keras.Model(inp, [classes, frames, seg, boxes, value])


def audio(n, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(LENGTH) / LENGTH
    freq = rng.uniform(1, 6, size=(n, 1))
    x = np.sin(2 * np.pi * freq * t) + 0.3 * rng.normal(size=(n, LENGTH))
    return x[..., None].astype(np.float32), rng.integers(0, 5, size=n)


EXPECTED_TASKS = {
    "classes": ("classification", "softmax over the last axis", None),
    "frames": ("multilabel", "sigmoid: independent probabilities, threshold 0.5", 0.5),
    "seg": ("segmentation", "softmax over the last axis at every position of (32,)", None),
    "boxes": ("detection", "4 values per row and named as boxes", None),
    "value": ("regression", "one value per sample (linear output)", None),
}


def test_tasks_are_read_from_the_graph_of_a_tf_keras_model():
    found = output_tasks.model_tasks(wrap_model(five_heads()))
    assert {t.name: (t.task, t.reason, t.threshold) for t in found} == EXPECTED_TASKS
    activations = output_tasks.output_activations(wrap_model(five_heads()))
    assert [a["activation"] for a in activations] == [
        "softmax", "sigmoid", "softmax", "linear", "linear"]
    assert activations[3]["source"].startswith("ConcatV2 op")
    assert [a["shape"] for a in activations] == [(None, 5), (None, 32, 6), (None, 32, 4),
                                                 (None, 3, 4), (None, 1)]


def test_tasks_of_a_keras3_model_and_a_plain_saved_model(tmp_path):
    import keras

    inp = keras.Input((8, 8, 3), name="img")
    h = keras.layers.Conv2D(4, 3, padding="same")(inp)
    mask = keras.layers.Activation("sigmoid", name="mask")(h)
    score = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(h))
    found = output_tasks.model_tasks(wrap_model(keras.Model(inp, [mask, score])))
    assert [(t.name, t.task) for t in found] == [("output_0", "multilabel"),
                                                 ("output_1", "classification")]

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32, name="x")])
        def serve(self, x):
            probabilities = tf.nn.softmax(x * 2.0)
            return {"probs": probabilities, "depth": tf.reshape(tf.nn.relu(x), [-1, 2, 3])}

    module = Module()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.serve})
    found = output_tasks.model_tasks(load_model(str(tmp_path / "sm")))
    assert [(t.name, t.task, t.reason) for t in found] == [
        ("depth", "regression", "relu output: values, not class scores"),
        ("probs", "classification", "softmax over the last axis")]


def test_unknown_output_in_overrides():
    with pytest.raises(ValueError, match=r"output_tasks names output\(s\) \['nope'\]"):
        output_tasks.model_tasks(wrap_model(five_heads()), {"nope": "regression"})


def reference_metrics(task, reference, test, labels=None):
    """Each task metric, computed here from the two models' outputs (no tflq code)."""
    r, t = reference.astype(np.float64), test.astype(np.float64)
    found = {"sqnr_db": 10 * math.log10(np.sum(r**2) / np.sum((r - t) ** 2)),
             "max_abs_error": np.max(np.abs(r - t)), "mean_abs_error": np.mean(np.abs(r - t))}
    if task == "classification":
        found["top1_agreement"] = np.mean(r.argmax(1) == t.argmax(1))
        found["top5_agreement"] = np.mean([r[i].argmax() in np.argsort(-t[i])[:5]
                                           for i in range(len(r))])
        found["accuracy"] = np.mean(t.argmax(1) == labels)
    elif task == "multilabel":
        a, b = r > 0.5, t > 0.5
        found["agreement"] = np.mean(a == b)
        found["f1"] = 2 * np.sum(a & b) / (2 * np.sum(a & b) + np.sum(a ^ b))
    elif task == "segmentation":
        a, b = r.argmax(-1), t.argmax(-1)
        found["pixel_agreement"] = np.mean(a == b)
        ious = [np.sum((a == c) & (b == c)) / np.sum((a == c) | (b == c)) for c in range(4)
                if np.any((a == c) | (b == c))]
        found["miou"] = np.mean(ious)
    elif task == "detection":
        ious = []
        for boxes_r, boxes_t in zip(r, t, strict=True):
            pairs = [(inter_over_union(p, q), i, j) for i, p in enumerate(boxes_r)
                     for j, q in enumerate(boxes_t)]
            used_r, used_t, best = set(), set(), []
            for value, i, j in sorted(pairs, reverse=True):
                if value > 0 and i not in used_r and j not in used_t:
                    used_r.add(i)
                    used_t.add(j)
                    best.append(value)
            ious += best + [0.0] * (len(boxes_r) - len(best))
        found["mean_iou"] = np.mean(ious)
        found["matched_at_50"] = np.mean(np.array(ious) >= 0.5)
    else:
        found["r2"] = 1 - np.sum((r - t) ** 2) / np.sum((r - r.mean()) ** 2)
        found["relative_error"] = np.sum(np.abs(r - t)) / np.sum(np.abs(r))
    return found


def inter_over_union(a, b):
    inter = np.prod(np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None))
    return inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter)


def test_five_heads_convert_with_every_output_measured(tmp_path):
    model = five_heads()
    x_calib, _ = audio(64, 1)
    x_eval, y_eval = audio(40, 2)
    result = tflq.convert(model, x_calib, (x_eval, y_eval), modes=("float32", "int8"),
                          num_calibration_samples=64, latency_runs=2, layer_error_samples=0,
                          progress=False, gate=("frames:f1>=0", "boxes:mean_iou>=0"),
                          output_tasks={"value": "regression"}, out=str(tmp_path / "out"))
    r = result.report
    section = r["output_tasks"]
    assert {n: (o["task"], o["reason"], o["threshold"]) for n, o in section["outputs"].items()} \
        == {**EXPECTED_TASKS, "value": ("regression", "set by output_tasks", None)}
    assert section["headline"]["output"] == "classes"
    int8 = r["modes"][1]
    assert int8["headline_output"] == "classes" and list(int8["per_output"]) == list(
        EXPECTED_TASKS)
    # independent: the Keras model and the interpreter on the written .tflite
    reference = [np.asarray(o) for o in model(x_eval, training=False)]
    interp = Interpreter(model_path=str(tmp_path / "out" / int8["path"]))
    runner = interp.get_signature_runner()
    got = runner(audio=x_eval)
    for i, name in enumerate(EXPECTED_TASKS):
        expected = reference_metrics(EXPECTED_TASKS[name][0], reference[i], got[name], y_eval)
        group = int8["per_output"][name]
        for key, value in expected.items():
            assert group[key] == pytest.approx(value, rel=FLOAT_RUN_RTOL, abs=1e-9), (name, key)
    # the headline columns count the classification output, labels included
    assert int8["top1_agreement"] == pytest.approx(
        np.mean(reference[0].argmax(1) == got["classes"].argmax(1)))
    assert int8["accuracy"] == pytest.approx(np.mean(got["classes"].argmax(1) == y_eval))
    assert r["gates"]["gate"] == ["frames:f1>=0", "boxes:mean_iou>=0"] and r["gates"]["passed"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "measure output `classes` (its first classification output)" in md
    for name, (task, _, _) in EXPECTED_TASKS.items():
        assert f"**{name} " in md and f": {task} (" in md
    assert "**frames (None, 32, 6): multilabel (sigmoid: independent probabilities, threshold " \
        "0.5)**" in md  # the threshold said once
    assert "| mode | mean IoU | matched at IoU≥0.5 | score agreement | SQNR dB |" in md
    assert "| mode | pixel agreement | mIoU vs float |" in md
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Per output (float model vs each mode)" in page and 'id="output-4"' in page


def test_performance_warning_names_a_slower_mode():
    model = tf_keras.Sequential([tf_keras.Input((4,), name="x"), tf_keras.layers.Dense(2)])
    tflite = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    rows = [{"mode": "float32", "latency_ms": {"median": 1.0}, "float_ops": ["FULLY_CONNECTED#0"]},
            {"mode": "float16", "latency_ms": {"median": 2.5}, "float_ops": ["FULLY_CONNECTED#0"]},
            {"mode": "dynamic", "latency_ms": {"median": 1.04}, "float_ops": []}]
    found = job_outputs.performance_warnings(
        rows, {"float32": tflite, "float16": tflite, "dynamic": tflite}, num_threads=2)
    assert found == ["float16: 2.50× slower than float32 (2.500 vs 1.000 ms median, batch 1, "
                     "2 thread(s)); 1 op(s) run in float"]
    assert rows[1]["performance"] == {"quantize": 0, "dequantize": 0, "float_ops": [],
                                      "by_type": {}, "latency_vs_float32": 2.5, "slower": True,
                                      "num_threads": 2}
    assert rows[2]["performance"]["slower"] is False  # within the 5% margin
    assert "performance" not in rows[0]
    full = {"warnings": found, "modes": []}
    assert found[0] in report_outputs.to_html(full)


def test_an_unreadable_graph_loses_only_the_inference():
    class Untraceable:
        output_names = ("a", "b")

        def graph_function(self):
            raise TypeError("cannot trace")

    found = output_tasks.output_activations(Untraceable())
    assert found == [{"shape": None, "activation": None,
                      "source": "graph not readable (TypeError)"}] * 2
    tasks = output_tasks.model_tasks(Untraceable(), {"b": "multilabel"})
    assert [(t.task, t.reason) for t in tasks] == [
        ("regression", "graph not readable: shape and activation unknown (name the task with "
                       "output_tasks)"),
        ("multilabel", "set by output_tasks")]
