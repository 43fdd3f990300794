"""``--range_search``: activation ranges searched on the converter's own calibrated model
for the smallest output error, quantized by the converter's own quantizer.

The TFLite converter calibrates in two steps: it records each activation tensor's
min/max over the representative data into a float .tflite (``calibrate only``), then its
MLIR quantizer turns that into int8 (weights, biases and every requantization derived from
those ranges). tflq stops between the two steps and replaces the recorded ranges:

1. :func:`calibrate` returns the calibrated float .tflite; :func:`requantize` quantizes it
   with given ranges. With the converter's own ranges the result must compute exactly what
   the plain converter's int8 computes (:func:`check_requantize`): a difference is tflq's
   bug (:class:`tflq.keras3.RewriteError`, exit 1).
2. The float values of every ranged tensor are read from the calibrated model on the
   calibration samples; each range starts at a histogram estimator's choice (``percentile``
   by default, :mod:`tflq.ptq.ranges`).
3. Greedy coordinate search (:func:`search`): tensor by tensor, in graph order, the range is
   scaled by each of :data:`FACTORS` (never beyond the observed min/max, always containing
   0) and kept where the whole model's int8 output is closer to the float model's (output
   SQNR over all outputs) on *both* halves of the calibration samples (even and odd
   batches): a change that helps one half and hurts the other fits those samples, not the
   data. Model inputs and outputs keep the
   converter's ranges: clipping them changes what the model sees or says.

Unlike the histogram estimators, which minimise each tensor's own error, the search scores
what the error of each range does to the model's output: Sony MCT's threshold search and
AIMET's AutoQuant follow the same idea. Weights, biases and the op graph are the converter's.
"""

from __future__ import annotations

import numpy as np

from tflq import metrics
from tflq.options import ConvertOptions

__all__ = ["FACTORS", "STARTS", "MIN_GAIN_DB", "reference_of", "calibrate", "requantize",
           "check_requantize", "ranged_tensors", "tensor_values", "search"]

FACTORS = (0.35, 0.5, 0.7, 0.85, 1.2)


def calibrate(converter) -> bytes:
    """The calibrated float .tflite of a converter configured for int8 (min/max recorded in
    each activation tensor's quantization parameters)."""
    converter._experimental_calibrate_only = True
    return converter.convert()


def _io_type(options: ConvertOptions):
    from tflq.models import tf

    return tf.int8 if options.integer_io else tf.float32


def requantize(calibrated: bytes, options: ConvertOptions,
               ranges: dict[int, tuple[float, float]] | None = None) -> bytes:
    """The converter's int8 of a calibrated model, with ``ranges`` ({tensor index: (min,
    max)}) replacing the recorded ones."""
    from tensorflow.lite.python import convert as lite_convert

    content = calibrated
    if ranges:
        from tensorflow.lite.tools import flatbuffer_utils

        model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
        tensors = model.subgraphs[0].tensors
        for index, (lo, hi) in ranges.items():
            tensors[index].quantization.min = [float(lo)]
            tensors[index].quantization.max = [float(hi)]
        content = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    return lite_convert.mlir_quantize(content, not options.per_channel,
                                      input_data_type=_io_type(options),
                                      output_data_type=_io_type(options))


def _outputs(content: bytes, batches: list[dict], output_names) -> list[np.ndarray]:
    from tflq.interpreter import TfliteModel

    runner = TfliteModel(content, output_names)
    per_batch = [runner.run(batch) for batch in batches]
    return [np.concatenate([b[k] for b in per_batch]) for k in range(len(runner.output_names))]


def check_requantize(calibrated: bytes, converter_int8: bytes, options: ConvertOptions,
                     batches: list[dict], output_names, purpose: str = "--range_search") -> bytes:
    """Requantizes ``calibrated`` with its own ranges and checks that it computes exactly
    what ``converter_int8`` computes on ``batches``. Returns the requantized bytes.

    Raises:
      RewriteError: any output differs (tflq's bug, not the user's input).
    """
    from tflq.keras3 import RewriteError

    content = requantize(calibrated, options)
    ours_all = _outputs(content, batches, output_names)
    theirs_all = _outputs(converter_int8, batches, output_names)
    if len(ours_all) != len(theirs_all):
        raise RewriteError(f"{purpose}: the requantized model has {len(ours_all)} "
                           f"outputs, the converter's int8 {len(theirs_all)}. This is a bug "
                           f"in tflq.")
    for k, (ours, theirs) in enumerate(zip(ours_all, theirs_all, strict=True)):
        name = output_names[k] if output_names else k
        if ours.shape != theirs.shape or not np.array_equal(ours, theirs):
            worst = float(np.max(np.abs(ours - theirs))) if ours.shape == theirs.shape else None
            raise RewriteError(
                f"{purpose}: requantizing the converter's calibrated model with its own "
                f"ranges does not reproduce the converter's int8 (output {name!r}, max abs "
                f"difference {worst}). This is a bug in tflq.")
    return content


