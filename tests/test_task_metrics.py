"""tflq.task_metrics and tflq.output_gates: every task metric, streamed in uneven batches,
against references computed here another way (loops, sets, textbook formulas)."""

import math

import numpy as np
import pytest

from tflq import output_gates, task_metrics
from tflq.report import Gates
from tflq.task_metrics import OutputMetrics, OutputTask

BATCHES = (7, 1, 12, 20)  # uneven batch sizes: streaming must equal the whole-array value


def stream(task, reference, test, labels=None):
    found = OutputMetrics(task)
    start = 0
    for size in BATCHES:
        stop = start + size
        found.update(reference[start:stop], test[start:stop],
                     None if labels is None else labels[start:stop])
        start = stop
    assert start == len(reference)
    return found.result()


def common_reference(reference, test):
    r, t = reference.astype(np.float64), test.astype(np.float64)
    cosines = [float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)))
               for a, b in zip(r, t, strict=True)]
    return {"sqnr_db": 10 * math.log10(np.sum(r**2) / np.sum((r - t) ** 2)),
            "cosine": float(np.mean(cosines)), "max_abs_error": float(np.max(np.abs(r - t))),
            "mean_abs_error": float(np.mean(np.abs(r - t)))}


def check_common(found, reference, test):
    for key, value in common_reference(reference, test).items():
        assert found[key] == pytest.approx(value, rel=1e-9), key


def test_classification_top1_top5_and_accuracy():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(40, 12)).astype(np.float32)
    test = (reference + rng.normal(scale=0.6, size=reference.shape)).astype(np.float32)
    labels = rng.integers(0, 12, size=40)
    found = stream(OutputTask("logits", "classification", "test"), reference, test, labels)
    agree = top5 = correct = 0
    for r, t, y in zip(reference, test, labels, strict=True):
        order = sorted(range(12), key=lambda c: -t[c])
        agree += order[0] == int(np.argmax(r))
        top5 += int(np.argmax(r)) in order[:5]
        correct += order[0] == y
    assert found["top1_agreement"] == agree / 40 and 0 < agree < 40
    assert found["top5_agreement"] == top5 / 40 and top5 > agree
    assert found["accuracy"] == correct / 40
    check_common(found, reference, test)
    assert stream(OutputTask("logits", "classification", "test"), reference, test)[
        "accuracy"] is None


@pytest.mark.parametrize("threshold, scale", [(0.5, "probabilities"), (0.0, "logits")])
def test_multilabel_agreement_and_f1(threshold, scale):
    rng = np.random.default_rng(1)
    reference = rng.uniform(size=(40, 6, 5))
    if scale == "logits":
        reference = np.log(reference / (1 - reference))
    test = reference + rng.normal(scale=0.15, size=reference.shape)
    found = stream(OutputTask("onset", "multilabel", "test", threshold), reference, test)
    r, t = reference.ravel() > threshold, test.ravel() > threshold
    tp = sum(1 for a, b in zip(r, t, strict=True) if a and b)
    precision, recall = tp / t.sum(), tp / r.sum()
    assert found["f1"] == pytest.approx(2 * precision * recall / (precision + recall), rel=1e-12)
    assert found["agreement"] == pytest.approx(np.mean(r == t))
    assert found["threshold"] == threshold
    assert found["float_positives"] == r.sum() and found["quantized_positives"] == t.sum()
    check_common(found, reference, test)


def test_multilabel_f1_is_one_when_neither_model_fires():
    reference = np.full((20, 3), 0.1)
    test = np.full((20, 3), 0.2)
    found = stream(OutputTask("x", "multilabel", "test", 0.5), np.vstack([reference] * 2),
                   np.vstack([test] * 2))
    assert found["f1"] == 1.0 and found["agreement"] == 1.0


