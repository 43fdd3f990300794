"""``--auto``: int8 from the best of the plain converter and tflq's calibration methods,
never worse than the converter on data it did not calibrate on.

Every candidate (:data:`CANDIDATES`, each a set of :class:`tflq.options.ConvertOptions`
changes) is calibrated on the calibration samples minus a selection slice (every
``HOLDOUT_EVERY``-th sample), converted, and scored on that slice against the float model:
output SQNR first (it works for any output, not only classifiers), top-1 agreement
reported beside it. The evaluation data is never touched, so the report's evaluation
numbers stay an unbiased estimate. The plain converter is always a candidate, so the winner
scores at least as well as the converter on the selection slice.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from tflq import metrics
from tflq.options import ConvertOptions, Mode
from tflq.ptq import convert

__all__ = ["CANDIDATES", "HOLDOUT_EVERY", "split_samples", "search"]

# name -> ConvertOptions changes; "converter" must stay first (the baseline).
CANDIDATES = {
    "converter": {},
    "minmax": {"range_estimator": "minmax"},
    "percentile": {"range_estimator": "percentile"},
    "mse": {"range_estimator": "mse"},
    "equalize": {"equalize": True},
    "equalize+mse": {"equalize": True, "range_estimator": "mse"},
    "search": {"range_search": True},
    "equalize+search": {"equalize": True, "range_search": True},
    "adaround": {"adaround": True},
    "equalize+adaround": {"equalize": True, "adaround": True},
    # Learned weight rounding with estimated activation ranges: the two errors add up.
    "adaround+mse": {"adaround": True, "range_estimator": "mse"},
    "equalize+adaround+mse": {"equalize": True, "adaround": True, "range_estimator": "mse"},
}
HOLDOUT_EVERY = 5  # one calibration sample in five is held apart for selection


def split_samples(samples: list, purpose: str = "--auto") -> tuple[list, list]:
    """(calibration samples, selection samples): every ``HOLDOUT_EVERY``-th sample is held
    apart. Raises ValueError (naming ``purpose``) when either part would be empty."""
    selection = samples[HOLDOUT_EVERY - 1::HOLDOUT_EVERY]
    calibration = [s for i, s in enumerate(samples) if i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1]
    if not selection or not calibration:
        raise ValueError(f"{purpose} needs at least {HOLDOUT_EVERY} calibration samples (one in "
                         f"{HOLDOUT_EVERY} is held apart to choose on). Received: {len(samples)}")
    return calibration, selection


def _score(model, content: bytes, selection: list, num_threads: int) -> dict:
    from tflq.interpreter import TfliteModel

    runner = TfliteModel(content, model.output_names, num_threads=num_threads)
    compared = metrics.Comparison()
    names = model.input_names
    for start in range(0, len(selection), 32):
        chunk = selection[start:start + 32]
        batch = {n: np.concatenate([s[n] for s in chunk]) for n in names}
        compared.update(model.predict(batch), runner.run(batch), None)
    result = compared.result()
    return {"sqnr_db": result["sqnr_db"], "top1_agreement": result["top1_agreement"]}


def search(model, samples: list, options: ConvertOptions, workdir: str,
           candidates: dict | None = None, num_threads: int = 1,
           progress=None) -> tuple[convert.Conversion, dict]:
    """Converts int8 with every candidate and keeps the one with the highest selection SQNR.

    Args:
      model: the float :class:`tflq.models.LoadedModel`.
      samples: calibration samples (``{input name: (1, ...) array}``), in order.
      options: the base options (``per_channel``, ``integer_io``, ``allow_float_ops``...).
      workdir: scratch folder.
      candidates: name -> option changes (default :data:`CANDIDATES`).
      num_threads: interpreter threads for scoring.
      progress: wraps the candidate list in a progress bar, or None.

    Returns:
      ``(winning Conversion, record)``; the record lists every candidate's score, seconds
      and error (a candidate the model cannot take, e.g. an estimator on a per-tensor
      model, or whose .tflite LiteRT cannot run, is recorded with its error and skipped).
    """
    candidates = dict(CANDIDATES if candidates is None else candidates)
    calibration, selection = split_samples(samples)
    base = dataclasses.replace(options, auto=False, range_estimator=None, equalize=False,
                               selective=False, adaround=False, adaround_bits=8,
                               range_search=False)
    rows, best, best_score = [], None, None
    names = list(candidates)
    for name in (progress(names) if progress else names):
        start = time.perf_counter()
        row = {"candidate": name, "options": candidates[name]}
        try:
            chosen = dataclasses.replace(base, **candidates[name])
            conversion = convert.convert_model(model, Mode.INT8, workdir,
                                               lambda: iter(calibration), chosen)
        except ValueError as e:  # a method this model or setting cannot take
            row.update(error=str(e).splitlines()[0], seconds=time.perf_counter() - start)
            rows.append(row)
            continue
        try:
            row.update(_score(model, conversion.content, selection, num_threads),
                       seconds=time.perf_counter() - start)
        except RuntimeError as e:  # LiteRT cannot run it (e.g. rejected quantization params)
            row.update(error=f"LiteRT could not run it: {str(e).splitlines()[0]}",
                       seconds=time.perf_counter() - start)
            rows.append(row)
            continue
        rows.append(row)
        key = (row["sqnr_db"], row["top1_agreement"])
        if best_score is None or key > best_score:
            best, best_score = (name, conversion), key
    if best is None:
        raise ValueError("--auto: no candidate converted: "
                         + "; ".join(f"{r['candidate']}: {r['error']}" for r in rows))
    winner, conversion = best
    record = {"winner": winner, "selection_samples": len(selection),
              "calibration_samples": len(calibration), "candidates": rows}
    note = (f"auto: {winner} chosen of {len(rows)} candidates on {len(selection)} held-out "
            f"calibration samples (selection SQNR {best_score[0]:.1f} dB; converter "
            f"{rows[0].get('sqnr_db', float('nan')):.1f} dB)")
    return dataclasses.replace(conversion, notes=(note, *conversion.notes),
                               details={**conversion.details, "auto": record}), record
