"""Data sources held in memory, and the :class:`DataSource` protocol every source follows.

A notebook user has the data in hand: numpy arrays, a dict of arrays by input name, an
``(x, y)`` tuple, a ``tf.data.Dataset`` (batched or not) or a function yielding samples.
Each becomes a :class:`DataSource` like a file does, so the same checks (shape, dtype,
NaN/Inf, value range in :mod:`tflq.sampling`), the same errors and the same streaming apply:
a Dataset or a function is read sample by sample on every pass, never materialized.

No TensorFlow import here: a ``tf.data.Dataset`` is recognised by its type's module and read
through its own ``as_numpy_iterator``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from tflq.factories import call_factory, iterate_factory
from tflq.signature import TensorSpec

__all__ = ["Sample", "DataSource", "CallableSource", "ArraysSource", "DatasetSource",
           "is_in_memory", "is_keras_model", "describe", "open_in_memory"]

Sample = tuple[int, dict[str, np.ndarray], "int | None"]

IN_MEMORY_MODEL = "<in-memory model>"


class DataSource:
    """Base class: a finite, re-iterable stream of samples."""

    description = "data"
    has_labels = False

    def __len__(self) -> int:
        raise NotImplementedError

    def iter_samples(self, indices: Sequence[int] | None = None) -> Iterator[Sample]:
        """Yields ``(index, inputs, label)`` for the sorted ``indices`` (all if None)."""
        raise NotImplementedError


def _label(value, where: str) -> int | None:
    if value is None:
        return None
    array = np.asarray(value)
    if array.ndim != 0 or array.dtype.kind not in "iubf":
        raise ValueError(f"{where}: a label must be one class index (an integer). Received: "
                         f"shape {array.shape}, dtype {array.dtype.name}; one-hot labels need "
                         "np.argmax(y, axis=-1) first.")
    return int(array)


def _select(items: Iterator[Sample], indices: Sequence[int] | None) -> Iterator[Sample]:
    """The items whose index is in the sorted ``indices`` (all if None), streaming."""
    if indices is None:
        yield from items
        return
    wanted = iter(indices)
    target = next(wanted, None)
    for item in items:
        if target is None:
            return
        if item[0] == target:
            yield item
            target = next(wanted, None)


class CallableSource(DataSource):
    """A function returning an iterable of samples, called again for every pass.

    Each item is an array (single-input model), a dict keyed by input name, or a tuple
    ``(inputs, label)``.
    """

    def __init__(self, func: Callable, input_specs: Sequence[TensorSpec],
                 description: str | None = None):
        self.description = description or describe(func)
        self._func = func
        self._names = [s.name for s in input_specs]
        self._length = None
        first = next(iter(self._items()), None)
        self.has_labels = first is not None and first[2] is not None

    def parse(self, i: int, item) -> Sample:
        """One yielded item as ``(index, {input name: array}, label or None)``."""
        label = None
        where = f"{self.description}: sample {i}"
        if isinstance(item, tuple) and len(item) == 2:
            item, label = item
            label = _label(label, where)
        if isinstance(item, Mapping):
            inputs = {k: np.asarray(v) for k, v in item.items()}
        elif len(self._names) == 1:
            inputs = {self._names[0]: np.asarray(item)}
        else:
            raise ValueError(
                f"Data generator {self.description!r}, sample {i}: the model has inputs "
                f"{self._names}; yield a dict keyed by input name. "
                f"Received: {type(item).__name__}"
            )
        return i, inputs, label

    def _items(self):
        # What the user's function raises is the user's to fix (exit 2), named here.
        produced = call_factory(self._func, self.description, "Data generator")
        if isinstance(produced, (str, bytes)) or not hasattr(produced, "__iter__"):
            raise ValueError(f"Data generator {self.description!r} must return an iterable of "
                             f"samples. Received: {type(produced).__name__}")
        for i, item in enumerate(iterate_factory(lambda: produced, self.description,
                                                 "Data generator")):
            yield self.parse(i, item)

    def __len__(self):
        if self._length is None:
            self._length = sum(1 for _ in self._items())
        return self._length

    def iter_samples(self, indices=None):
        yield from _select(self._items(), indices)


def _match_inputs(columns: Mapping, names: list[str], what: str) -> dict:
    """``{input name: column}`` for a dict of columns (``x`` for a single input), or the
    error a file with the same arrays gets."""
    keys = list(columns)
    if len(names) == 1 and names[0] not in columns and "x" in columns:
        return {names[0]: columns["x"]}
    missing = [n for n in names if n not in columns]
    if missing:
        raise ValueError(
            f"{what} has no array for model input(s) {missing}. Expected 'x' (single input) "
            f"or one array per input name {names}. Received arrays: {sorted(map(str, keys))}"
        )
    return {n: columns[n] for n in names}


class ArraysSource(DataSource):
    """numpy arrays in memory: one array (single input), a dict by input name (``x`` for a
    single input, optional ``y``), or an ``(x, y)`` tuple of those."""

    def __init__(self, data, input_specs: Sequence[TensorSpec]):
        names = [s.name for s in input_specs]
        labels = None
        if isinstance(data, tuple):
            if len(data) != 2:
                raise ValueError(f"Expected data as x or an (x, y) tuple. Received: a tuple of "
                                 f"{len(data)} items")
            data, labels = data
        if isinstance(data, Mapping):
            if "y" in data:
                if labels is not None:
                    raise ValueError("Labels given twice: as y in the dict and as the tuple's "
                                     "second item.")
                labels = data["y"]
        elif len(names) != 1:
            raise ValueError(f"Data holds one array but the model has inputs {names}; pass a "
                             "dict with one array per input name.")
        else:
            data = {names[0]: data}
        columns = {str(k): _as_array(v, f"array {k!r}") for k, v in data.items()}
        self.description = describe((data, labels))
        self._columns = _match_inputs(columns, names, f"Data {self.description!r}")
        self._labels = None if labels is None else _as_array(labels, "labels y")
        if self._labels is not None and (self._labels.ndim != 1
                                         or self._labels.dtype.kind not in "iubf"):
            raise ValueError(
                f"Data {self.description!r}: labels y must be class indices of shape (N,). "
                f"Received: shape {self._labels.shape}, dtype {self._labels.dtype.name}; "
                "one-hot labels need np.argmax(y, axis=-1) first.")
        lengths = {n: len(a) for n, a in self._columns.items()}
        if self._labels is not None:
            lengths["y"] = len(self._labels)
        if len(set(lengths.values())) > 1:
            raise ValueError(f"Data {self.description!r}: arrays differ in length: {lengths}")
        self._length = next(iter(lengths.values()))
        self.has_labels = self._labels is not None

    def __len__(self):
        return self._length

    def iter_samples(self, indices=None):
        for i in range(self._length) if indices is None else indices:
            label = None if self._labels is None else int(self._labels[i])
            yield i, {n: np.asarray(a[i]) for n, a in self._columns.items()}, label


def _as_array(value, what: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.hasobject or array.ndim == 0:
        raise ValueError(f"Expected {what} as a numeric array of shape (N, ...). Received: "
                         f"{type(value).__name__} of shape {array.shape}, dtype {array.dtype}")
    return array


def _compatible(shape: Sequence, expected: Sequence) -> bool:
    return len(shape) == len(expected) and all(
        a is None or b is None or a == b for a, b in zip(shape, expected, strict=True))


def _is_batched(shape: Sequence, spec: TensorSpec) -> bool:
    """Whether a Dataset element of ``shape`` is a batch for ``spec`` (a sample of the
    input, or of the input without its trailing channel of 1, is not); a shape that fits
    neither is a batch when it has one more axis than the input (its samples then fail the
    shape check with the file's message)."""
    expected = tuple(spec.shape)
    squeezed = expected[:-1] if expected and expected[-1] == 1 else None
    if _compatible(shape, expected) or (squeezed is not None and _compatible(shape, squeezed)):
        return False
    rest = tuple(shape[1:])
    return (_compatible(rest, expected) or (squeezed is not None and _compatible(rest, squeezed))
            or len(shape) == len(expected) + 1)


class DatasetSource(CallableSource):
    """A ``tf.data.Dataset`` of samples or of batches, streamed on every pass.

    Elements are ``x``, ``{input name: x}``, or ``(inputs, label)``. Batching is read from
    the element shapes against the model's inputs. An unknown cardinality is counted by one
    streaming pass; an infinite dataset is refused (take a finite part with ``.take(n)``).
    The dataset must yield the same samples in the same order on every pass (no reshuffle),
    as a file does: calibration and evaluation samples are picked by index.
    """

    def __init__(self, dataset, input_specs: Sequence[TensorSpec]):
        cardinality = int(dataset.cardinality())
        if cardinality == -1:
            raise ValueError("Data <tf.data.Dataset> is infinite (repeat()); pass a finite "
                             "dataset, e.g. dataset.take(n).")
        self._dataset = dataset
        self._specs = list(input_specs)
        self._batched = self._detect_batched(dataset.element_spec)
        super().__init__(self._rows, input_specs, describe(dataset))
        if cardinality >= 0 and not self._batched:
            self._length = cardinality  # known: no counting pass

    def _detect_batched(self, element_spec) -> bool:
        paired = isinstance(element_spec, tuple) and len(element_spec) == 2
        labels_rank = getattr(getattr(element_spec[1], "shape", None), "rank", None) if paired \
            else None
        if labels_rank is not None:  # one class index per sample: rank 1 means a batch
            return labels_rank >= 1
        inputs = element_spec[0] if paired else element_spec
        if isinstance(inputs, Mapping):
            for spec in self._specs:
                if spec.name in inputs:
                    return _is_batched(tuple(inputs[spec.name].shape), spec)
            return False
        shape = getattr(inputs, "shape", None)
        return shape is not None and len(self._specs) == 1 and _is_batched(
            tuple(shape), self._specs[0])

    def _rows(self):
        for element in self._dataset.as_numpy_iterator():
            if not self._batched:
                yield element
                continue
            inputs, label = (element if isinstance(element, tuple) and len(element) == 2
                             else (element, None))
            count = len(next(iter(inputs.values())) if isinstance(inputs, Mapping) else inputs)
            for row in range(count):
                x = ({k: v[row] for k, v in inputs.items()} if isinstance(inputs, Mapping)
                     else inputs[row])
                yield x if label is None else (x, label[row])


def is_keras_model(obj) -> bool:
    """A Keras model object (tf_keras or Keras 3), told by its class without importing TF."""
    return any(cls.__name__ == "Model" and cls.__module__.split(".")[0] in ("keras", "tf_keras")
               for cls in type(obj).__mro__)


def _is_dataset(obj) -> bool:
    return any(cls.__name__ == "DatasetV2" and cls.__module__.startswith("tensorflow")
               for cls in type(obj).__mro__)


def is_in_memory(value) -> bool:
    """True for anything a job takes that is not a path, a ``module:function`` or None."""
    return value is not None and not isinstance(value, str)


def describe(value) -> str | None:
    """How reports name an input: the path itself, or ``<in-memory model>``,
    ``<numpy arrays (N samples)>``, ``<tf.data.Dataset>``, ``<generator make_samples>``."""
    if value is None or isinstance(value, str):
        return value
    if is_keras_model(value):
        return IN_MEMORY_MODEL
    if hasattr(value, "flavor") and isinstance(getattr(value, "source", None), str):
        return value.source  # a tflq.models.LoadedModel
    if _is_dataset(value):
        return "<tf.data.Dataset>"
    if isinstance(value, tuple) and len(value) == 2:
        value = value[0]
    if isinstance(value, Mapping):
        value = next((v for k, v in value.items() if k != "y"), None)
    if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        shape = np.shape(value)
        return f"<numpy arrays ({shape[0] if shape else 0} samples)>"
    if callable(value):
        return f"<generator {getattr(value, '__name__', type(value).__name__)}>"
    return f"<{type(value).__name__}>"


def open_in_memory(data, input_specs: Sequence[TensorSpec]) -> DataSource:
    """The :class:`DataSource` for in-memory data (see the module docstring).

    Raises:
      ValueError: an unsupported kind, a one-shot generator, wrong dict keys, arrays of
        different lengths, or labels that are not class indices.
    """
    if _is_dataset(data):
        return DatasetSource(data, input_specs)
    if isinstance(data, Iterator):
        raise ValueError(
            "Data is a generator, which can be read only once; tflq reads data in several "
            "passes (count, check, calibrate, evaluate). Pass the function that makes it "
            "instead (e.g. data=make_samples, or data=lambda: make_samples()).")
    if callable(data):
        return CallableSource(data, input_specs)
    if isinstance(data, (np.ndarray, Mapping, tuple)) or hasattr(data, "__array__"):
        return ArraysSource(data, input_specs)
    raise ValueError(
        "Expected data as a path, 'module:function', numpy arrays, a dict of arrays by input "
        "name, an (x, y) tuple, a tf.data.Dataset or a function yielding samples. "
        f"Received: {type(data).__module__}.{type(data).__name__}")
