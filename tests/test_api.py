"""The front door (tflq.convert / qat / compress / preflight) on in-memory models and data:
results equal to the file-based job's, nothing written until asked, .save() writing what
the command line writes, .best(), and the report rendered for Jupyter."""

import json
import os

import keras
import numpy as np
import pytest

import tflq
from tests.conftest import snapshot, tiny_data
from tflq import interpreter, report
from tflq.jobs import convert as convert_job
from tflq.models import tf, tf_keras

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = {"latency_runs": 2, "progress": False, "layer_error_samples": 0}


@pytest.fixture(scope="module")
def data():
    return tiny_data(80, seed=1)


@pytest.fixture(scope="module")
def in_memory(tiny_model, data):
    """One in-memory conversion shared by the tests that only read it."""
    return tflq.convert(tiny_model, data, modes=("float32", "int8", "dynamic"),
                        num_calibration_samples=40, **FAST)


def test_convert_in_memory_equals_the_file_job(in_memory, tiny_model, data, tmp_path):
    model_path = tmp_path / f"{tiny_model.name}.keras"  # same stem, same file names
    tiny_model.save(model_path)
    np.savez(tmp_path / "d.npz", x=data[0], y=data[1])
    out = tmp_path / "cli"
    from_files = convert_job.run_job(convert_job.ConvertJob(
        model=str(model_path), data=str(tmp_path / "d.npz"), out=str(out),
        modes=("float32", "int8", "dynamic"), num_calibration_samples=40, **FAST))
    assert sorted(os.listdir(out)) == sorted(in_memory.files)
    assert sorted(from_files.report) == sorted(in_memory.report)
    assert json.loads((out / "report.json").read_text()).keys() == in_memory.report.keys()
    for row, file_row in zip(in_memory.report["modes"], from_files.report["modes"], strict=True):
        assert row["mode"] == file_row["mode"]
        for key in ("top1_agreement", "accuracy", "sqnr_db", "size_bytes"):
            assert row[key] == pytest.approx(file_row[key], rel=1e-6), (row["mode"], key)
    assert in_memory.report["model"]["source"] == "<in-memory model>"
    assert in_memory.report["data"]["calibration"]["source"] == "<numpy arrays (80 samples)>"
    assert in_memory.report["settings"]["num_calibration_samples"] == 40
    assert in_memory.exit_code == 0 and in_memory.gate_failures == ()


def test_mode_results_hold_runnable_tflite_bytes(in_memory, tiny_model, data, tmp_path):
    int8 = in_memory.modes["int8"]
    assert int8.name == f"{tiny_model.name}_int8.tflite"
    assert int8.tflite == in_memory.files[int8.name]
    assert int8.size_bytes == int8.metrics["size_bytes"] == len(int8.tflite)
    assert int8.float_ops == [] and int8.latency_ms["median"] > 0
    assert open(int8.save(str(tmp_path / "m.tflite")), "rb").read() == int8.tflite
    runner = interpreter.TfliteModel(in_memory.modes["float32"].tflite)
    out = runner.run({next(iter(runner.input_details)): data[0][:4]})[0]
    np.testing.assert_allclose(out, tiny_model(data[0][:4]).numpy(), atol=1e-5)


