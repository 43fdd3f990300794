"""Output heads of a model being trained: which loss each output gets.

A *classification* head (``kl``) learns from integer class labels through sparse categorical
cross-entropy and from a teacher through T²·KL(softmax(t/T) ‖ softmax(s/T)); a *regression*
head (``mse``) learns from float targets and from a teacher through the mean squared error.
The kind of each output is inferred (:func:`infer_heads`) and can be set per output name
(``--output_losses 'boxes=mse,classes=kl'``). Labels come per output name from an ``.npz``
(``y_<output name>``; a single-output model keeps ``y``), see :func:`match_labels`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["HEAD_KINDS", "Head", "parse_output_losses", "check_output_losses",
           "normalize_output_losses", "infer_heads",
           "match_labels", "primary_head"]

HEAD_KINDS = ("kl", "mse")  # classification (cross-entropy / KL), regression (MSE)
# A linear output with more than one value whose name says it scores classes is taken as logits.
_CLASS_NAME = re.compile(r"logit|class|cls|prob|score|label", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Head:
    """One model output and its loss.

    Attributes:
      name: the output's Keras name (the layer that produces it).
      kind: ``kl`` (classification) or ``mse`` (regression).
      softmax: the output holds probabilities (a softmax layer), not logits.
      reason: why this kind was chosen (for the report).
    """

    name: str
    kind: str
    softmax: bool
    reason: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_output_losses(text: str | None) -> dict[str, str]:
    """``'boxes=mse,classes=kl'`` → ``{"boxes": "mse", "classes": "kl"}`` (None/empty → {}).

    Raises:
      ValueError: an item that is not ``name=kind`` or a kind not in :data:`HEAD_KINDS`.
    """
    found = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, kind = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"output_losses items must read name=kind (kinds: {list(HEAD_KINDS)})."
                             f" Received: {item.strip()!r}")
        found[name.strip()] = kind.strip()
    check_output_losses(found)
    return found


def check_output_losses(losses: Mapping[str, str]) -> None:
    """Raises ValueError for a kind not in :data:`HEAD_KINDS`."""
    for name, kind in losses.items():
        if kind not in HEAD_KINDS:
            raise ValueError(f"Unknown output loss {kind!r} for output {name!r}. "
                             f"Available: {list(HEAD_KINDS)} (kl: classification, mse: regression)")


def normalize_output_losses(value) -> tuple:
    """A job's ``output_losses`` as sorted ``(name, kind)`` pairs, from a mapping, a
    ``"name=kind,..."`` string or pairs; kinds checked."""
    if isinstance(value, str):
        value = parse_output_losses(value)
    pairs = dict(value.items() if isinstance(value, Mapping) else (tuple(p) for p in value))
    check_output_losses(pairs)
    return tuple(sorted(pairs.items()))


def _producer(model, index: int):
    layer = model.get_layer(model.output_names[index])
    return getattr(layer, "layer", layer)  # a QAT/pruning wrapper's inner layer


def _is_softmax(layer) -> bool:
    if type(layer).__name__ == "Softmax":
        return True
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", "") == "softmax" or activation == "softmax"


def infer_heads(model, overrides: Mapping[str, str] | None = None,
                labels: Sequence[np.ndarray] | None = None) -> list[Head]:
    """The loss of every output of a tf_keras model, in output order.

    Rules, first match wins: an entry of ``overrides`` (by output name); one value per sample
    → ``mse``; a softmax output → ``kl``; labels given for the output → ``kl`` for integer
    class labels of shape (N,), ``mse`` for float targets shaped like the output; another
    activation (sigmoid, ReLU, …) → ``mse``; a linear output with more than one value → ``kl``
    when it is the model's only output (tflq's convention: models output logits) or its name
    says it scores classes (logit, class, cls, prob, score, label), otherwise ``mse``.

    Raises:
      ValueError: an override names no output of the model; labels of an ``mse`` output not
        shaped like the output.
    """
    overrides = dict(overrides or {})
    check_output_losses(overrides)
    names = list(model.output_names)
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(f"output_losses names output(s) {unknown} the model does not have. "
                         f"Model outputs: {names}")
    heads = []
    for i, name in enumerate(names):
        layer = _producer(model, i)
        softmax = _is_softmax(layer)
        size = model.outputs[i].shape[-1]
        activation = getattr(getattr(layer, "activation", None), "__name__", "linear")
        label = None if labels is None or labels[i] is None else np.asarray(labels[i])
        if name in overrides:
            kind, reason = overrides[name], "set by output_losses"
        elif size is not None and size <= 1:
            kind, reason = "mse", "one value per sample"
        elif softmax:
            kind, reason = "kl", "softmax output"
        elif label is not None and label.dtype.kind in "iu" and label.ndim == 1:
            kind, reason = "kl", "integer class labels"
        elif label is not None and label.dtype.kind == "f":
            kind, reason = "mse", "float targets"
        elif activation != "linear":
            kind, reason = "mse", f"{activation} output"
        elif len(names) == 1:
            kind, reason = "kl", "the model's only output, taken as logits"
        elif _CLASS_NAME.search(name):
            kind, reason = "kl", "linear output named as class scores, taken as logits"
        else:
            kind, reason = "mse", "linear output not named as class scores"
        if kind == "mse" and label is not None:
            _check_targets(name, label, tuple(model.outputs[i].shape[1:]))
        heads.append(Head(name, kind, softmax, reason))
    return heads


def _check_targets(name: str, label: np.ndarray, sample_shape: tuple) -> None:
    """An ``mse`` output learns from targets shaped like its output (a vector of one value
    per sample may drop the last axis); anything else fails inside ``fit``."""
    if label.ndim == 1 and sample_shape in ((1,), ()):
        return
    got = label.shape[1:]
    if len(got) != len(sample_shape) or any(e is not None and e != g
                                            for e, g in zip(sample_shape, got, strict=False)):
        expected = "".join(f", {'?' if e is None else e}" for e in sample_shape)
        raise ValueError(
            f"Output {name!r} learns by mse from targets shaped like the output (N{expected}); "
            f"its labels have shape {label.shape}. Class indices need the kl loss "
            f"(output_losses '{name}=kl').")


def match_labels(y, output_names: Sequence[str], source: str,
                 aliases: Sequence[str] = ()) -> list[np.ndarray] | None:
    """Labels per output, in output order: None (no labels), or one array per output.

    Args:
      y: what :func:`tflq.sampling.load_arrays` read: None, the ``y`` array, or
        ``{output name: array}`` from ``y_<output name>`` arrays.
      output_names: the model's Keras output names.
      source: the data file (for errors).
      aliases: other names of the outputs, same order (the .tflite signature's names).

    Raises:
      ValueError: labels that do not name the model's outputs, or labels for some outputs only.
    """
    if y is None:
        return None
    names = list(output_names)
    if not isinstance(y, Mapping):
        if len(names) > 1:
            raise ValueError(f"Data {source!r} has one label array 'y' but the model has outputs "
                             f"{names}: store labels per output as "
                             f"{', '.join('y_' + n for n in names)} (or none to distill from a "
                             "teacher).")
        return [np.asarray(y)]
    by_name = {}
    for key, value in y.items():
        if key in names:
            by_name[key] = value
        elif key in aliases:
            by_name[names[list(aliases).index(key)]] = value
        else:
            raise ValueError(f"Data {source!r} has labels 'y_{key}' for no output of the model. "
                             f"Model outputs: {names}")
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(f"Data {source!r} has labels for output(s) {sorted(by_name)} but not "
                         f"for {missing}: give y_<output name> for every output, or none (then "
                         "a teacher supplies every target).")
    return [np.asarray(by_name[n]) for n in names]


def primary_head(heads: Sequence[Head]) -> int:
    """Index of the output whose top-1 class the reports count (accuracy, agreement): the
    first classification head, else output 0."""
    return next((i for i, h in enumerate(heads) if h.kind == "kl"), 0)