def test_regression_relative_error_and_r2():
    rng = np.random.default_rng(2)
    reference = rng.normal(loc=3.0, size=(40, 2, 3))
    test = reference + rng.normal(scale=0.2, size=reference.shape)
    found = stream(OutputTask("value", "regression", "test"), reference, test)
    values = reference.ravel()
    mean = sum(values) / len(values)
    ss_tot = sum((v - mean) ** 2 for v in values)
    ss_res = sum((a - b) ** 2 for a, b in zip(values, test.ravel(), strict=True))
    assert found["r2"] == pytest.approx(1 - ss_res / ss_tot, rel=1e-9)
    assert found["relative_error"] == pytest.approx(
        np.abs(reference - test).sum() / np.abs(reference).sum(), rel=1e-12)
    check_common(found, reference, test)


def iou_by_hand(a, b):
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(width, 0) * max(height, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def test_box_iou_and_greedy_matching():
    a = np.array([[0, 0, 2, 2], [10, 10, 12, 12.0]])
    b = np.array([[11, 11, 13, 13], [1, 1, 3, 3.0], [0, 0, 2, 2.0]])
    found = task_metrics.box_iou(a, b)
    assert found[0, 1] == pytest.approx(1 / 7) and found[0, 2] == 1.0
    assert found[1, 0] == pytest.approx(1 / 7) and found[1, 2] == 0.0
    assert task_metrics.greedy_match(found) == [(0, 2, 1.0), (1, 0, pytest.approx(1 / 7))]
    assert task_metrics.box_iou(np.array([[2, 2, 0, 0.0]]), a)[0, 0] == 0.0  # no area


def test_detection_matches_boxes_in_any_order_and_scores():
    rng = np.random.default_rng(3)
    corners = rng.uniform(0, 10, size=(40, 5, 2))
    sizes = rng.uniform(1, 4, size=(40, 5, 2))
    boxes = np.concatenate([corners, corners + sizes], axis=2)
    scores = rng.uniform(size=(40, 5, 3))
    reference = np.concatenate([boxes, scores], axis=2)
    shifted = boxes + rng.normal(scale=0.3, size=boxes.shape)
    noisy_scores = scores + rng.normal(scale=0.2, size=scores.shape)
    order = rng.permutation(5)  # the quantized model lists its boxes in another order
    test = np.concatenate([shifted, noisy_scores], axis=2)[:, order]
    found = stream(OutputTask("boxes", "detection", "test"), reference, test)
    ious, matched, same = [], 0, 0
    for i in range(40):
        for k in range(5):  # boxes move little: each float box's partner is its own box
            j = int(np.where(order == k)[0][0])
            value = iou_by_hand(reference[i, k], test[i, j])
            ious.append(value)
            matched += value >= 0.5
            same += np.argmax(reference[i, k, 4:]) == np.argmax(test[i, j, 4:])
    assert found["mean_iou"] == pytest.approx(np.mean(ious), rel=1e-9)
    assert found["matched_at_50"] == matched / 200
    assert found["score_agreement"] == same / 200
    boxes_only = stream(OutputTask("boxes", "detection", "test"), boxes, shifted)
    assert boxes_only["score_agreement"] is None
    assert boxes_only["mean_iou"] == pytest.approx(np.mean(ious), rel=1e-9)


def test_detection_refuses_fewer_than_4_values():
    with pytest.raises(ValueError, match="4 box coordinates"):
        OutputMetrics(OutputTask("b", "detection", "t")).update(np.zeros((2, 3)), np.zeros((2, 3)))


def test_segmentation_pixel_agreement_and_miou():
    rng = np.random.default_rng(4)
    reference = rng.normal(size=(40, 6, 5, 4))
    test = reference + rng.normal(scale=0.5, size=reference.shape)
    found = stream(OutputTask("mask", "segmentation", "test"), reference, test)
    r, t = reference.argmax(-1).ravel(), test.argmax(-1).ravel()
    ious = []
    for c in range(4):
        in_r = {i for i, v in enumerate(r) if v == c}
        in_t = {i for i, v in enumerate(t) if v == c}
        if in_r | in_t:
            ious.append(len(in_r & in_t) / len(in_r | in_t))
    assert found["miou"] == pytest.approx(np.mean(ious), rel=1e-12)
    assert found["pixel_agreement"] == pytest.approx(np.mean(r == t))
    assert found["classes_present"] == len(ious)


def test_one_channel_segmentation_thresholds():
    reference = np.array([[[0.9], [0.2]], [[0.6], [0.1]]] * 20)
    test = np.array([[[0.8], [0.7]], [[0.4], [0.1]]] * 20)
    found = stream(OutputTask("mask", "segmentation", "t", 0.5), reference, test)
    # positions: (1,1) agree, (0,1) disagree, (1,0) disagree, (0,0) agree
    assert found["pixel_agreement"] == 0.5
    assert found["miou"] == pytest.approx(np.mean([1 / 3, 1 / 3]))


def test_identical_outputs_give_infinite_sqnr_and_perfect_metrics():
    x = np.random.default_rng(5).uniform(size=(40, 8))
    for task in task_metrics.TASKS:
        values = x if task != "detection" else np.sort(x.reshape(40, 2, 4), axis=-1)
        found = stream(OutputTask("o", task, "t", 0.5), values, values)
        assert found["sqnr_db"] == math.inf and found["max_abs_error"] == 0.0
        for key in task_metrics.TASK_METRICS[task]:
            if found.get(key) is not None:
                expected = 0.0 if key == "relative_error" else 1.0
                assert found[key] == pytest.approx(expected), (task, key)


def test_result_before_update_is_a_runtime_error():
    with pytest.raises(RuntimeError, match="before any update"):
        OutputMetrics(OutputTask("o", "regression", "t")).result()


def test_shape_mismatch_names_the_output():
    with pytest.raises(ValueError, match="Output 'o' differs in shape"):
        OutputMetrics(OutputTask("o", "regression", "t")).update(np.zeros((2, 3)), np.zeros((2, 4)))


@pytest.mark.parametrize("name, shape, activation, outputs, task, reason", [
    ("probs", (None, 10), "softmax", 1, "classification", "softmax over the last axis"),
    ("seg", (None, 8, 8, 3), "softmax", 1, "segmentation", "softmax over the last axis at every"),
    ("onset", (None, 172, 88), "sigmoid", 3, "multilabel", "sigmoid: independent probabilities"),
    ("boxes", (None, 10, 4), "linear", 2, "detection", "4 values per row and named as boxes"),
    ("bbox", (None, 4), None, 2, "detection", "4 values per sample"),
    ("value", (None, 1), "linear", 1, "regression", "one value per sample"),
    ("depth", (None, 8, 8, 1), "relu", 1, "regression", "relu output"),
    ("logits", (None, 10), "linear", 1, "classification", "the model's only output"),
    ("class_logits", (None, 10), "linear", 2, "classification", "named as class scores"),
    ("embedding", (None, 10), "linear", 2, "regression", "not named as class scores"),
    ("seg_logits", (None, 8, 8, 5), None, 1, "segmentation", "final activation not found"),
    ("features", (None, 8, 8, 5), None, 1, "regression", "final activation not found"),
])
def test_infer_task_rules(name, shape, activation, outputs, task, reason):
    found = task_metrics.infer_task(name, shape, activation, outputs)
    assert found.task == task and reason in found.reason
    assert found.threshold == (0.5 if task == "multilabel" else None)


def test_choose_tasks_overrides_and_thresholds():
    found = task_metrics.choose_tasks(
        ["a", "b", "c"], [(None, 3), (None, 4, 2), (None, 5)], ["sigmoid", "linear", "softmax"],
        {"b": "multilabel", "c": "regression"})
    assert [(t.task, t.reason, t.threshold) for t in found] == [
        ("multilabel", "sigmoid: independent probabilities, threshold 0.5", 0.5),
        ("multilabel", "set by output_tasks", 0.0),  # logits: threshold 0
        ("regression", "set by output_tasks", None)]
    with pytest.raises(ValueError, match=r"names output\(s\) \['z'\] the model does not have"):
        task_metrics.choose_tasks(["a"], [(None, 3)], ["sigmoid"], {"z": "regression"})


def test_parse_and_normalize_output_tasks():
    assert task_metrics.parse_output_tasks(" contour=multilabel, onset = multilabel ,") == {
        "contour": "multilabel", "onset": "multilabel"}
    assert task_metrics.parse_output_tasks(None) == {}
    assert task_metrics.normalize_output_tasks({"b": "regression", "a": "detection"}) == (
        ("a", "detection"), ("b", "regression"))
    assert task_metrics.normalize_output_tasks([["a", "detection"]]) == (("a", "detection"),)
    assert task_metrics.normalize_output_tasks("a=segmentation") == (("a", "segmentation"),)


@pytest.mark.parametrize("text, message", [
    ("contour", "must read output=task"), ("=multilabel", "must read output=task"),
    ("a=multilabels", "Unknown task 'multilabels' for output 'a'"),
    ("a=regression,a=detection", "names output 'a' twice"),
])
def test_bad_output_tasks(text, message):
    with pytest.raises(ValueError, match=message):
        task_metrics.parse_output_tasks(text)


def test_bad_task_in_output_task():
    with pytest.raises(ValueError, match="Unknown task 'ranking'"):
        OutputTask("o", "ranking", "t")
    with pytest.raises(ValueError, match="output_tasks must be a mapping"):
        task_metrics.normalize_output_tasks(5)


ROWS = [{"mode": "int8", "top1_agreement": 0.9, "sqnr_db": 20.0, "accuracy": None,
         "per_output": {"onset": {"f1": 0.93, "sqnr_db": 12.0, "top1_agreement": None}}},
        {"mode": "float16", "top1_agreement": 1.0, "sqnr_db": 60.0, "accuracy": None,
         "per_output": {"onset": {"f1": 0.99, "sqnr_db": 50.0}}}]


def test_gate_rules_name_an_output_and_metric():
    rule = output_gates.parse_gate(" onset : f1 >= 0.95 ")
    assert (rule.output, rule.metric, rule.op, rule.value) == ("onset", "f1", ">=", 0.95)
    assert output_gates.check_rules([rule], ROWS) == [
        "int8: gate onset : f1 >= 0.95 failed: f1 = 0.93"]
    assert output_gates.check_rules([output_gates.parse_gate("onset:sqnr_db>10")], ROWS) == []
    assert output_gates.check_rules([output_gates.parse_gate("sqnr_db<30")], ROWS) == [
        "float16: gate sqnr_db<30 failed: sqnr_db = 60"]
    missing = output_gates.check_rules([output_gates.parse_gate("onset:top1_agreement>0.5"),
                                        output_gates.parse_gate("note:f1>0.5"),
                                        output_gates.parse_gate("accuracy>=0.5")], ROWS[:1])
    assert missing == ["int8: gate onset:top1_agreement>0.5: top1_agreement was not measured "
                       "(no labels, or the output is measured as another task)",
                       "int8: gate note:f1>0.5: no per-output metrics for output 'note'",
                       "int8: gate accuracy>=0.5: accuracy was not measured (no labels, or the "
                       "output is measured as another task)"]


@pytest.mark.parametrize("text, message", [
    ("onset:f1=>0.9", "A gate must read"), ("f1", "A gate must read"),
    ("onset:f1>=high", "A gate must read"), ("onset:iou>=0.5", "Unknown gate metric 'iou'"),
    ("f1>=0.9", "Unknown gate metric 'f1' for a mode row"), ("", "A gate must read"),
])
def test_malformed_gates(text, message):
    with pytest.raises(ValueError, match=message):
        output_gates.parse_gate(text)
    with pytest.raises(ValueError, match=message):
        Gates(gate=(text,))


def test_gates_keep_the_simple_gates_and_add_rules():
    gates = Gates(min_agreement=0.95, gate="onset:f1>=0.95")
    assert gates.gate == ("onset:f1>=0.95",) and gates.any_set
    assert gates.to_dict() == {"max_accuracy_drop": None, "min_agreement": 0.95,
                               "gate": ["onset:f1>=0.95"]}
    assert gates.check(ROWS) == ["int8: gate onset:f1>=0.95 failed: f1 = 0.93",
                                 "int8: top-1 agreement 0.9000 < 0.95"]
    assert Gates(**gates.to_dict()) == gates  # JSON round trip (batch workers, from_dict)
