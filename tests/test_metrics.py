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


def test_comparison_primary_output_counts_top1():
    rng = np.random.default_rng(3)
    boxes, classes = rng.normal(size=(12, 4)), rng.normal(size=(12, 3))
    test_classes = classes + rng.normal(scale=0.8, size=classes.shape)
    labels = rng.integers(0, 3, size=12)
    comparison = metrics.Comparison(primary=1)
    comparison.update([boxes, classes], [boxes, test_classes], labels)
    result = comparison.result()
    assert result["top1_agreement"] == pytest.approx(metrics.top1_agreement(classes, test_classes))
    assert result["accuracy"] == pytest.approx(metrics.accuracy(test_classes, labels))


def test_per_output_against_numpy():
    rng = np.random.default_rng(4)
    ref = [rng.normal(size=(20, 4)), rng.normal(size=(20, 2))]
    steps = [0.05, 0.1]
    test = [ref[0] + rng.normal(scale=0.04, size=(20, 4)), ref[1] + rng.normal(scale=0.2, size=(20, 2))]
    labels = [None, rng.integers(0, 2, size=20)]
    per = metrics.PerOutput(["boxes", "classes"], [False, True], steps)
    for s in (slice(0, 7), slice(7, 20)):
        per.update([r[s] for r in ref], [t[s] for t in test], [None, labels[1][s]])
    found = per.result()
    for i, name in enumerate(["boxes", "classes"]):
        assert found[name]["sqnr_db"] == pytest.approx(metrics.sqnr_db(ref[i], test[i]), rel=1e-9)
        assert found[name]["within_1_lsb"] == pytest.approx(
            np.mean(np.abs(ref[i] - test[i]) <= steps[i] * 1.001))
        assert found[name]["output_step"] == steps[i]
    assert found["boxes"]["top1_agreement"] is None and found["boxes"]["kind"] == "regression"
    assert found["classes"]["top1_agreement"] == pytest.approx(metrics.top1_agreement(ref[1], test[1]))
    assert found["classes"]["accuracy"] == pytest.approx(metrics.accuracy(test[1], labels[1]))
    total = sum(np.sum(np.abs(r - t) <= s * 1.001) for r, t, s in zip(ref, test, steps, strict=True))
    assert per.within_share() == pytest.approx(total / 120)
    with pytest.raises(ValueError, match="Expected 2 outputs"):
        per.update([ref[0]], [test[0]])
    with pytest.raises(ValueError, match="1 kinds for 2 outputs"):
        metrics.PerOutput(["a", "b"], [True])
