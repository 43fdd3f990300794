"""A batch spec runs convert, qat and compress jobs side by side: the same warm workers,
cache and manifest; each job's .tflite is checked in the interpreter against its report."""

import json
import os

import numpy as np
import pytest
from absl.testing import flagsaver
from ai_edge_litert.interpreter import Interpreter
from conftest import REPO, tiny_data

from pipelines import batch as cli

SPEC = """
[defaults]
eval_data = "eval.npz"
batch_size = 16
latency_runs = 2
layer_error_samples = 0

[[jobs]]
name = "conv"
model = "tiny.keras"
data = "train.npz"
modes = ["int8"]
num_calibration_samples = 20

[[jobs]]
kind = "qat"
name = "q"
model = "tiny.keras"
train_data = "train.npz"
epochs = 1
scheme = "pow2"

[[jobs]]
kind = "compress"
name = "c"
model = "tiny.keras"
train_data = "train.npz"
sparsity = 0.5
epochs = 1
quantization = "ptq"
num_calibration_samples = 20
"""


def run_tflite(path, x):
    """Float outputs of a .tflite on ``x``, one sample at a time (int8 I/O quantized here)."""
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for sample in x:
        value = sample[None]
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            value = np.clip(np.round(value / scale + zero), -128, 127).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], value)
        interpreter.invoke()
        result = interpreter.get_tensor(out["index"])
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            result = (result.astype(np.float32) - zero) * scale
        rows.append(result[0])
    return np.array(rows)


def test_a_batch_runs_convert_qat_and_compress_jobs(capsys, tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([os.path.join(REPO, "tests"),
                                                      os.environ.get("PYTHONPATH", "")]))
    tiny_model.save(tmp_path / "tiny.keras")
    x, y = tiny_data(112, seed=6)
    np.savez(tmp_path / "train.npz", x=x[:64], y=y[:64])
    np.savez(tmp_path / "eval.npz", x=x[64:], y=y[64:])
    (tmp_path / "jobs.toml").write_text(SPEC)
    out = tmp_path / "out"
    with flagsaver.flagsaver(spec=str(tmp_path / "jobs.toml"), out=str(out), quiet=True):
        code = cli.main(["batch"])
    captured = capsys.readouterr()
    assert code == 0, captured.err + captured.out
    manifest = json.loads((out / "manifest.json").read_text())
    jobs = {j["name"]: j for j in manifest["jobs"]}
    assert {n: (j["kind"], j["status"]) for n, j in jobs.items()} == {
        "conv": ("convert", "ok"), "q": ("qat", "ok"), "c": ("compress", "ok")}
    assert len({j["worker"]["pid"] for j in jobs.values()}) == 1  # one warm worker ran all three
    x_eval, y_eval = x[64:], y[64:]
    for name, job in jobs.items():
        report = json.loads((out / name / "report.json").read_text())
        row = next(r for r in report["modes"] if r["path"].endswith("int8.tflite"))
        tflite = out / name / row["path"]
        assert {os.path.basename(a["path"]) for a in job["artifacts"]} >= {row["path"],
                                                                           "report.json"}
        # The interpreter's own accuracy on the evaluation data is the report's.
        outputs = run_tflite(tflite, x_eval)
        assert outputs.shape == (len(x_eval), 3) and np.all(np.isfinite(outputs))
        accuracy = float(np.mean(np.argmax(outputs, axis=1) == y_eval))
        assert row["accuracy"] == pytest.approx(accuracy, abs=1 / len(x_eval)), name
        assert job["metrics"]["modes"][row["mode"]]["accuracy"] == row["accuracy"]
        assert report["float"]["accuracy"] is not None
    assert json.loads((out / "q" / "report.json").read_text())["qat"]["scheme"] == "pow2"
    compressed = json.loads((out / "c" / "report.json").read_text())["compression"]
    assert compressed["weight_sparsity"] > 0.3  # read from the .tflite by the job
    # Every job kind is cached: a second run builds nothing.
    with flagsaver.flagsaver(spec=str(tmp_path / "jobs.toml"), out=str(out), quiet=True):
        assert cli.main(["batch"]) == 0
    stdout = capsys.readouterr().out
    assert all(f"| {n} | ok (cached) |" in stdout for n in jobs), stdout
