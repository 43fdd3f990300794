"""pipelines/qat.py end to end on tiny models: every strategy, parity checked independently,
bad input refused with nothing written."""

import json
import os
import re

import numpy as np
import pytest
from absl.testing import flagsaver
from ai_edge_litert.interpreter import Interpreter
from conftest import snapshot, tiny_data

from pipelines import qat as cli
from tflq.jobs import qat as qat_job
from tflq.models import tf_keras
from tflq.quant import qat


@pytest.fixture()
def files(qat_files):
    return qat_files


def run_cli(capsys, **values):
    with flagsaver.flagsaver(**values):
        code = cli.main(["qat"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def base(files, **extra):
    return {"model": str(files / "tiny.keras"), "train_data": str(files / "train.npz"),
            "eval_data": str(files / "eval.npz"), "out": str(files / "out"), "epochs": 1,
            "batch_size": 16, **extra}


def test_gradient_strategy_with_quant_error_loss_and_parity(capsys, files):
    code, stdout, err = run_cli(capsys, **base(files, scheme="pow2", quant_error_weight=0.5,
                                               learning_rate=1e-3, overrides='[{"type": "Dense", '
                                               '"scheme": "default_int8"}]'))
    assert code == 0, err
    assert "QAT Keras vs TFLite int8: top-1 agreement" in stdout
    out = files / "out"
    report = json.load(open(out / "report.json"))
    assert report["qat"]["scheme"] == "pow2" and report["qat"]["deploys_exactly"] is True
    assert report["modes"][0]["float_ops"] == []
    assert len(report["qat"]["history"]["loss"]) == 1
    # Independent parity: the saved QAT model vs the written .tflite through the interpreter.
    with qat.quantize_scope():
        student = tf_keras.models.load_model(out / "tiny_qat.h5", compile=False)
    data = np.load(files / "eval.npz")
    interp = Interpreter(model_path=str(out / "tiny_qat_int8.tflite"))
    runner = interp.get_signature_runner()
    detail = runner.get_input_details()["img"]
    scale, zero = detail["quantization"]
    q = np.clip(np.round(data["x"] / scale) + zero, -128, 127).astype(np.int8)
    (name, raw), = runner(img=q).items()
    out_scale, out_zero = runner.get_output_details()[name]["quantization"]
    deployed = (raw.astype(np.float64) - out_zero) * out_scale
    keras_out = student.predict(data["x"], verbose=0)
    parity = report["qat"]["parity"]
    assert parity["top1_agreement"] == pytest.approx(
        np.mean(deployed.argmax(1) == keras_out.argmax(1)))
    assert parity["within_1_lsb"] == pytest.approx(
        np.mean(np.abs(deployed - keras_out) <= out_scale * qat_job.LSB_SLACK))
    assert report["modes"][0]["accuracy"] == pytest.approx(
        np.mean(deployed.argmax(1) == data["y"]))


def test_statistics_strategy_leaves_weights_alone(capsys, files, tiny_model):
    code, _, err = run_cli(capsys, **base(files, strategy="statistics"))
    assert code == 0, err
    report = json.load(open(files / "out" / "report.json"))  # per-layer error of the QAT int8
    int8 = report["modes"][0]
    assert [row["op"] for row in int8["layers"]] == ["CONV_2D", "RESHAPE", "FULLY_CONNECTED"]
    assert int8["layer_error"]["samples"] == 16 and int8["layer_error"]["unmatched"] == []
    assert all(row["dtype"] == "int8" and row["layer_sqnr_db"] is not None for row in int8["layers"])
    with qat.quantize_scope():
        student = tf_keras.models.load_model(files / "out" / "tiny_qat.h5", compile=False)
    kernels = [w.numpy() for w in student.weights if w.name.endswith("kernel:0")]
    originals = [w.numpy() for w in tiny_model.weights if w.name.endswith("kernel:0")]
    for got, want in zip(kernels, originals, strict=True):
        np.testing.assert_array_equal(got, want)


def test_meanstd_activation_ranges(capsys, files):
    code, _, err = run_cli(capsys, **base(files, activation_ranges="meanstd", range_k=2.5))
    assert code == 0, err
    report = json.load(open(files / "out" / "report.json"))
    assert report["settings"]["activation_ranges"] == "meanstd"
    assert report["settings"]["range_k"] == 2.5
    assert report["modes"][0]["float_ops"] == []
    assert report["qat"]["parity"]["top1_agreement"] >= 0.9


def test_distill_strategy(capsys, files):
    code, _, err = run_cli(capsys, **base(files, strategy="distill",
                                          teacher=str(files / "tiny.keras"), temperature=2.0,
                                          alpha=0.3, distribution="mirrored", seed=1,
                                          num_train_samples=64))
    assert code == 0, err
    report = json.load(open(files / "out" / "report.json"))
    assert report["qat"]["strategy"] == "distill"
    assert report["settings"]["distribution"] == "mirrored"
    assert report["data"]["calibration"]["num_samples"] == 64


def wrong_teacher():
    inp = tf_keras.Input((8, 8, 1), name="img")
    return tf_keras.Model(inp, tf_keras.layers.Dense(5)(tf_keras.layers.Flatten()(inp)))


BAD = {
    "unknown scheme": ({"scheme": "int3"}, "Unknown scheme 'int3'"),
    "distill without teacher": ({"strategy": "distill"}, "needs a teacher"),
    "teacher mismatch": ({"strategy": "distill", "teacher": "test_cli_qat:wrong_teacher"},
                         r"Teacher outputs \(None, 5\) do not match the student's \(None, 3\)"),
    "bad overrides json": ({"overrides": "[{"}, "--overrides is not valid JSON"),
    "override matches nothing": ({"overrides": '[{"match": "nope", "weight_bits": 4}]'},
                                 "matches no layer"),
    "bits out of range": ({"overrides": '[{"match": "conv", "weight_bits": 1}]'},
                          r"weight_bits must be in \[2, 8\]"),
    # Found by the flag fuzzer (TypeError, exit 1; a JSON object silently became its keys):
    "override not a table": ({"overrides": "[1]"}, r"An override is a table .* Received: 1$"),
    "overrides not a list": ({"overrides": '{"match": "conv"}'},
                             "--overrides must be a JSON list"),
    "override of the wrong type": ({"overrides": '[{"match": 5}]'},
                                   "Override match must be str. Received: match=5"),
    "mse on class labels": ({"output_losses": "logits=mse"},  # InvalidArgumentError in fit
                            r"Output 'logits' learns by mse from targets shaped like the output "
                            r"\(N, 3\); its labels have shape \(\d+,\)"),
    "zero epochs": ({"epochs": 0}, "epochs must be positive"),
    "training diverges": ({"learning_rate": 1e38}, "QAT training diverged"),
    "missing model": ({"model": "/no/model.keras"}, "Model path not found"),
    "no train data": ({"train_data": None}, "--train_data is required"),
    "negative layer error samples": ({"layer_error_samples": -2},
                                     "layer_error_samples must be an integer >= 0"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exits_2_and_writes_nothing(capsys, files, case):
    values, message = BAD[case]
    before = snapshot(files)
    code, _, err = run_cli(capsys, **{**base(files), **values})
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert snapshot(files) == before and not os.path.exists(files / "out")


def test_unlabelled_training_data_is_refused(capsys, files):
    x, _ = tiny_data(20)
    np.savez(files / "nolabels.npz", x=x)
    code, _, err = run_cli(capsys, **base(files, train_data=str(files / "nolabels.npz")))
    assert code == 2 and "has no labels" in err


def test_mirrored_strategy_over_two_logical_cpus(files):
    import subprocess
    import sys

    from conftest import REPO

    script = f"""
import json
from tflq.models import tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
from tflq.jobs import qat
print("replicas", tf.distribute.MirroredStrategy().num_replicas_in_sync)
job = qat.QATJob(model={str(files / 'tiny.keras')!r}, train_data={str(files / 'train.npz')!r},
                 eval_data={str(files / 'eval.npz')!r}, out={str(files / 'out')!r}, epochs=2,
                 batch_size=16, distribution="mirrored", verbose=0)
report = qat.run_qat_job(job).report
print("history", json.dumps(report["qat"]["history"]["loss"]))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas 2" in result.stdout
    losses = json.loads(result.stdout.split("history ")[1])
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert os.path.exists(files / "out" / "tiny_qat_int8.tflite")


def test_an_interrupted_run_resumes_from_its_last_epoch(files):
    class Interrupt(Exception):
        pass

    class StopAfterFirstEpoch(tf_keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                raise Interrupt()

    job = qat_job.QATJob(model=str(files / "tiny.keras"), train_data=str(files / "train.npz"),
                     eval_data=str(files / "eval.npz"), out=str(files / "out"), epochs=3,
                     batch_size=16, verbose=0)
    with pytest.raises(Interrupt):
        qat_job.run_qat_job(job, callbacks=[StopAfterFirstEpoch()])
    assert os.path.isdir(files / "out" / ".qat_backup")
    assert not os.path.exists(files / "out" / "report.json")
    report = qat_job.run_qat_job(job).report
    assert len(report["qat"]["history"]["loss"]) == 2  # epochs 2 and 3 only: resumed
    assert not os.path.exists(files / "out" / ".qat_backup")
