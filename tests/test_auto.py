"""tflq.ptq.auto.search keeps going when LiteRT cannot run one candidate's .tflite."""

import numpy as np
import pytest

from tflq.models import tf_keras, wrap_model
from tflq.options import ConvertOptions
from tflq.ptq import auto


def _model():
    tf_keras.utils.set_random_seed(0)
    inp = tf_keras.layers.Input((8, 8, 3), name="img")
    x = tf_keras.layers.Conv2D(4, 3, activation="relu")(inp)
    out = tf_keras.layers.Dense(3)(tf_keras.layers.GlobalAveragePooling2D()(x))
    return wrap_model(tf_keras.Model(inp, out))


def test_a_candidate_litert_cannot_run_is_recorded_and_skipped(tmp_path, monkeypatch):
    model = _model()
    rng = np.random.default_rng(0)
    samples = [{"img": rng.normal(size=(1, 8, 8, 3)).astype(np.float32)} for _ in range(10)]
    score = auto._score
    calls = []

    def failing_score(model, content, selection, num_threads):
        calls.append(len(calls))
        if len(calls) == 2:  # the second candidate (minmax)
            raise RuntimeError("failed to create XNNPACK runtime\nmore")
        return score(model, content, selection, num_threads)

    monkeypatch.setattr(auto, "_score", failing_score)
    candidates = {"converter": {}, "minmax": {"range_estimator": "minmax"}}
    conversion, record = auto.search(model, samples, ConvertOptions(), str(tmp_path), candidates)
    rows = {r["candidate"]: r for r in record["candidates"]}
    assert rows["minmax"]["error"] == "LiteRT could not run it: failed to create XNNPACK runtime"
    assert "sqnr_db" not in rows["minmax"] and "sqnr_db" in rows["converter"]
    assert record["winner"] == "converter"
    assert conversion.content[4:8] == b"TFL3"


def test_no_runnable_candidate_is_a_clear_error(tmp_path, monkeypatch):
    model = _model()
    samples = [{"img": np.zeros((1, 8, 8, 3), np.float32)} for _ in range(5)]

    def broken(*args):
        raise RuntimeError("cannot prepare")

    monkeypatch.setattr(auto, "_score", broken)
    with pytest.raises(ValueError, match="no candidate converted: converter: LiteRT could not run"):
        auto.search(model, samples, ConvertOptions(), str(tmp_path), {"converter": {}})
