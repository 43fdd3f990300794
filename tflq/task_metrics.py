"""What is measured for which model output: the task of each output (classification,
multilabel, regression, detection, segmentation), how it is inferred from the output's shape
and final activation, and the task metrics, streamed batch by batch.

Pure numpy, no TensorFlow. Every metric compares a quantized model's output with the float
model's output on the same batch (the float model is the reference); classification accuracy
also uses labels when there are some. Nothing is held across batches but sums, counts and
confusion matrices, so evaluation sets of any size fit in memory.

Tasks and their metrics (the keys of :meth:`OutputMetrics.result`):

- ``classification`` (one score vector per sample): ``top1_agreement`` (same arg-max as the
  float model), ``top5_agreement`` (the float model's top-1 class is among the quantized
  model's top 5), ``accuracy`` (arg-max equals the label; with labels only).
- ``multilabel`` (independent yes/no per element): ``agreement`` (share of elements on the
  same side of ``threshold``: 0.5 on probabilities, 0 on logits) and ``f1`` of the quantized
  model's positives against the float model's (2·TP / (2·TP + FP + FN); 1.0 when neither has
  a positive).
- ``regression``: ``relative_error`` (Σ|ref − q| / Σ|ref|) and ``r2`` against the float model
  (1 − Σ(ref − q)² / Σ(ref − mean(ref))², over every value).
- ``detection`` (boxes ``[N, K, 4]`` or ``[N, 4]`` as corner coordinates; columns after the
  4th, if any, are scores): the quantized boxes are matched one-to-one to the float boxes,
  greedily by IoU; ``mean_iou`` of the matched pairs over every float box (unmatched boxes
  count 0), ``matched_at_50`` (share of float boxes matched at IoU ≥ 0.5) and, with score
  columns, ``score_agreement`` (matched pairs whose arg-max score column agrees).
- ``segmentation`` (a class score vector per position, ``[N, …, C]``): ``pixel_agreement``
  (same arg-max class per position) and ``miou`` (mean over classes present in either model
  of the intersection over union of the positions each model gives that class).

Every task also gets ``sqnr_db``, ``cosine`` (mean per sample), ``max_abs_error`` and
``mean_abs_error``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["TASKS", "TASK_METRICS", "COMMON_METRICS", "OutputTask", "parse_output_tasks",
           "normalize_output_tasks", "check_output_names", "infer_task", "choose_tasks",
           "OutputMetrics", "box_iou", "greedy_match"]

TASKS = ("classification", "multilabel", "regression", "detection", "segmentation")
TASK_METRICS = {
    "classification": ("top1_agreement", "top5_agreement", "accuracy"),
    "multilabel": ("agreement", "f1"),
    "regression": ("relative_error", "r2"),
    "detection": ("mean_iou", "matched_at_50", "score_agreement"),
    "segmentation": ("pixel_agreement", "miou"),
}
COMMON_METRICS = ("sqnr_db", "cosine", "max_abs_error", "mean_abs_error")
MATCH_IOU = 0.5  # a detection box counts as found at this IoU (the PASCAL VOC threshold)
_BOX_NAME = re.compile(r"box|bbox|loc", re.IGNORECASE)
_CLASS_NAME = re.compile(r"logit|class|cls|prob|score|label|seg|mask", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class OutputTask:
    """The task one output is measured as, and why.

    Attributes:
      name: the output's name.
      task: one of :data:`TASKS`.
      reason: how the task was chosen (``set by output_tasks`` or the inference rule).
      threshold: multilabel (and one-channel segmentation) decision threshold: 0.5 on
        probabilities, 0.0 on logits; None for other tasks.
    """

    name: str
    task: str
    reason: str
    threshold: float | None = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"Unknown task {self.task!r} for output {self.name!r}. "
                             f"Available: {list(TASKS)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_output_tasks(text: str | None) -> dict[str, str]:
    """``'contour=multilabel,onset=multilabel'`` → ``{name: task}`` (None or empty → {}).

    Raises:
      ValueError: an item that is not ``name=task``, a task not in :data:`TASKS`, or an
        output named twice.
    """
    found: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, task = (part.strip() for part in item.partition("="))
        if not sep or not name or not task:
            raise ValueError(f"output_tasks items must read output=task (tasks: {list(TASKS)}). "
                             f"Received: {item.strip()!r}")
        if name in found:
            raise ValueError(f"output_tasks names output {name!r} twice. Received: {text!r}")
        found[name] = task
    _check_tasks(found)
    return found


def _check_tasks(tasks: Mapping[str, str]) -> None:
    for name, task in tasks.items():
        if task not in TASKS:
            raise ValueError(f"Unknown task {task!r} for output {name!r} in output_tasks. "
                             f"Available: {list(TASKS)}")


def normalize_output_tasks(value) -> tuple[tuple[str, str], ...]:
    """A job's ``output_tasks`` as sorted ``(name, task)`` pairs, from a mapping, a
    ``"name=task,..."`` string, pairs or None; tasks checked."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = parse_output_tasks(value)
    try:
        pairs = dict(value.items() if isinstance(value, Mapping) else (tuple(p) for p in value))
    except (TypeError, ValueError) as e:
        raise ValueError("output_tasks must be a mapping {output: task}, a string "
                         f"'output=task,...' or (output, task) pairs. Received: {value!r}") from e
    _check_tasks(pairs)
    return tuple(sorted(pairs.items()))


