"""Activation ranges on the converter's own calibrated model, for models tflq's QAT graph
cannot hold (:func:`outside_qat_graph`: SavedModels, recurrent layers, layers of the model's
own classes) and for ``--range_search`` on any model.

The converter is stopped between calibration and quantization
(:func:`tflq.ptq.thresholds.calibrate`); requantizing that calibrated model with its own
ranges must first reproduce the converter's int8 bit for bit (else a RewriteError, exit 1),
then each activation range (model inputs and outputs excluded) becomes the estimator's
choice on that tensor's float values over the calibration samples, or the range search's,
and the converter's own quantizer finishes the model.
"""

from __future__ import annotations

import numpy as np

from tflq.models import FLAVOR_SAVED_MODEL, LoadedModel
from tflq.options import ConvertOptions

__all__ = ["outside_qat_graph", "batches_of", "checked_calibration", "range_search",
           "estimated_ranges"]


def outside_qat_graph(model: LoadedModel) -> str | None:
    """Why tflq's QAT graph cannot hold a model, or None: no Keras layer graph, recurrent
    layers (no tfmot config for RNN cells), or the model's own layer classes (ops inside)."""
    from tflq.quant import graph

    opaque = graph.opaque_layers(model.keras_model) if model.keras_model is not None else []
    return ("a SavedModel converts from its signature, not a Keras layer graph"
            if model.flavor == FLAVOR_SAVED_MODEL else
            "tflq's QAT graph cannot hold recurrent layers" if model.static_batch() is not None
            else f"layer(s) of the model's own classes {opaque}: tflq's QAT graph quantizes "
            "their outputs, not the ops inside" if opaque else None)


def batches_of(model: LoadedModel, samples: list, size: int = 32) -> list[dict]:
    """``samples`` stacked ``size`` at a time (one at a time for static-batch models)."""
    size = 1 if model.static_batch() is not None else size
    names = model.input_names
    return [{n: np.concatenate([s[n] for s in samples[i:i + size]]) for n in names}
            for i in range(0, len(samples), size)]


def checked_calibration(model: LoadedModel, converter, converter_int8: bytes,
                        options: ConvertOptions, samples: list, purpose: str):
    """(the converter's calibrated model, the calibration batches), after checking that
    requantizing it with its own ranges reproduces ``converter_int8`` exactly (else
    RewriteError naming ``purpose``)."""
    from tflq.ptq import thresholds

    batches = batches_of(model, samples)
    calibrated = thresholds.calibrate(converter)
    thresholds.check_requantize(calibrated, converter_int8, options, batches, model.output_names,
                                purpose)
    return calibrated, batches


def range_search(model: LoadedModel, converter, converter_int8: bytes, options: ConvertOptions,
                 samples: list, notes: list, details: dict) -> bytes:
    """``--range_search`` on the converter's calibrated model (:mod:`tflq.ptq.thresholds`),
    after checking that requantizing it unchanged reproduces ``converter_int8`` exactly.
    Appends its note to ``notes`` and its record to ``details``."""
    from tflq.ptq import thresholds

    calibrated, batches = checked_calibration(model, converter, converter_int8, options, samples,
                                              "--range_search")
    content, record = thresholds.search(calibrated, options, batches, model.output_names)
    details["range_search"] = record
    db = record["calibration_sqnr_db"]
    starts = ", ".join(f"{name} {db[name]:.1f} dB" for name in thresholds.STARTS)
    notes.append(f"range search: {record['changed']} of {record['tensors']} activation ranges "
                 f"changed from the converter's; output SQNR on the calibration samples: "
                 f"{starts}; searched from {record['start']}: {db['searched']:.1f} dB")
    return content


def estimated_ranges(model: LoadedModel, converter, converter_int8: bytes,
                     options: ConvertOptions, samples: list, notes: list, details: dict,
                     why: str) -> bytes:
    """``--range_estimator`` on the converter's calibrated model: every activation range
    but the model's inputs and outputs set to the estimator's choice on the calibration
    samples, then the converter's quantizer. ``why`` (the route's reason) goes into the
    note appended to ``notes``; the record goes to ``details["ranges"]``."""
    from tflq.ptq import ranges, thresholds

    calibrated, batches = checked_calibration(model, converter, converter_int8, options, samples,
                                              f"--range_estimator {options.range_estimator}")
    recorded = thresholds.ranged_tensors(calibrated)
    values = thresholds.tensor_values(calibrated, batches, list(recorded))
    chosen = {i: ranges.estimate(ranges.Histogram.of(v), options.range_estimator,
                                 options.percentile) for i, v in values.items()}
    changed = sum(1 for i in chosen if not np.allclose(chosen[i], recorded[i], rtol=1e-6,
                                                       atol=1e-9))
    details["ranges"] = {"estimator": options.range_estimator, "route": "converter",
                         "tensors": len(chosen), "changed": changed}
    notes.append(f"range estimator {options.range_estimator} on the converter's calibrated "
                 f"model ({why}): {changed} of {len(chosen)} activation ranges differ "
                 f"from the converter's min/max; model inputs and outputs keep the "
                 f"converter's ranges")
    return thresholds.requantize(calibrated, options, chosen)
