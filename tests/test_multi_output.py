"""Multi-output models and unlabelled data in QAT and compress (issue 11 items 4 and 5), on a
tiny two-head model (box regression [N, 4] + class logits [N, 2]) built here: labels per
output, distillation from the teacher alone, 50% PQAT; the report's per-output parity is
checked against the saved QAT .h5 and the .tflite run here through the interpreter."""

import json
import math
import os
import re

import numpy as np
import pytest
from absl.testing import flagsaver
from ai_edge_litert.interpreter import Interpreter
from conftest import snapshot

from pipelines import compress as compress_cli
from pipelines import qat as qat_cli
from tflq.jobs import common
from tflq.models import tf_keras
from tflq.quant import heads, qat

LSB_SLACK = 1.001  # the QAT job's tolerance on "within one LSB" (float rounding)


def two_head_data(n: int, seed: int):
    """Images whose class is the brighter half (left/right) and whose 'box' is four
    quadrant means."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(n, 8, 8, 1)).astype(np.float32)
    classes = rng.integers(0, 2, size=n)
    for i, c in enumerate(classes):
        x[i, :, 4 * c:4 * c + 4, 0] += 0.4
    x = np.clip(x, 0, 1)
    boxes = np.stack([x[:, :4, :4, 0].mean((1, 2)), x[:, :4, 4:, 0].mean((1, 2)),
                      x[:, 4:, :4, 0].mean((1, 2)), x[:, 4:, 4:, 0].mean((1, 2))], axis=1)
    return x, boxes.astype(np.float32), classes.astype(np.int64)


def build_two_head():
    tf_keras.utils.set_random_seed(0)
    inp = tf_keras.Input((8, 8, 1), name="img")
    h = tf_keras.layers.Conv2D(4, 3, activation="relu")(inp)
    h = tf_keras.layers.Flatten()(h)
    boxes = tf_keras.layers.Dense(4, name="boxes")(h)
    classes = tf_keras.layers.Dense(2, name="classes")(h)
    model = tf_keras.Model(inp, [boxes, classes])
    model.compile("adam", [tf_keras.losses.MeanSquaredError(),
                           tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)])
    x, b, c = two_head_data(128, 1)
    model.fit(x, [b, c], epochs=3, batch_size=16, verbose=0)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two_head")
    build_two_head().save(folder / "two.keras")
    x, b, c = two_head_data(160, 2)
    np.savez(folder / "train.npz", x=x[:112], y_boxes=b[:112], y_classes=c[:112])
    np.savez(folder / "eval.npz", x=x[112:], y_boxes=b[112:], y_classes=c[112:])
    np.savez(folder / "train_nolabels.npz", x=x[:112])
    np.savez(folder / "eval_nolabels.npz", x=x[112:])
    return folder


def run(cli, capsys, **values):
    with flagsaver.flagsaver(**values):
        code = cli.main(["x"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def base(files, out, **extra):
    return {"model": str(files / "two.keras"), "train_data": str(files / "train.npz"),
            "eval_data": str(files / "eval.npz"), "out": str(out), "epochs": 1,
            "batch_size": 16, "learning_rate": 1e-3, "layer_error_samples": 0, **extra}


def independent_parity(out, stem, eval_path, qat_h5, tflite_name):
    """Runs the saved QAT .h5 and the .tflite here: per output agreement (argmax), share
    within one output step, SQNR, straight from numpy."""
    with qat.quantize_scope():
        student = tf_keras.models.load_model(out / qat_h5, compile=False)
    x = np.load(eval_path)["x"]
    keras_out = [np.asarray(o) for o in student(x, training=False)]
    runner = Interpreter(model_path=str(out / tflite_name)).get_signature_runner()
    detail = runner.get_input_details()["img"]
    scale, zero = detail["quantization"]
    q = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)
    result = runner(img=q)
    found = {}
    for name, keras_values in zip(["boxes", "classes"], keras_out, strict=True):
        detail = runner.get_output_details()[f"quant_{name}"]
        step, zp = detail["quantization"]
        # dequantized to float32, as a float32 application reads it
        deployed = ((result[f"quant_{name}"].astype(np.float64) - zp) * step).astype(np.float32)
        diff = keras_values.astype(np.float64) - deployed.astype(np.float64)
        found[name] = {
            "within": float(np.mean(np.abs(diff) <= step * LSB_SLACK)),
            "sqnr": 10 * math.log10(np.sum(keras_values.astype(np.float64) ** 2)
                                    / np.sum(diff ** 2)) if np.any(diff) else math.inf,
            "agreement": float(np.mean(np.argmax(keras_values, 1) == np.argmax(deployed, 1))),
            "step": step}
    return found


def check_parity(report, expected):
    per = report["qat"]["parity"]["outputs"]
    assert sorted(per) == ["boxes", "classes"]
    assert per["boxes"]["kind"] == "regression" and per["boxes"]["top1_agreement"] is None
    assert per["classes"]["kind"] == "classification"
    assert per["classes"]["top1_agreement"] == pytest.approx(expected["classes"]["agreement"])
    for name in ("boxes", "classes"):
        assert per[name]["output_step"] == pytest.approx(expected[name]["step"])
        assert per[name]["within_1_lsb"] == pytest.approx(expected[name]["within"], abs=1e-9)
        got = per[name]["sqnr_db"]
        assert (got == "inf" and math.isinf(expected[name]["sqnr"])) or got == pytest.approx(
            expected[name]["sqnr"], rel=1e-4)
    # the overall agreement counts the class head, not the boxes
    assert report["qat"]["parity"]["top1_agreement"] == pytest.approx(
        expected["classes"]["agreement"])


def test_qat_with_labels_per_output(capsys, files, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = run(qat_cli, capsys, **base(files, out, output_tasks="boxes=detection",
                                                    gate=["classes:top5_agreement>=1"]))
    assert code == 0, err
    report = json.load(open(out / "report.json"))
    assert report["qat"]["outputs"]["boxes"]["loss"] == "mse"
    assert report["qat"]["outputs"]["classes"]["loss"] == "kl"
    assert report["data"]["calibration"]["has_labels"] is True
    check_parity(report, independent_parity(out, "two", files / "eval.npz", "two_qat.h5",
                                            "two_qat_int8.tflite"))
    row = report["modes"][0]
    assert row["float_ops"] == []
    assert row["accuracy"] is not None  # the class head against y_classes
    assert sorted(row["outputs"]) == ["boxes", "classes"]
    md = open(out / "report.md").read()
    assert "| boxes | regression |" in md and "| classes | classification |" in md
    assert any("losses per output: boxes=mse" in n for n in row["notes"])
    # --output_tasks and --gate reach the QAT report: boxes measured as detection, the class
    # head (2 classes: top-5 always holds) gated; the groups count the float model vs int8
    assert report["output_tasks"]["outputs"]["boxes"]["task"] == "detection"
    assert report["output_tasks"]["headline"] == {
        "output": "classes", "why": "the first classification head of the training losses"}
    assert report["gates"]["gate"] == ["classes:top5_agreement>=1"] and report["gates"]["passed"]
    assert row["per_output"]["classes"]["top1_agreement"] == pytest.approx(
        row["outputs"]["classes"]["top1_agreement"])
    assert 0 <= row["per_output"]["boxes"]["mean_iou"] <= 1


def test_qat_distilled_without_labels_covers_every_output(capsys, files, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = run(qat_cli, capsys, **base(
        files, out, train_data=str(files / "train_nolabels.npz"),
        eval_data=str(files / "eval_nolabels.npz"), strategy="distill",
        teacher=str(files / "two.keras"), output_losses="boxes=mse,classes=kl"))
    assert code == 0, err
    report = json.load(open(out / "report.json"))
    assert report["qat"]["distillation"] == {"alpha": 0, "temperature": 4.0, "reason": "no labels"}
    assert report["qat"]["outputs"]["boxes"]["reason"] == "set by output_losses"
    assert report["modes"][0]["accuracy"] is None and report["float"]["accuracy"] is None
    assert any("teacher alone" in n and "alpha = 0" in n for n in report["modes"][0]["notes"])
    check_parity(report, independent_parity(out, "two", files / "eval_nolabels.npz",
                                            "two_qat.h5", "two_qat_int8.tflite"))
    md = open(out / "report.md").read()
    assert "| keras float | – | – | – | no labels |" in md
    assert "(no labels: the teacher alone supplies the targets)" in md
    assert "| int8 |" in stdout and "no labels" in stdout  # the accuracy column says why
    assert "<td>no labels</td>" in open(out / "report.html").read()


def test_qat_without_labels_needs_distill(capsys, files, tmp_path):
    before = snapshot(files)
    code, _, err = run(qat_cli, capsys, **base(files, tmp_path / "out",
                                               train_data=str(files / "train_nolabels.npz")))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "has no labels" in err and "--strategy distill" in err
    assert snapshot(files) == before and not os.path.exists(tmp_path / "out")


BAD = {
    "one y for two outputs": ("y_only", r"one label array 'y' but the model has outputs "
                              r"\['boxes', 'classes'\]"),
    "labels for one output only": ("boxes_only", r"labels for output\(s\) \['boxes'\] but not "
                                   r"for \['classes'\]"),
    "labels naming no output": ("unknown", "labels 'y_scores' for no output"),
    "unknown loss kind": ("kind", "Unknown output loss 'ce' for output 'boxes'"),
    "loss for no output": ("name", r"names output\(s\) \['nope'\] the model does not have"),
    "malformed losses": ("syntax", "output_losses items must read name=kind"),
    "task for no output": ("task_name", r"output_tasks names output\(s\) \['nope'\] the model"),
    "unknown task": ("task_kind", "Unknown task 'boxes' for output 'boxes'"),
    "malformed gate": ("gate_syntax", "A gate must read"),
    "gate for no output": ("gate_name", r"--gate names output\(s\) \['nope'\] the model"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_multi_output_input_exits_2(capsys, files, tmp_path, case):
    kind, message = BAD[case]
    x, b, c = two_head_data(20, 5)
    data = {"y_only": {"y": c}, "boxes_only": {"y_boxes": b},
            "unknown": {"y_boxes": b, "y_classes": c, "y_scores": c}}.get(kind)
    extra = {}
    if data is not None:
        np.savez(tmp_path / "bad.npz", x=x, **data)
        extra["train_data"] = str(tmp_path / "bad.npz")
    elif kind.startswith("task"):
        extra["output_tasks"] = {"task_name": "nope=regression", "task_kind": "boxes=boxes"}[kind]
    elif kind.startswith("gate"):
        extra["gate"] = [{"gate_syntax": "boxes:r2", "gate_name": "nope:r2>=0"}[kind]]
    else:
        extra["output_losses"] = {"kind": "boxes=ce", "name": "nope=mse",
                                  "syntax": "boxes"}[kind]
    before = snapshot(tmp_path)
    cli = compress_cli if kind in ("task_name", "gate_name") else qat_cli  # both commands
    code, _, err = run(cli, capsys, **base(files, tmp_path / "out", **extra))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert snapshot(tmp_path) == before


def test_compress_pqat_two_heads_with_labels_per_output(capsys, files, tmp_path):
    out = tmp_path / "out"
    code, _, err = run(compress_cli, capsys, **base(
        files, out, sparsity=0.5, epochs=1, output_tasks="boxes=regression",
        gate=["classes:top1_agreement>=0.5", "boxes:r2>=-10"]))
    assert code == 0, err
    report = json.load(open(out / "report.json"))
    assert report["compression"]["outputs"]["boxes"]["loss"] == "mse"
    assert report["compression"]["weight_sparsity"] > 0.3
    row = report["modes"][0]
    assert sorted(row["outputs"]) == ["boxes", "classes"]
    # per-output float vs int8, recomputed here from the float model and the .tflite
    model = tf_keras.models.load_model(files / "two.keras")
    x = np.load(files / "eval.npz")["x"]
    reference = [np.asarray(o, np.float64) for o in model(x, training=False)]
    tflite = [f for f in os.listdir(out) if f.endswith(".tflite")][0]
    runner = Interpreter(model_path=str(out / tflite)).get_signature_runner()
    scale, zero = runner.get_input_details()["img"]["quantization"]
    result = runner(img=np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8))
    for i, name in enumerate(["boxes", "classes"]):
        detail = runner.get_output_details()[f"quant_{name}"]
        deployed = (result[f"quant_{name}"].astype(np.float64) - detail["quantization"][1]) \
            * detail["quantization"][0]
        sqnr = 10 * math.log10(np.sum(reference[i] ** 2) / np.sum((reference[i] - deployed) ** 2))
        assert row["outputs"][name]["sqnr_db"] == pytest.approx(sqnr, rel=1e-3)
        assert row["per_output"][name]["sqnr_db"] == pytest.approx(sqnr, rel=1e-3)
        if name == "boxes":  # --output_tasks boxes=regression: R² against the float model
            r2 = 1 - np.sum((reference[0] - deployed) ** 2) / np.sum(
                (reference[0] - reference[0].mean()) ** 2)
            assert row["per_output"]["boxes"]["r2"] == pytest.approx(r2, rel=1e-3)
    agreement = np.mean(np.argmax(reference[1], 1) == np.argmax(
        (result["quant_classes"].astype(np.float64)), 1))
    assert row["top1_agreement"] == pytest.approx(agreement)
    assert row["per_output"]["classes"]["top1_agreement"] == pytest.approx(agreement)
    assert report["output_tasks"]["outputs"]["boxes"]["reason"] == "set by output_tasks"
    assert report["output_tasks"]["outputs"]["classes"]["task"] == "classification"
    assert report["gates"]["gate"] == ["classes:top1_agreement>=0.5", "boxes:r2>=-10"]
    assert report["gates"]["passed"] is True


@pytest.mark.slow
def test_compress_distill_without_labels(capsys, files, tmp_path):
    unlabelled = {"train_data": str(files / "train_nolabels.npz"),
                  "eval_data": str(files / "eval_nolabels.npz")}
    code, _, err = run(compress_cli, capsys, **base(files, tmp_path / "refused", sparsity=0.5,
                                                    **unlabelled))
    assert code == 2 and "has no labels" in err and "--distill" in err
    assert not os.path.exists(tmp_path / "refused")
    out2 = tmp_path / "distilled"
    code, _, err = run(compress_cli, capsys, **base(files, out2, sparsity=0.5, distill=True,
                                                    **unlabelled))
    assert code == 0, err
    report = json.load(open(out2 / "report.json"))
    assert report["compression"]["distillation"] == {"alpha": 0, "temperature": 4.0,
                                                     "reason": "no labels"}
    assert report["modes"][0]["accuracy"] is None
    assert report["compression"]["weight_sparsity"] > 0.3


def test_infer_heads_rules_and_overrides():
    inp = tf_keras.Input((6,), name="x")
    outs = [tf_keras.layers.Dense(4, name="boxes")(inp),
            tf_keras.layers.Dense(3, name="class_logits")(inp),
            tf_keras.layers.Dense(3, activation="softmax", name="p")(inp),
            tf_keras.layers.Dense(1, name="score")(inp),
            tf_keras.layers.Dense(2, activation="sigmoid", name="flags")(inp)]
    model = tf_keras.Model(inp, outs)
    found = {h.name: (h.kind, h.softmax) for h in heads.infer_heads(model)}
    assert found == {"boxes": ("mse", False), "class_logits": ("kl", False), "p": ("kl", True),
                     "score": ("mse", False), "flags": ("mse", False)}
    assert heads.infer_heads(model, {"boxes": "kl"})[0].kind == "kl"
    labels = [np.zeros(2, np.int64), None, None, None, None]
    assert heads.infer_heads(model, labels=labels)[0].kind == "kl"
    labels[0] = np.zeros((2, 4), np.float32)  # float targets shaped like the output
    assert heads.infer_heads(model, labels=labels)[0].kind == "mse"
    with pytest.raises(ValueError, match=r"Output 'boxes' learns by mse .* \(N, 4\); its labels "
                                         r"have shape \(2, 3\)"):
        heads.infer_heads(model, labels=[np.zeros((2, 3), np.float32), None, None, None, None])
    single = tf_keras.Model(inp, tf_keras.layers.Dense(3)(inp))
    assert heads.infer_heads(single)[0].kind == "kl"  # tflq's convention: logits
    assert heads.parse_output_losses(" boxes=mse, p=kl ") == {"boxes": "mse", "p": "kl"}
    assert heads.primary_head(heads.infer_heads(model)) == 1
    expected = (("boxes", "mse"), ("p", "kl"))
    for value in ("p=kl,boxes=mse", {"boxes": "mse", "p": "kl"}, [("p", "kl"), ("boxes", "mse")]):
        assert heads.normalize_output_losses(value) == expected
    with pytest.raises(ValueError, match="Unknown output loss 'l1' for output 'p'"):
        heads.normalize_output_losses({"p": "l1"})


def test_trainer_losses_per_head_match_numpy():
    """One train step at learning rate 0: the trainer's loss equals the formula in numpy."""
    from tflq.models import tf

    inp = tf_keras.Input((3,), name="x")
    student = tf_keras.Model(inp, [tf_keras.layers.Dense(2, name="boxes")(inp),
                                   tf_keras.layers.Dense(3, name="classes")(inp)])
    teacher = tf_keras.Model(inp, [tf_keras.layers.Dense(2)(inp), tf_keras.layers.Dense(3)(inp)])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    y_box = rng.normal(size=(8, 2)).astype(np.float32)
    y_cls = rng.integers(0, 3, size=8)
    found = heads.infer_heads(student)
    s_box, s_cls = [np.asarray(o, np.float64) for o in student(x)]
    t_box, t_cls = [np.asarray(o, np.float64) for o in teacher(x)]

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    T, a = 2.0, 0.3
    ce = -np.log(softmax(s_cls)[np.arange(8), y_cls])
    p, q = softmax(t_cls / T), softmax(s_cls / T)
    kl = np.sum(p * np.log(p / q), axis=1)
    expected = np.mean(a * np.mean((y_box - s_box) ** 2, 1) + (1 - a) * np.mean(
        (t_box - s_box) ** 2, 1) + a * ce + (1 - a) * T**2 * kl)
    trainer = qat.make_trainer(student, teacher, temperature=T, alpha=a, heads=found)
    trainer.compile(optimizer=tf_keras.optimizers.SGD(0.0))
    logs = trainer.train_on_batch(x, [y_box, y_cls], return_dict=True)
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)
    # no labels: the teacher alone (alpha 0)
    alone = qat.make_trainer(student, teacher, temperature=T, alpha=a, heads=found, labelled=False)
    alone.compile(optimizer=tf_keras.optimizers.SGD(0.0))
    logs = alone.train_on_batch(x, return_dict=True)
    assert logs["loss"] == pytest.approx(np.mean(np.mean((t_box - s_box) ** 2, 1)
                                                 + T**2 * kl), rel=1e-5)
    assert "accuracy" not in logs
    with pytest.raises(ValueError, match="needs a teacher"):
        qat.make_trainer(student, None, heads=found, labelled=False)
    assert tf.is_tensor(trainer(x)[0])