def check_output_names(named: Sequence[str], output_names: Sequence[str], what: str) -> None:
    """Raises ValueError when ``named`` holds a name that is not one of ``output_names``."""
    unknown = sorted(set(named) - set(output_names))
    if unknown:
        raise ValueError(f"{what} names output(s) {unknown} the model does not have. "
                         f"Model outputs: {list(output_names)}")


def infer_task(name: str, shape: Sequence, activation: str | None,
               num_outputs: int) -> OutputTask:
    """The task of an output from its shape ``(None, …)`` and final activation.

    Rules, first match wins: last axis of 4 and a name saying boxes (box, bbox, loc) →
    detection; softmax → classification for ``(N, C)``, segmentation for ``(N, …, C)``;
    sigmoid → multilabel at 0.5; one value per sample → regression; another activation (ReLU,
    tanh, …) → regression; linear ``(N, C)`` → classification (logits) when it is the model's
    only output or its name says class scores, linear ``(N, …, C)`` named as class scores or
    masks → segmentation; anything else → regression.

    Args:
      name: the output's name.
      shape: its shape, batch axis first (None where unknown); None when the graph could not
        be read.
      activation: ``softmax``, ``sigmoid``, ``linear``, another activation's name, or None
        when it could not be found (treated as linear).
      num_outputs: how many outputs the model has.
    """
    if shape is None:
        return OutputTask(name, "regression", "graph not readable: shape and activation "
                          "unknown (name the task with output_tasks)")
    rank = len(shape)
    last = shape[-1] if rank > 1 else 1
    size = math.prod(d for d in shape[1:] if d is not None) if rank > 1 else 1
    seen = activation or "linear"
    where = f"{activation} output" if activation else "final activation not found, taken as linear"
    if last == 4 and rank in (2, 3) and _BOX_NAME.search(name):
        return OutputTask(name, "detection", f"4 values per {'row' if rank == 3 else 'sample'} "
                          "and named as boxes")
    if seen in ("softmax", "log_softmax"):
        if rank == 2:
            return OutputTask(name, "classification", f"{seen} over the last axis")
        return OutputTask(name, "segmentation", f"{seen} over the last axis at every position "
                          f"of {tuple(shape[1:-1])}")
    if seen == "sigmoid":
        return OutputTask(name, "multilabel", "sigmoid: independent probabilities, threshold 0.5",
                          0.5)
    if size <= 1:
        return OutputTask(name, "regression", f"one value per sample ({where})")
    if seen != "linear":
        return OutputTask(name, "regression", f"{seen} output: values, not class scores")
    if rank == 2 and (num_outputs == 1 or _CLASS_NAME.search(name)):
        why = "the model's only output" if num_outputs == 1 else "named as class scores"
        return OutputTask(name, "classification", f"{where}, {why}: taken as logits")
    if rank > 2 and _CLASS_NAME.search(name):
        return OutputTask(name, "segmentation", f"{where} at every position, named as class "
                          "scores or masks: taken as logits")
    return OutputTask(name, "regression", f"{where}, not named as class scores")


def choose_tasks(names: Sequence[str], shapes: Sequence, activations: Sequence,
                 overrides: Mapping[str, str] | None = None) -> list[OutputTask]:
    """:func:`infer_task` for every output, except those ``overrides`` names (their threshold
    follows the activation: 0.5 after a sigmoid or softmax, otherwise 0).

    Raises:
      ValueError: an override names no output, or names an unknown task.
    """
    overrides = dict(overrides or {})
    _check_tasks(overrides)
    check_output_names(list(overrides), names, "output_tasks")
    found = []
    for name, shape, activation in zip(names, shapes, activations, strict=True):
        if name in overrides:
            task = overrides[name]
            probabilities = activation in ("sigmoid", "softmax")
            threshold = (0.5 if probabilities else 0.0) if task in (
                "multilabel", "segmentation") else None
            found.append(OutputTask(name, task, "set by output_tasks", threshold))
        else:
            found.append(infer_task(name, shape, activation, len(names)))
    return found