def ranged_tensors(calibrated: bytes) -> dict[int, tuple[float, float]]:
    """{tensor index: (min, max)} of the calibrated model's activation tensors, model
    inputs and outputs excluded, in graph order."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    graph = model.subgraphs[0]
    fixed = set(graph.inputs) | set(graph.outputs)
    found = {}
    for op in graph.operators:
        for index in op.outputs:
            q = graph.tensors[index].quantization
            if (index in fixed or index in found or q is None or q.min is None
                    or len(q.min) != 1):
                continue
            found[int(index)] = (float(q.min[0]), float(q.max[0]))
    return found


def tensor_values(calibrated: bytes, batches: list[dict], indices) -> dict[int, np.ndarray]:
    """The float values of tensors ``indices`` of the calibrated model on ``batches``."""
    from tflq.layer_error import preserving_interpreter

    interp = preserving_interpreter(calibrated)
    runner = interp.get_signature_runner()
    dtypes = {name: d["dtype"] for name, d in runner.get_input_details().items()}
    values = {i: [] for i in indices}
    for batch in batches:
        interp.reset_all_variables()  # recurrent state (LSTM) starts at zero for every batch
        runner(**{name: np.asarray(x, dtypes.get(name, np.float32)) for name, x in batch.items()})
        for i in indices:
            values[i].append(np.array(interp.get_tensor(i)).ravel())
    return {i: np.concatenate(v) for i, v in values.items()}


def _scaled(start: tuple[float, float], observed: tuple[float, float], factor: float):
    lo, hi = start
    return max(observed[0], min(0.0, lo * factor)), min(observed[1], max(0.0, hi * factor))


STARTS = ("converter", "percentile", "mse")
MIN_GAIN_DB = 0.01


def reference_of(outputs: list[np.ndarray], batches: list[dict], fold: int) -> list[np.ndarray]:
    """The rows of ``outputs`` (all batches, concatenated) that belong to the even
    (``fold`` 0) or odd (1) batches; all rows when there is a single batch."""
    if len(batches) < 2:
        return outputs
    sizes = [len(next(iter(b.values()))) for b in batches]
    ends = np.cumsum(sizes)
    rows = np.concatenate([np.arange(end - size, end) for k, (size, end)
                           in enumerate(zip(sizes, ends, strict=True)) if k % 2 == fold])
    return [o[rows] for o in outputs]


def search(calibrated: bytes, options: ConvertOptions, batches: list[dict], output_names,
           starts=STARTS, rounds: int = 1, progress=None) -> tuple[bytes, dict]:
    """Greedy output-error search of the activation ranges (see the module docstring).

    Args:
      calibrated: the converter's calibrated float .tflite.
      batches: calibration batches ({input name: array}) to score on.
      starts: where the ranges may start: ``converter`` (its recorded min/max) or a
        histogram estimator of :mod:`tflq.ptq.ranges`; the one scoring best starts.
      rounds: passes over all tensors.
      progress: wraps the tensor list in a progress bar, or None.

    Returns:
      ``(int8 bytes, record)``: the record has ``start`` (the winning start), ``tensors``
      (searched), ``changed`` (ranges different from the converter's), and the output SQNR
      on the calibration samples of every start and of the result.
    """
    from tflq.ptq import ranges

    recorded = ranged_tensors(calibrated)
    values = tensor_values(calibrated, batches, list(recorded))
    reference = _outputs(calibrated, batches, output_names)  # float: ranges are only recorded
    observed = {i: (min(0.0, float(v.min())), max(0.0, float(v.max())))
                for i, v in values.items()}
    histograms = {i: ranges.Histogram.of(v) for i, v in values.items()}
    del values

    fold_refs = (reference_of(reference, batches, 0), reference_of(reference, batches, 1))

    def score(candidate):
        content = requantize(calibrated, options, candidate)
        test = _outputs(content, batches, output_names)
        both = tuple(_sqnr(fold_refs[k], reference_of(test, batches, k)) for k in (0, 1))
        return _sqnr(reference, test), both, content

    start_db, best, start, content, current, best_folds = {}, -np.inf, None, None, None, None
    for name in starts:
        ranged = dict(recorded) if name == "converter" else {
            i: ranges.estimate(h, name) for i, h in histograms.items()}
        start_db[name], folds_db, candidate = score(ranged)
        if start_db[name] > best:
            best, start, content, current, best_folds = (start_db[name], name, candidate,
                                                         ranged, folds_db)
    order = list(recorded)
    for _ in range(rounds):
        for index in (progress(order) if progress else order):
            keep = current[index]
            for factor in FACTORS:
                current[index] = _scaled(keep, observed[index], factor)
                db, folds_db, candidate = score(current)
                # Kept only when better on both halves of the samples: a change that helps
                # one half and hurts the other fits those samples, not the data.
                if all(new > old + MIN_GAIN_DB for new, old in zip(folds_db, best_folds,
                                                                   strict=True)):
                    best, best_folds, content, keep = db, folds_db, candidate, current[index]
            current[index] = keep
    changed = sum(1 for i in order if not np.allclose(current[i], recorded[i], rtol=1e-6,
                                                      atol=1e-9))
    return content, {"start": start, "tensors": len(order), "changed": changed,
                     "rounds": rounds, "factors": list(FACTORS),
                     "calibration_sqnr_db": {**start_db, "searched": best}}


def _sqnr(reference: list[np.ndarray], test: list[np.ndarray]) -> float:
    """Output SQNR over all outputs, each normalised by its own signal power (so a large
    output does not drown a small one): the mean of the per-output SQNRs in dB."""
    return float(np.mean([metrics.sqnr_db(r, t) for r, t in zip(reference, test, strict=True)]))