def test_tflite_output_names_follow_keras_order(files, tmp_path):
    from tflq.models import load_model
    from tflq.ptq import convert

    loaded = load_model(str(files / "two.keras"))
    content = convert.convert_model(loaded, "float32", str(tmp_path)).content
    assert common.tflite_output_names(content, ["classes", "boxes"]) == ["classes", "boxes"]
    with pytest.raises(RuntimeError, match="internal error"):
        common.tflite_output_names(content, ["nope", "boxes"])


def test_load_arrays_reads_labels_per_output(files, tmp_path):
    from tflq import sampling
    from tflq.signature import TensorSpec

    specs = [TensorSpec("img", (8, 8, 1), "float32")]
    x, y = sampling.load_arrays(str(files / "train.npz"), specs, limit=10, seed=1)
    data = np.load(files / "train.npz")
    indices = sampling.sample_indices(112, 10, 1)
    np.testing.assert_array_equal(x["img"], data["x"][indices])
    assert sorted(y) == ["boxes", "classes"]
    np.testing.assert_array_equal(y["boxes"], data["y_boxes"][indices])
    assert y["classes"].dtype == np.int64 and y["boxes"].shape == (10, 4)
    np.savez(tmp_path / "short.npz", x=data["x"], y_boxes=data["y_boxes"][:5])
    with pytest.raises(ValueError, match="arrays differ in length"):
        sampling.load_arrays(str(tmp_path / "short.npz"), specs)
    matched = heads.match_labels(y, ["classes", "boxes"], "f")  # output order, not file order
    np.testing.assert_array_equal(matched[0], y["classes"])
    # labels may name the .tflite signature's outputs instead
    renamed = heads.match_labels({"output_0": y["boxes"], "output_1": y["classes"]},
                                 ["boxes", "classes"], "f", ["output_0", "output_1"])
    np.testing.assert_array_equal(renamed[0], y["boxes"])