def _topk(x: np.ndarray, k: int) -> np.ndarray:
    k = min(k, x.shape[1])
    return np.argpartition(-x, k - 1, axis=1)[:, :k]


class _Classification:
    def __init__(self, task):
        self.count = self.agree = self.top5 = self.correct = self.labelled = 0

    def update(self, ref, test, labels):
        ref, test = ref.reshape(len(ref), -1), test.reshape(len(test), -1)
        expected = np.argmax(ref, axis=1)
        got = np.argmax(test, axis=1)
        self.count += len(ref)
        self.agree += int(np.sum(expected == got))
        self.top5 += int(np.sum(np.any(_topk(test, 5) == expected[:, None], axis=1)))
        if labels is not None:
            self.correct += int(np.sum(got == np.asarray(labels).reshape(-1)))
            self.labelled += len(ref)

    def result(self):
        return {"top1_agreement": self.agree / self.count, "top5_agreement": self.top5 / self.count,
                "accuracy": self.correct / self.labelled if self.labelled else None}


class _Multilabel:
    def __init__(self, task):
        self.threshold = 0.5 if task.threshold is None else task.threshold
        self.same = self.total = self.tp = self.fp = self.fn = 0

    def update(self, ref, test, labels):
        expected, got = ref > self.threshold, test > self.threshold
        self.same += int(np.sum(expected == got))
        self.total += expected.size
        self.tp += int(np.sum(expected & got))
        self.fp += int(np.sum(~expected & got))
        self.fn += int(np.sum(expected & ~got))

    def result(self):
        denominator = 2 * self.tp + self.fp + self.fn
        return {"agreement": self.same / self.total, "threshold": self.threshold,
                "f1": 2 * self.tp / denominator if denominator else 1.0,
                "float_positives": self.tp + self.fn, "quantized_positives": self.tp + self.fp}


