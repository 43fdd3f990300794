"""Metrics against hand-written numpy references."""

import math

import numpy as np
import pytest

from tflq import metrics


def test_sqnr_matches_numpy_formula():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(10, 5))
    noise = rng.normal(scale=0.01, size=(10, 5))
    expected = 10 * np.log10(np.sum(ref**2) / np.sum(noise**2))
    assert metrics.sqnr_db(ref, ref + noise) == pytest.approx(expected, rel=1e-12)


def test_sqnr_edge_cases():
    ref = np.ones((2, 3))
    assert metrics.sqnr_db(ref, ref) == math.inf
    assert metrics.sqnr_db(np.zeros((2, 3)), ref) == -math.inf


def test_cosine_similarity_per_sample():
    ref = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    test = np.array([[0.0, 1.0], [2.0, 2.0], [0.0, 0.0]])
    np.testing.assert_allclose(metrics.cosine_similarity(ref, test), [0.0, 1.0, 1.0])


def test_accuracy_and_agreement():
    ref = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    test = np.array([[0.2, 0.8], [0.1, 0.9], [0.4, 0.6], [0.6, 0.4]])
    assert metrics.top1_agreement(ref, test) == 0.75
    assert metrics.accuracy(test, np.array([1, 1, 0, 0])) == 0.75


def test_shape_mismatch_and_label_count():
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.sqnr_db(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="4 outputs but 3 labels"):
        metrics.accuracy(np.ones((4, 2)), np.array([0, 1, 0]))


def test_streaming_comparison_equals_whole_batch():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(37, 4)).astype(np.float32)
    test = ref + rng.normal(scale=0.2, size=ref.shape).astype(np.float32)
    labels = rng.integers(0, 4, size=37)
    comparison = metrics.Comparison()
    for start in range(0, 37, 10):
        s = slice(start, start + 10)
        comparison.update([ref[s]], [test[s]], labels[s])
    result = comparison.result()
    assert result["num_samples"] == 37
    assert result["accuracy"] == pytest.approx(metrics.accuracy(test, labels))
    assert result["top1_agreement"] == pytest.approx(metrics.top1_agreement(ref, test))
    assert result["sqnr_db"] == pytest.approx(metrics.sqnr_db(ref, test), rel=1e-9)
    assert result["cosine"] == pytest.approx(np.mean(metrics.cosine_similarity(ref, test)))
    assert result["max_abs_error"] == pytest.approx(np.max(np.abs(ref - test)), rel=1e-6)


def test_comparison_without_labels_and_before_update():
    comparison = metrics.Comparison()
    with pytest.raises(RuntimeError, match="before any update"):
        comparison.result()
    comparison.update([np.ones((2, 2))], [np.ones((2, 2))])
    assert comparison.result()["accuracy"] is None
