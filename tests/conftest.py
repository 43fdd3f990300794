"""Shared fixtures: tiny models of every flavor, small data files, the real data paths."""

from __future__ import annotations

import hashlib
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks.tiny import tiny_cnn, tiny_data  # noqa: E402,F401 (tests import tiny_data here)
from tflq.models import tf_keras  # noqa: E402

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_DIR = os.path.join(REPO, "pipelines", "example")

if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def fashion_file(name: str) -> str:
    """Path of a real Fashion-MNIST file; fails (never skips) when it is missing."""
    path = os.path.join(FASHION_DIR, name)
    if not os.path.exists(path):
        pytest.fail(f"real data missing: {path} (apt-get install -y dataset-fashion-mnist)")
    return path


def build_tiny_cnn(seed: int = 0):
    """An 8x8x1 → 3-class CNN, trained a few steps so calibration ranges are not degenerate."""
    model = tiny_cnn(seed)
    model.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = tiny_data(64, seed)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    return model


@pytest.fixture(scope="session")
def tiny_model():
    return build_tiny_cnn()


@pytest.fixture()
def qat_files(tmp_path, tiny_model):
    """A folder with tiny.keras, train.npz (120 labelled samples) and eval.npz (40)."""
    tiny_model.save(tmp_path / "tiny.keras")
    x, y = tiny_data(160, seed=3)
    np.savez(tmp_path / "train.npz", x=x[:120], y=y[:120])
    np.savez(tmp_path / "eval.npz", x=x[120:], y=y[120:])
    return tmp_path


@pytest.fixture(scope="session")
def tiny_keras_path(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny.keras"
    tiny_model.save(path)
    return str(path)


@pytest.fixture()
def tiny_npz(tmp_path):
    x, y = tiny_data(120, seed=1)
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y)
    return str(path)


def snapshot(folder) -> dict:
    """sha256 of every file under a folder (to prove nothing was written)."""
    result = {}
    if not os.path.exists(folder):
        return result
    for root, _, files in os.walk(folder):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                result[os.path.relpath(full, folder)] = hashlib.sha256(f.read()).hexdigest()
    return result