def test_keras3_two_head_model_qat_names_outputs_and_says_it_was_rebuilt(capsys, files, tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1), name="img")
    h = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, activation="relu")(inp))
    model = keras.Model(inp, [keras.layers.Dense(4, name="boxes")(h),
                              keras.layers.Dense(2, activation="softmax", name="classes")(h)])
    model.save(tmp_path / "k3.keras")
    out = tmp_path / "out"
    code, _, err = run(qat_cli, capsys, **base(files, out, model=str(tmp_path / "k3.keras")))
    assert code == 0, err
    report = json.load(open(out / "report.json"))
    notes = report["modes"][0]["notes"]
    assert any(n.startswith("Keras 3 model rebuilt as tf_keras, outputs checked on") for n in notes)
    assert any(n.startswith("prepare: ") for n in notes)
    assert report["qat"]["outputs"]["classes"] == {"loss": "kl", "softmax": True,
                                                   "reason": "softmax output", "labels": True}
    assert sorted(report["qat"]["parity"]["outputs"]) == ["boxes", "classes"]
    # the float Keras 3 model against the .tflite on the class head, recomputed here
    x = np.load(files / "eval.npz")["x"]
    reference = np.argmax(np.asarray(model(x)[1]), 1)
    runner = Interpreter(model_path=str(out / "k3_qat_int8.tflite")).get_signature_runner()
    scale, zero = runner.get_input_details()["img"]["quantization"]
    deployed = runner(img=np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8))
    assert report["modes"][0]["top1_agreement"] == pytest.approx(
        np.mean(reference == np.argmax(deployed["quant_classes"], 1)))


