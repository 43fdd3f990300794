"""Selective quantization under an accuracy budget.

Per-op sensitivity comes from TFLite's ``QuantizationDebugger`` (RMSE of each quantized op's
output against float, divided by the output's quantization scale: errors in LSBs). The most
sensitive ops are then kept in float — the fewest that bring the accuracy drop within the
budget, found by doubling k and then bisecting (a full evaluation per candidate).
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Callable

import numpy as np

__all__ = ["Sensitivity", "sensitivities", "model_with_float", "search"]


@dataclasses.dataclass(frozen=True)
class Sensitivity:
    op: str
    tensor: str
    rmse_per_scale: float


def sensitivities(converter, debug_samples: Callable) -> tuple[object, list[Sensitivity]]:
    """(debugger, ops sorted most sensitive first). ``converter`` is configured for int8
    with float I/O; ``debug_samples`` yields lists of input arrays (model input order)."""
    import warnings

    from tflq.models import tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        debugger = tf.lite.experimental.QuantizationDebugger(converter=converter,
                                                             debug_dataset=debug_samples)
        debugger.run()
    buffer = io.StringIO()
    debugger.layer_statistics_dump(buffer)
    rows = []
    for row in csv.DictReader(io.StringIO(buffer.getvalue())):
        scale = float(row["scale"]) if row.get("scale") else 0.0
        mse = float(row["mean_squared_error"])
        if scale > 0 and np.isfinite(mse):
            rows.append(Sensitivity(row["op_name"], row["tensor_name"], float(np.sqrt(mse)) / scale))
    rows.sort(key=lambda s: -s.rmse_per_scale)
    return debugger, rows


def model_with_float(debugger, tensors: list[str]) -> bytes:
    """The int8 model with the ops producing ``tensors`` kept in float."""
    import warnings

    from tflq.models import tf

    debugger._debug_options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_nodes=list(tensors))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bytes(debugger.get_nondebug_quantized_model())


def search(debugger, ranked: list[Sensitivity], drop_of: Callable[[bytes], float | dict],
           budget: float) -> dict:
    """Fewest most-sensitive ops in float with ``drop_of(model) <= budget``.

    ``drop_of`` returns the accuracy drop in pp, or a dict whose ``score`` is compared with
    the budget (its other entries, e.g. ``drop_pp`` and ``agreement``, go into the trial).

    Returns {"met", "kept_float": [tensor names], "content", "all_int8_content" (k = 0),
    "trials": [{k, drop_pp (or the dict's entries), size_bytes}]}; when the budget cannot be
    met even with every ranked op in float, ``met`` is False and the best-scoring model tried
    is returned.
    """
    trials, cache = [], {}

    def trial(k: int):
        if k not in cache:
            content = model_with_float(debugger, [s.tensor for s in ranked[:k]])
            measured = drop_of(content)
            if not isinstance(measured, dict):
                measured = {"drop_pp": measured, "score": measured}
            cache[k] = (measured["score"], content)
            trials.append({"k": k, **{n: v for n, v in measured.items() if n != "score"},
                           "score": measured["score"], "size_bytes": len(content)})
        return cache[k][0]

    n = len(ranked)
    k, passing = 0, None
    while True:
        if trial(k) <= budget:
            passing = k
            break
        if k >= n:
            break
        k = min(n, max(1, 2 * k))
    if passing is None:
        best = min(cache, key=lambda j: cache[j][0])
        return {"met": False, "kept_float": [s.tensor for s in ranked[:best]],
                "content": cache[best][1], "all_int8_content": cache[0][1], "trials": trials}
    low = max(0, passing // 2)  # the last failing k was passing // 2 (or 0)
    high = passing
    while high - low > 1:
        mid = (low + high) // 2
        if trial(mid) <= budget:
            high = mid
        else:
            low = mid
    return {"met": True, "kept_float": [s.tensor for s in ranked[:high]],
            "content": cache[high][1], "all_int8_content": cache[0][1], "trials": trials}
