"""The bundled example and the scripts that make it and benchmark it."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import EXAMPLE_DIR, FASHION_DIR, REPO, fashion_file, tiny_data

from benchmarks import fashion_mnist
from tflq.data import read_idx, write_idx
from tflq.models import tf_keras

MODEL = os.path.join(EXAMPLE_DIR, "fashion_mnist_cnn.keras")


def test_bundled_model_is_small_and_accurate_on_its_slice():
    assert os.path.getsize(MODEL) < 1024 * 1024
    model = tf_keras.models.load_model(MODEL, compile=False)
    images = read_idx(os.path.join(EXAMPLE_DIR, "evaluation-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(EXAMPLE_DIR, "evaluation-labels-idx1-ubyte.gz"))
    logits = model.predict(images[..., None].astype(np.float32) / 255.0, verbose=0)
    assert np.mean(logits.argmax(1) == labels) > 0.90


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z]+", text.upper())


def test_licence_note_ships_with_the_data():
    # The quoted licence must be Fashion-MNIST's own, word for word: compared with the
    # licence text of Debian's dataset-fashion-mnist package (an independent copy).
    fashion_file("t10k-images-idx3-ubyte.gz")
    debian = open("/usr/share/doc/dataset-fashion-mnist/copyright").read()
    upstream = debian.split("License: Expat\n", 1)[0]
    assert "Zalando SE" in upstream
    licence = debian.split("\nLicense: Expat\n")[-1]
    text = open(os.path.join(EXAMPLE_DIR, "README.md")).read()
    quoted = "".join(ln[1:] + "\n" for ln in text.splitlines() if ln.startswith(">"))
    assert _words(quoted) == _words(licence)
    assert "Copyright (c) 2017 Zalando SE" in text


def test_fashion_mnist_loader_reads_real_files():
    fashion_file("train-images-idx3-ubyte.gz")
    x, y = fashion_mnist.fashion_mnist(FASHION_DIR, "t10k")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and set(np.unique(y)) == set(range(10))


def test_fashion_mnist_loader_names_the_missing_file(tmp_path):
    with pytest.raises(ValueError, match="apt-get install -y dataset-fashion-mnist"):
        fashion_mnist.fashion_mnist(str(tmp_path), "train")


def test_build_cnn_builds_the_bundled_architecture():
    # The bundled model's weights load into a freshly built CNN and give the same logits:
    # build_cnn (used by train_example and the benchmarks) builds exactly that network.
    bundled = tf_keras.models.load_model(MODEL, compile=False)
    small = fashion_mnist.build_cnn(tf_keras)
    small.set_weights(bundled.get_weights())
    images = read_idx(os.path.join(EXAMPLE_DIR, "evaluation-images-idx3-ubyte.gz"))[:32]
    x = images[..., None].astype(np.float32) / 255.0
    np.testing.assert_allclose(small.predict(x, verbose=0), bundled.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)
    assert small.count_params() == 131370  # the README's figure
    wide = fashion_mnist.build_cnn(tf_keras, widths=(32, 64, 128), dense=256, name="w")
    # 3x3 convs without bias + BatchNorm (4 per channel), a 3x3x128 → 256 → 10 head.
    convs = 9 * (1 * 32 + 32 * 64 + 64 * 128) + 4 * (32 + 64 + 128)
    assert wide.count_params() == convs + (3 * 3 * 128 * 256 + 256) + (256 * 10 + 10)


def test_calibration_probe_reports_memory_and_time(tiny_keras_path, tmp_path):
    from benchmarks.benchmark_ptq import calibration_probe

    x, _ = tiny_data(30)
    images = tmp_path / "t-images-idx3-ubyte.gz"
    write_idx(str(images), (x[..., 0] * 255).astype(np.uint8))
    probe = calibration_probe(tiny_keras_path, str(images), 10)
    assert probe["num_samples"] == 10 and probe["float_ops"] == 0
    assert probe["peak_rss_during_convert_mb"] >= probe["rss_before_convert_mb"] > 0
    assert probe["process_max_rss_mb"] >= probe["peak_rss_during_convert_mb"] * 0.99
    assert probe["calibrate_and_convert_seconds"] > 0


@pytest.mark.slow
def test_train_example_writes_model_and_slices(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.train_example", "--epochs", "1",
         "--out_dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-2000:]
    assert os.path.getsize(tmp_path / "fashion_mnist_cnn.keras") < 1024 * 1024
    assert read_idx(str(tmp_path / "calibration-images-idx3-ubyte.gz")).shape == (
        500, 28, 28)


@pytest.mark.slow
def test_benchmark_ptq_writes_json(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.benchmark_ptq", "--out", str(tmp_path), "--epochs", "1",
         "--latency_runs", "5", "--num_calibration_samples", "100", "--skip_mobilenet"],
        cwd=REPO, capture_output=True, text=True, timeout=3000)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.load(open(tmp_path / "benchmark_ptq.json"))
    assert summary["evaluation_samples"] == 10000
    assert set(summary["modes"]) == {"float32", "float16", "dynamic", "int8", "int16x8"}
    assert [p["num_samples"] for p in summary["calibration_probes"]] == [100, 1000]