def test_dict_outputs_of_a_functional_model_come_in_output_names_order(tmp_path):
    # Basic Pitch builds its model with a dict of outputs: the model returns a dict, which
    # tflq's float reference used to take for a list ("'dict' object has no attribute numpy").
    from tflq.models import tf_keras, wrap_model

    x = tf_keras.Input((6, 6, 3), name="x")
    hidden = tf_keras.layers.Conv2D(6, 3, activation="relu", name="c1")(x)
    hidden = tf_keras.layers.Conv2D(5, 3, activation="relu", name="c2")(hidden)  # a CLE pair
    hidden = tf_keras.layers.GlobalAveragePooling2D()(hidden)
    model = tf_keras.Model(x, {"onset": tf_keras.layers.Dense(2, name="onset")(hidden),
                               "contour": tf_keras.layers.Dense(4, name="contour")(hidden)})
    loaded = wrap_model(model)
    data = np.random.default_rng(0).normal(size=(5, 6, 6, 3)).astype("float32")
    got = loaded.predict({"x": data})
    expected = model(data)
    assert sorted(loaded.output_names) == ["contour", "onset"]
    for name, array in zip(loaded.output_names, got, strict=True):
        np.testing.assert_allclose(array, expected[name], rtol=1e-6)
    concrete = loaded.graph_function()
    for name, array in zip(loaded.output_names, concrete(data), strict=True):
        np.testing.assert_allclose(array, expected[name], rtol=1e-6)
    # Equalization compares the equalized float model with the original output by output.
    import tflq

    result = tflq.convert(model, data[:3], data[3:], modes=("int8",), equalize=True,
                          latency_runs=1, layer_error_samples=0)
    assert "equalized float model vs the original" in " ".join(result.report["modes"][-1]["notes"])