class _Regression:
    def __init__(self, task):
        self.abs_diff = self.abs_ref = self.sq_diff = self.total = self.sum = self.sum_sq = 0.0

    def update(self, ref, test, labels):
        diff = ref - test
        self.abs_diff += float(np.sum(np.abs(diff)))
        self.abs_ref += float(np.sum(np.abs(ref)))
        self.sq_diff += float(np.sum(diff**2))
        self.total += ref.size
        self.sum += float(np.sum(ref))
        self.sum_sq += float(np.sum(ref**2))

    def result(self):
        spread = self.sum_sq - self.sum**2 / self.total
        relative = self.abs_diff / self.abs_ref if self.abs_ref else (
            0.0 if self.abs_diff == 0 else math.inf)
        r2 = 1.0 - self.sq_diff / spread if spread > 0 else (1.0 if self.sq_diff == 0 else -math.inf)
        return {"relative_error": relative, "r2": r2}


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` ``[K, 4]`` with every box of ``b`` ``[M, 4]`` (corner
    coordinates, either order of axes; a box with max < min has no area): ``[K, M]``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)

    def area(x):
        return np.prod(np.clip(x[:, 2:4] - x[:, :2], 0, None), axis=1)

    union = area(a)[:, None] + area(b)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def greedy_match(iou: np.ndarray) -> list[tuple[int, int, float]]:
    """One-to-one pairs ``(row, column, iou)`` taken greedily by the highest IoU left (IoU > 0)."""
    iou = np.array(iou, np.float64)
    pairs = []
    while iou.size and iou.max() > 0:
        i, j = np.unravel_index(int(np.argmax(iou)), iou.shape)
        pairs.append((int(i), int(j), float(iou[i, j])))
        iou[i, :] = -1.0
        iou[:, j] = -1.0
    return pairs


class _Detection:
    def __init__(self, task):
        self.boxes = self.iou_sum = self.matched = self.scored = self.score_same = 0

    def update(self, ref, test, labels):
        if ref.shape[-1] < 4:
            raise ValueError(f"A detection output needs 4 box coordinates on its last axis. "
                             f"Received: shape {ref.shape}")
        ref = ref.reshape(len(ref), -1, ref.shape[-1])
        test = test.reshape(len(test), -1, test.shape[-1])
        for expected, got in zip(ref, test, strict=True):
            pairs = greedy_match(box_iou(expected[:, :4], got[:, :4]))
            self.boxes += len(expected)
            self.iou_sum += sum(p[2] for p in pairs)
            self.matched += sum(p[2] >= MATCH_IOU for p in pairs)
            if expected.shape[-1] > 4:
                for i, j, _ in pairs:
                    self.scored += 1
                    self.score_same += int(np.argmax(expected[i, 4:]) == np.argmax(got[j, 4:]))

    def result(self):
        return {"mean_iou": self.iou_sum / self.boxes if self.boxes else None,
                "matched_at_50": self.matched / self.boxes if self.boxes else None,
                "score_agreement": self.score_same / self.scored if self.scored else None}


class _Segmentation:
    def __init__(self, task):
        self.threshold = 0.5 if task.threshold is None else task.threshold
        self.same = self.total = 0
        self.confusion = None

    def _classes(self, x):
        if x.shape[-1] == 1:
            return (x[..., 0] > self.threshold).astype(np.int64).ravel()
        return np.argmax(x, axis=-1).ravel()

    def update(self, ref, test, labels):
        expected, got = self._classes(ref), self._classes(test)
        classes = max(2, ref.shape[-1])
        if self.confusion is None:
            self.confusion = np.zeros((classes, classes), np.int64)
        self.confusion += np.bincount(expected * classes + got,
                                      minlength=classes * classes).reshape(classes, classes)
        self.same += int(np.sum(expected == got))
        self.total += expected.size

    def result(self):
        cm = self.confusion
        union = cm.sum(axis=0) + cm.sum(axis=1) - np.diag(cm)
        present = union > 0
        miou = float(np.mean(np.diag(cm)[present] / union[present])) if present.any() else 1.0
        return {"pixel_agreement": self.same / self.total, "miou": miou,
                "classes_present": int(present.sum())}


_ACCUMULATORS = {"classification": _Classification, "multilabel": _Multilabel,
                 "regression": _Regression, "detection": _Detection,
                 "segmentation": _Segmentation}


class OutputMetrics:
    """One output of one model against the float model's, streamed over batches: the common
    errors and the metrics of the output's task (see the module docstring)."""

    def __init__(self, task: OutputTask):
        self.task = task
        self.metric = _ACCUMULATORS[task.task](task)
        self.count = 0
        self.signal = self.noise = self.cosine_sum = self.abs_sum = 0.0
        self.values = 0
        self.max_abs = 0.0

    def update(self, reference: np.ndarray, test: np.ndarray, labels=None) -> None:
        """One batch: ``reference`` (float model) and ``test`` shaped ``(batch, …)``;
        ``labels`` (class labels) count for classification accuracy only."""
        ref = np.asarray(reference, np.float64)
        got = np.asarray(test, np.float64)
        if ref.shape != got.shape:
            raise ValueError(f"Output {self.task.name!r} differs in shape: reference "
                             f"{ref.shape}, test {got.shape}.")
        diff = ref - got
        flat_ref, flat_got = ref.reshape(len(ref), -1), got.reshape(len(got), -1)
        norms = np.linalg.norm(flat_ref, axis=1) * np.linalg.norm(flat_got, axis=1)
        dots = np.sum(flat_ref * flat_got, axis=1)
        self.cosine_sum += float(np.sum(np.where(norms == 0, 1.0, dots / np.where(
            norms == 0, 1.0, norms))))
        self.count += len(ref)
        self.signal += float(np.sum(ref**2))
        self.noise += float(np.sum(diff**2))
        self.abs_sum += float(np.sum(np.abs(diff)))
        self.values += diff.size
        if diff.size:
            self.max_abs = max(self.max_abs, float(np.max(np.abs(diff))))
        self.metric.update(ref, got, labels if self.task.task == "classification" else None)

    def result(self) -> dict:
        """``{"task", "reason", "sqnr_db", "cosine", "max_abs_error", "mean_abs_error",
        **task metrics}``."""
        if self.count == 0:
            raise RuntimeError("OutputMetrics.result() called before any update().")
        if self.noise == 0:
            sqnr = math.inf
        else:
            sqnr = -math.inf if self.signal == 0 else 10 * math.log10(self.signal / self.noise)
        return {"task": self.task.task, "reason": self.task.reason, "sqnr_db": sqnr,
                "cosine": self.cosine_sum / self.count, "max_abs_error": self.max_abs,
                "mean_abs_error": self.abs_sum / self.values if self.values else 0.0,
                **self.metric.result()}