def test_nothing_is_written_until_save(tiny_model, data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tflq.convert(tiny_model, data, modes=("float32",), num_calibration_samples=40, **FAST)
    assert os.listdir(tmp_path) == []


def test_save_writes_the_cli_files_atomically_and_refuses_a_bad_folder(in_memory, tmp_path):
    written = in_memory.save(str(tmp_path / "a"))
    assert sorted(os.path.basename(p) for p in written) == sorted(in_memory.files)
    for name, content in in_memory.files.items():
        assert (tmp_path / "a" / name).read_bytes() == content
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        in_memory.save(str(blocker))
    with pytest.raises(ValueError, match="cannot be created"):
        in_memory.save(str(blocker / "sub"))
    assert blocker.read_text() == "keep" and sorted(os.listdir(tmp_path)) == ["a", "file"]


def test_best_ranks_by_metric_within_a_size(in_memory):
    rows = {r["mode"]: r for r in in_memory.report["modes"]}
    assert in_memory.best().mode == max(rows, key=lambda m: rows[m]["top1_agreement"])
    smallest = min(rows, key=lambda m: rows[m]["size_bytes"])
    assert in_memory.best("sqnr_db", max_size=rows[smallest]["size_bytes"]).mode == smallest
    assert in_memory.best("size_bytes").mode == smallest
    fastest = min(rows, key=lambda m: rows[m]["latency_ms"]["median"])
    assert in_memory.best("latency_ms").mode == fastest
    with pytest.raises(ValueError, match="Unknown metric 'speed'"):
        in_memory.best("speed")
    with pytest.raises(ValueError, match="No mode has top1_agreement within max_size=10 bytes"):
        in_memory.best(max_size=10)


def test_result_renders_as_the_report(in_memory):
    import html

    shown = in_memory._repr_html_()
    assert shown.startswith("<iframe srcdoc=")
    page = html.unescape(shown.split('srcdoc="', 1)[1].split('" title=', 1)[0])
    from tflq import report_html

    assert page == report_html.to_html(in_memory.report)
    assert '<table id="modes">' in page and "<b>dynamic</b>" in page and "<svg" in page
    assert in_memory._repr_markdown_() == report.to_markdown(in_memory.report)
    assert "| int8 |" in in_memory._repr_markdown_().replace("**", "")
    assert repr(in_memory).startswith("<tflq convert result: <in-memory model>, modes: float32, int8")


def test_keras3_object_with_a_batched_dataset_and_a_function(tmp_path):
    inp = keras.Input((8, 8, 1), name="img")
    x = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Flatten()(x)), name="k3")
    images, labels = tiny_data(60, seed=2)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)

    def eval_samples():
        for i in range(20):
            yield {"img": images[i]}, int(labels[i])

    result = tflq.convert(model, dataset, eval_data=eval_samples, modes=("int8",),
                          num_calibration_samples=30, **FAST)
    assert result.report["model"]["flavor"] == "keras3"
    assert result.report["data"]["calibration"]["source"] == "<tf.data.Dataset>"
    assert result.report["data"]["evaluation"] == {**result.report["data"]["evaluation"],
                                                   "source": "<generator eval_samples>",
                                                   "num_samples": 20, "has_labels": True}
    runner = interpreter.TfliteModel(result.modes["int8"].tflite)
    want = model(images[:20], training=False).numpy()
    got = np.concatenate([runner.run({next(iter(runner.input_details)): images[i:i + 1]})[0]
                          for i in range(20)])
    agreement = float(np.mean(np.argmax(got, -1) == np.argmax(want, -1)))
    assert result.modes["int8"].metrics["top1_agreement"] == pytest.approx(agreement)
    # The same object through QAT (rebuilt as tf_keras and checked) and preflight.
    trained = tflq.qat(model, dataset, (images[:20], labels[:20]), epochs=1, batch_size=30,
                       verbose=0, latency_runs=2, layer_error_samples=0)
    assert trained.report["model"] == {**trained.report["model"], "flavor": "keras3",
                                       "source": "<in-memory model>"}
    assert trained.report["data"]["calibration"]["num_samples"] == 60
    assert trained.modes["int8"].metrics["top1_agreement"] > 0.5
    checked = tflq.preflight(model, dataset)
    assert checked.report["data"] == "<tf.data.Dataset>"
    assert isinstance(checked.report["findings"], list)


def test_bad_in_memory_data_fails_before_writing(tiny_model, data, tmp_path):
    x, y = data[0].copy(), data[1]
    x[7, 0, 0, 0] = np.nan
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.tflite").write_bytes(b"old")
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"<numpy arrays \(80 samples\)>: sample 7, input 'img': "
                                         "contains NaN"):
        tflq.convert(tiny_model, (x, y), out=str(out), num_calibration_samples=80,
                     eval_data=data, **FAST)
    with pytest.raises(ValueError, match=r"Unknown option 'epochs' for ConvertJob"):
        tflq.convert(tiny_model, data, epochs=3)
    with pytest.raises(ValueError, match="Pass either gates= or its options"):
        tflq.convert(tiny_model, data, gates=tflq.Gates(), min_agreement=0.5)
    assert snapshot(out) == before


