"""Sampling, checking and batching samples of a :class:`tflq.data.DataSource`: sample
indices, per-sample conformance to the input signature (shape, dtype, NaN/Inf, value range),
the representative dataset for the converter, and evaluation batches."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from tflq.data import DataSource, open_data
from tflq.signature import TensorSpec

__all__ = ["RANGE_SLACK_SPANS", "sample_indices", "conform_sample", "RangeStats", "check_range",
    "scan", "representative_dataset", "load_arrays", "iter_batches", "first_samples"]

# A calibration value more than this many eval-data spans outside the eval-data range is
# "far outside": catches 0..255 data against a model fed 0..1, not ordinary variation.
RANGE_SLACK_SPANS = 1.0



def sample_indices(total: int, num_samples: int | None, seed: int) -> list[int]:
    """Sorted indices of ``num_samples`` items drawn without replacement (all if None)."""
    if num_samples is not None and num_samples < 1:
        raise ValueError(f"num_samples must be at least 1. Received: num_samples={num_samples}")
    if num_samples is None or num_samples >= total:
        return list(range(total))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(total, size=num_samples, replace=False))


def conform_sample(inputs: Mapping[str, np.ndarray], input_specs: Sequence[TensorSpec],
                   index: int, source: str) -> dict[str, np.ndarray]:
    """Checks one sample against the input signature; returns arrays ready to feed.

    A trailing channel axis of size 1 is added when that is the only difference
    (``(28, 28)`` data for a ``(28, 28, 1)`` input). Floats are cast to the input's float
    dtype; integer data for a float input is refused (normalize it first).

    Raises:
      ValueError: naming the source, input and sample index.
    """
    out = {}
    for spec in input_specs:
        where = f"{source}: sample {index}, input {spec.name!r}"
        if spec.name not in inputs:
            raise ValueError(f"{where}: missing. Received inputs: {sorted(inputs)}")
        x = np.asarray(inputs[spec.name])
        expected = spec.shape
        if x.shape != expected and x.ndim + 1 == len(expected) and expected[-1] == 1:
            x = x[..., None]
        shape_ok = x.ndim == len(expected) and all(
            e is None or e == d for e, d in zip(expected, x.shape, strict=True))
        if not shape_ok:
            raise ValueError(
                f"{where}: shape {tuple(x.shape)} does not match the model's "
                f"{tuple('?' if e is None else e for e in expected)}."
            )
        want = np.dtype(spec.dtype)
        if want.kind == "f":
            if x.dtype.kind != "f":
                raise ValueError(
                    f"{where}: dtype {x.dtype.name} but the model expects {want.name}; "
                    "convert and scale the data to floats the way the model was trained."
                )
            if not np.all(np.isfinite(x)):
                bad = "NaN" if np.isnan(x).any() else "Inf"
                raise ValueError(f"{where}: contains {bad}.")
            x = x.astype(want, copy=False)
        elif want.kind in "iu":
            if x.dtype.kind not in "iu":
                raise ValueError(f"{where}: dtype {x.dtype.name} but the model expects {want.name}.")
            info = np.iinfo(want)
            if x.size and (x.min() < info.min or x.max() > info.max):
                raise ValueError(f"{where}: values do not fit {want.name}.")
            x = x.astype(want, copy=False)
        else:
            if x.dtype != want:
                raise ValueError(f"{where}: dtype {x.dtype.name}, expected {want.name}.")
        out[spec.name] = x
    return out


@dataclasses.dataclass
class RangeStats:
    """Running min/max per input over a data set."""

    low: dict[str, float] = dataclasses.field(default_factory=dict)
    high: dict[str, float] = dataclasses.field(default_factory=dict)

    def update(self, inputs: Mapping[str, np.ndarray]) -> None:
        for name, x in inputs.items():
            if x.size == 0 or x.dtype.kind not in "fiu":
                continue
            lo, hi = float(np.min(x)), float(np.max(x))
            self.low[name] = min(lo, self.low.get(name, lo))
            self.high[name] = max(hi, self.high.get(name, hi))

    def to_dict(self) -> dict:
        return {n: [self.low[n], self.high[n]] for n in self.low}


def check_range(inputs: Mapping[str, np.ndarray], reference: RangeStats, index: int,
                source: str, reference_name: str) -> None:
    """Refuses a sample whose values lie far outside the reference data's range.

    "Far" is more than ``RANGE_SLACK_SPANS`` reference spans beyond either end: data in
    0..255 against a model validated on 0..1 fails, ordinary variation passes.
    """
    for name, x in inputs.items():
        if name not in reference.low or x.size == 0 or x.dtype.kind != "f":
            continue
        lo, hi = reference.low[name], reference.high[name]
        span = max(hi - lo, 1e-6)
        x_lo, x_hi = float(np.min(x)), float(np.max(x))
        if x_lo < lo - RANGE_SLACK_SPANS * span or x_hi > hi + RANGE_SLACK_SPANS * span:
            raise ValueError(
                f"{source}: sample {index}, input {name!r}: values in [{x_lo:.4g}, {x_hi:.4g}] "
                f"lie far outside the range [{lo:.4g}, {hi:.4g}] of {reference_name}; "
                "preprocess calibration data exactly like the model's inputs."
            )


def scan(source: DataSource, input_specs: Sequence[TensorSpec], indices: Sequence[int] | None,
         reference: RangeStats | None = None, reference_name: str = "",
         progress: Callable | None = None) -> RangeStats:
    """Checks every selected sample (one streaming pass) and returns its value range."""
    stats = RangeStats()
    items = source.iter_samples(indices)
    if progress is not None:
        items = progress(items)
    count = 0
    for index, inputs, _ in items:
        x = conform_sample(inputs, input_specs, index, source.description)
        if reference is not None:
            check_range(x, reference, index, source.description, reference_name)
        stats.update(x)
        count += 1
    if count == 0:
        raise ValueError(f"Data set {source.description!r} yielded no samples.")
    return stats


def representative_dataset(source: DataSource, input_specs: Sequence[TensorSpec],
                           indices: Sequence[int]) -> Callable[[], Iterator[dict]]:
    """The converter's ``representative_dataset``: yields one batch-1 dict per sample.

    Samples are fed by input name, never by position.
    """

    def generate():
        for index, inputs, _ in source.iter_samples(indices):
            x = conform_sample(inputs, input_specs, index, source.description)
            yield {name: value[None, ...] for name, value in x.items()}

    return generate


def load_arrays(spec, input_specs: Sequence[TensorSpec], limit: int | None = None,
                seed: int = 0, labelled: str | None = None
                ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """A data source (path, ``module:function`` or in memory, see
    :func:`tflq.data.open_data`) read into memory: ({input name: (N, ...)}, labels), at most
    ``limit`` samples drawn with ``seed``. Labels are None (none in the data), the ``y``
    labels, or ``{output name: (N, ...)}`` when an ``.npz`` holds ``y_<output name>`` arrays
    (labels per model output, any shape and dtype). ``labelled`` names the data for the error raised
    when it has no labels (None: labels are optional)."""
    source = open_data(spec, input_specs)
    indices = sample_indices(len(source), limit, seed) if limit else None
    per_output = getattr(source, "read_output_labels", lambda _: {})(indices)
    xs, ys = [], []
    for batch, labels in iter_batches(source, input_specs, 1024, indices):
        if labels is None and not per_output and labelled is not None:
            raise ValueError(f"{labelled} {source.description!r} has no labels; training needs "
                             "labelled data.")
        xs.append(batch)
        ys.append(labels)
    x = {name: np.concatenate([b[name] for b in xs]) for name in xs[0]}
    if per_output:
        return x, per_output
    return x, (None if ys[0] is None else np.concatenate(ys))


def iter_batches(source: DataSource, input_specs: Sequence[TensorSpec], batch_size: int,
                 indices: Sequence[int] | None = None
                 ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
    """Streams checked samples in batches: ``({name: (B, ...)}, labels or None)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1. Received: batch_size={batch_size}")
    names = [s.name for s in input_specs]
    buffer: list[dict[str, np.ndarray]] = []
    labels: list[int | None] = []

    def flush():
        batch = {n: np.stack([b[n] for b in buffer]) for n in names}
        y = None if any(v is None for v in labels) else np.asarray(labels, dtype=np.int64)
        return batch, y

    for index, inputs, label in source.iter_samples(indices):
        buffer.append(conform_sample(inputs, input_specs, index, source.description))
        labels.append(label)
        if len(buffer) == batch_size:
            yield flush()
            buffer, labels = [], []
    if buffer:
        yield flush()


def first_samples(batches: Callable[[], Iterator], max_samples: int):
    """The first ``max_samples`` samples of ``batches()`` (arrays, or dicts of arrays by
    input name) as one batch of the same kind; fewer if ``batches()`` holds fewer."""
    taken, count = [], 0
    for batch in batches():
        taken.append(batch)
        count += len(next(iter(batch.values())) if isinstance(batch, dict) else batch)
        if count >= max_samples:
            break
    if isinstance(taken[0], dict):
        return {k: np.concatenate([b[k] for b in taken])[:max_samples] for k in taken[0]}
    return np.concatenate(taken)[:max_samples]
