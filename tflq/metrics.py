"""Error metrics between a reference (float) output and a quantized one.

Pure numpy; every function takes arrays shaped ``(batch, ...)``. :class:`Comparison`
accumulates the same metrics over a stream of batches without keeping the outputs.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["sqnr_db", "cosine_similarity", "top1", "accuracy", "top1_agreement", "Comparison",
           "PerOutput"]


def _check_pair(reference: np.ndarray, test: np.ndarray):
    reference = np.asarray(reference, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    if reference.shape != test.shape:
        raise ValueError(
            f"Outputs differ in shape: reference {reference.shape}, test {test.shape}."
        )
    return reference, test


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio 10·log10(Σref² / Σ(ref − test)²) in dB.

    ``inf`` when the outputs are identical.
    """
    reference, test = _check_pair(reference, test)
    noise = float(np.sum((reference - test) ** 2))
    signal = float(np.sum(reference**2))
    return _sqnr_from_sums(signal, noise)


def _sqnr_from_sums(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def cosine_similarity(reference: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Per-sample cosine similarity of the flattened outputs (1.0 for two zero vectors)."""
    reference, test = _check_pair(reference, test)
    a = reference.reshape(len(reference), -1)
    b = test.reshape(len(test), -1)
    dot = np.sum(a * b, axis=1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = norms == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(both_zero, 1.0, dot / np.where(both_zero, 1.0, norms))
    return cos


def top1(outputs: np.ndarray) -> np.ndarray:
    """Arg-max class per sample of ``(batch, classes)`` outputs."""
    outputs = np.asarray(outputs)
    return np.argmax(outputs.reshape(len(outputs), -1), axis=1)


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Share of samples whose arg-max equals the label."""
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(outputs):
        raise ValueError(f"{len(outputs)} outputs but {len(labels)} labels.")
    return float(np.mean(top1(outputs) == labels))


def top1_agreement(reference: np.ndarray, test: np.ndarray) -> float:
    """Share of samples whose arg-max class is the same in both outputs."""
    reference, test = _check_pair(reference, test)
    return float(np.mean(top1(reference) == top1(test)))


class Comparison:
    """Streams batches of (reference, test, labels) and reports the metrics at the end.

    Classification metrics use output ``primary`` (the first by default); SQNR, cosine and
    max abs error use every output, flattened per sample.
    """

    def __init__(self, primary: int = 0):
        self.primary = primary
        self.count = 0
        self.correct = 0
        self.labelled = 0
        self.agree = 0
        self.signal = 0.0
        self.noise = 0.0
        self.cosine_sum = 0.0
        self.max_abs = 0.0

    def update(self, reference: list[np.ndarray], test: list[np.ndarray],
               labels: np.ndarray | None = None) -> None:
        ref_flat = np.concatenate([np.reshape(r, (len(r), -1)) for r in reference], axis=1)
        test_flat = np.concatenate([np.reshape(t, (len(t), -1)) for t in test], axis=1)
        ref_flat, test_flat = _check_pair(ref_flat, test_flat)
        n = len(ref_flat)
        self.count += n
        p = self.primary
        self.agree += int(np.sum(top1(reference[p]) == top1(test[p])))
        if labels is not None:
            self.correct += int(np.sum(top1(test[p]) == np.asarray(labels).reshape(-1)))
            self.labelled += n
        self.signal += float(np.sum(ref_flat**2))
        self.noise += float(np.sum((ref_flat - test_flat) ** 2))
        self.cosine_sum += float(np.sum(cosine_similarity(ref_flat, test_flat)))
        if n:
            self.max_abs = max(self.max_abs, float(np.max(np.abs(ref_flat - test_flat))))

    def result(self) -> dict:
        if self.count == 0:
            raise RuntimeError("Comparison.result() called before any update().")
        return {
            "accuracy": self.correct / self.labelled if self.labelled else None,
            "top1_agreement": self.agree / self.count,
            "sqnr_db": _sqnr_from_sums(self.signal, self.noise),
            "cosine": self.cosine_sum / self.count,
            "max_abs_error": self.max_abs,
            "num_samples": self.count,
        }


class PerOutput:
    """:class:`Comparison` per output, by name, streamed over batches.

    Top-1 agreement and accuracy are reported for classification outputs only (None for
    regression outputs). With ``steps`` (each output's quantization step, or None for a float
    output), the share of values within ``slack`` steps of the reference is counted too.
    """

    def __init__(self, names, classification, steps=None, slack: float = 1.001):
        self.names, self.classification = list(names), list(classification)
        if len(self.classification) != len(self.names):
            raise ValueError(f"{len(self.classification)} kinds for {len(self.names)} outputs.")
        self.steps, self.slack = (list(steps) if steps is not None else None), slack
        self.comparisons = [Comparison() for _ in self.names]
        self.within = [0] * len(self.names)
        self.total = [0] * len(self.names)

    def update(self, reference: list[np.ndarray], test: list[np.ndarray],
               labels: list | None = None) -> None:
        """``labels``: one array (or None) per output, or None."""
        if not len(reference) == len(test) == len(self.names):
            raise ValueError(f"Expected {len(self.names)} outputs ({self.names}). Received: "
                             f"{len(reference)} reference and {len(test)} test outputs.")
        for i, comparison in enumerate(self.comparisons):
            label = labels[i] if labels is not None and self.classification[i] else None
            comparison.update([reference[i]], [test[i]], label)
            step = None if self.steps is None else self.steps[i]
            if step is not None:
                diff = np.abs(np.asarray(reference[i], np.float64) - np.asarray(test[i], np.float64))
                self.within[i] += int(np.sum(diff <= step * self.slack))
                self.total[i] += diff.size

    def within_share(self) -> float | None:
        """Share of all values (every output with a step) within one step; None without steps."""
        total = sum(self.total)
        return sum(self.within) / total if total else None

    def result(self) -> dict:
        found = {}
        for i, name in enumerate(self.names):
            r = self.comparisons[i].result()
            row = {"kind": "classification" if self.classification[i] else "regression",
                   "top1_agreement": r["top1_agreement"] if self.classification[i] else None,
                   "accuracy": r["accuracy"], "sqnr_db": r["sqnr_db"], "cosine": r["cosine"],
                   "max_abs_error": r["max_abs_error"]}
            if self.steps is not None:
                row["output_step"] = self.steps[i]
                row["within_1_lsb"] = self.within[i] / self.total[i] if self.total[i] else None
            found[name] = row
        return found