def test_training_and_preflight_inputs_get_the_files_errors(tiny_model, data):
    x, y = data
    with pytest.raises(ValueError, match=r"arrays differ in length: \{'img': 80, 'y': 79\}"):
        tflq.qat(tiny_model, (x, y[:-1]), data, epochs=1)
    with pytest.raises(ValueError, match=r"Training data '<numpy arrays \(80 samples\)>' has no "
                                         "labels"):
        tflq.compress(tiny_model, x, data, sparsity=0.5)
    with pytest.raises(ValueError, match=r"has no array for model input\(s\) \['img'\]"):
        tflq.preflight(tiny_model, {"image": x})
    with pytest.raises(ValueError, match=r"shape \(8, 8, 3\) does not match the model's "
                                         r"\(8, 8, 1\)"):
        tflq.preflight(tiny_model, np.repeat(x, 3, axis=-1))


def test_out_writes_what_save_writes_and_gates_follow(tiny_model, data, tmp_path):
    result = tflq.convert(tiny_model, data, modes=("int8",), out=str(tmp_path / "o"),
                          num_calibration_samples=40, min_agreement=1.0, **FAST)
    failing = result.report["modes"][0]["top1_agreement"] < 1.0
    assert result.exit_code == (3 if failing else 0)
    assert len(result.gate_failures) == int(failing)
    assert sorted(os.listdir(tmp_path / "o")) == sorted(result.files)
    assert result.report["gates"]["min_agreement"] == 1.0


def test_qat_from_a_dataset(tiny_model, data, tmp_path):
    x, y = data
    train = tf.data.Dataset.from_tensor_slices({"img": x[:64]}).map(lambda d: d)
    train = tf.data.Dataset.zip((train, tf.data.Dataset.from_tensor_slices(y[:64])))
    result = tflq.qat(tiny_model, train, (x[64:], y[64:]), scheme="pow2", epochs=1,
                      batch_size=32, verbose=0, latency_runs=2, layer_error_samples=0)
    assert list(result.modes) == ["int8"]
    assert result.report["data"]["calibration"] == {"source": "<tf.data.Dataset>",
                                                    "num_samples": 64, "has_labels": True}
    assert result.report["settings"]["model"] == "<in-memory model>"
    assert f"{tiny_model.name}_qat.h5" in result.files
    runner = interpreter.TfliteModel(result.modes["int8"].tflite)
    assert runner.output_scale(runner.output_names[0]) > 0  # an int8 model with integer output
    written = result.save(str(tmp_path / "q"))
    assert sorted(os.listdir(tmp_path / "q")) == sorted(result.files) and len(written) == len(
        result.files)


def test_compress_from_a_dict_and_preflight_from_arrays(tiny_model, data):
    x, y = data
    result = tflq.compress(tiny_model, {"img": x[:64], "y": y[:64]}, (x[64:], y[64:]),
                           sparsity=0.5, quantization="ptq", epochs=1, batch_size=32,
                           verbose=0, num_calibration_samples=32, latency_runs=2)
    assert list(result.modes) == ["int8"]
    assert result.report["compression"]["weight_sparsity"] > 0.3
    assert result.report["data"]["evaluation"]["source"] == "<numpy arrays (16 samples)>"
    checked = tflq.preflight(tiny_model, x, eval_data=x[:10])
    assert checked.report["model"] == "<in-memory model>"
    assert checked.report["data"] == "<numpy arrays (80 samples)>"
    assert sorted(checked.files) == ["preflight.json", "preflight.md"]
    assert checked._repr_html_() is None
    assert checked._repr_markdown_().startswith("# tflq preflight: <in-memory model>")
    with pytest.raises(ValueError, match="has no converted modes"):
        checked.best()


def test_import_tflq_stays_light():
    import subprocess
    import sys

    code = ("import sys, tflq; assert callable(tflq.__getattr__); "
            "print('tensorflow' in sys.modules, 'convert' in tflq.__all__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": REPO})
    assert out.stdout.split() == ["False", "True"]


def test_package_docstring_examples_run():
    import doctest

    failures, tried = doctest.testmod(tflq, verbose=False)
    assert tried >= 10 and failures == 0


def test_tf_keras_subclassed_model_is_refused():
    class Net(tf_keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="subclassed tf_keras model with unknown inputs"):
        tflq.convert(Net(), np.zeros((4, 2), np.float32))
