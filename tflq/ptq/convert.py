"""Converter modes → .tflite bytes, the list of ops left in float, atomic writes.

Modes:
  ``float32``: no optimization.
  ``float16``: float16 weights, float32 compute.
  ``dynamic``: int8 weights, float activations (dynamic range quantization).
  ``int8``: full integer; per-channel weights by default, per-tensor on request; float or
    int8 input/output. Strict ``TFLITE_BUILTINS_INT8`` unless float ops are allowed.
  ``int16x8``: int16 activations, int8 weights. Runs on reference kernels: slow.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np

from tflq.fileio import write_atomic  # noqa: F401 (re-exported)
from tflq.keras3 import with_output_names
from tflq.models import LoadedModel, tf
from tflq.options import ALL_MODES, ConvertOptions, Mode, parse_modes  # noqa: F401 (re-exported)
from tflq.ptq import converter_route
from tflq.tflite_inspect import find_float_ops

__all__ = ["configure", "Conversion", "convert_model", "convert_qat"]

_CONVERTER_NOISE = (r"\s*Warning: tf.lite.Interpreter is deprecated",
                    r"Statistics for quantized inputs were expected")


@dataclasses.dataclass(frozen=True)
class Conversion:
    """The result of one conversion: ``mode``, the .tflite bytes (``content``) and:

    Attributes:
      float_ops: ops left computing in float (``NAME#index``).
      seconds: conversion time.
      notes: one-line statements for the report (what a tflq method did, or did not do).
      details: per-method records for report.json (e.g. ``equalize``: pairs, skipped layers).
    """

    mode: Mode
    content: bytes
    float_ops: tuple[str, ...]
    seconds: float
    notes: tuple[str, ...] = ()
    details: dict = dataclasses.field(default_factory=dict)


def configure(converter, mode: Mode, options: ConvertOptions, representative):
    """Sets a ``TFLiteConverter`` up for ``mode``: optimizations, supported types and ops,
    calibration generator, per-tensor weights and integer I/O as ``options`` ask.

    Raises:
      ValueError: ``int8``/``int16x8`` without a representative dataset.
    """
    if mode == Mode.FLOAT32:
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == Mode.FLOAT16:
        converter.target_spec.supported_types = [tf.float16]
        return
    if mode == Mode.DYNAMIC:
        return
    if representative is None:
        raise ValueError(f"Mode {mode.value!r} needs calibration data (a representative dataset).")
    converter.representative_dataset = representative
    if mode == Mode.INT8:
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_type = tf.int8
        if not options.per_channel:
            converter._experimental_disable_per_channel = True
    else:
        ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        io_type = tf.int16
    if options.allow_float_ops:
        ops.append(tf.lite.OpsSet.TFLITE_BUILTINS)
    converter.target_spec.supported_ops = ops
    if options.integer_io:
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type


def convert_model(model: LoadedModel, mode: Mode | str, workdir: str,
            representative: Callable | None = None,
            options: ConvertOptions | None = None, progress: Callable | None = None) -> Conversion:
    """Converts a float model to .tflite bytes in one mode.

    Args:
      model: the loaded float model.
      mode: a :class:`Mode` or its name.
      workdir: scratch folder (Keras 3 models are exported there).
      representative: the calibration generator (``int8`` and ``int16x8``).
      options: converter settings.
      progress: per-layer progress of tflq's calibration steps (AdaRound, weight clipping,
        bias correction): :func:`tflq.console.progress` with its style bound, or None.

    Returns:
      A :class:`Conversion` with the bytes and the ops left in float.

    Raises:
      ValueError: unknown mode, missing calibration data, a conversion the converter
        refuses, or float ops left in an integer-only mode without ``allow_float_ops``.
    """
    mode = Mode(mode) if not isinstance(mode, Mode) else mode
    options = options or ConvertOptions()
    start = time.perf_counter()
    if model.static_batch() is not None:  # recurrent layers: refuse what cannot work, first
        model.static_batch().check_mode(mode.value)
    notes, details = list(model.conversion_notes), {}  # e.g. "static batch of 1 because of…"
    if (mode == Mode.INT8 and (options.range_estimator or options.range_search)
            and not (options.equalize or options.adaround)
            and (why := converter_route.outside_qat_graph(model))):
        content = _on_converter(model, options, representative, workdir, notes, details, why)
    elif mode == Mode.INT8 and (options.range_estimator or options.equalize or options.adaround
                                or options.range_search):
        content = _convert_calibrated(model, options, representative, workdir, notes, details,
                                      progress)
    else:
        converter = model.make_converter(workdir)
        configure(converter, mode, options, representative)
        content = _run_converter(converter, mode, options)
        for note in notes:
            print(f"tflq: {note}", file=sys.stderr)
    seconds = time.perf_counter() - start
    float_ops = tuple(find_float_ops(content))
    if mode.integer_only and float_ops and not options.allow_float_ops:
        raise ValueError(
            f"Mode {mode.value!r} left {len(float_ops)} op(s) in float: "
            f"{', '.join(float_ops[:8])}{' …' if len(float_ops) > 8 else ''}. "
            "Pass allow_float_ops (--allow_float_ops) to accept them."
        )
    return Conversion(mode=mode, content=content, float_ops=float_ops, seconds=seconds,
                      notes=tuple(notes), details=details)


def _convert_calibrated(model: LoadedModel, options: ConvertOptions, representative,
                        workdir: str, notes: list, details: dict, progress=None) -> bytes:
    """int8 with tflq's calibration: cross-layer equalization + bias correction, AdaRound
    and/or a range estimator (ranges set in tflq's QAT graph, converted from its FakeQuant
    ops). Appends to ``notes`` and ``details`` what each method did; notes also go to stderr."""

    from tflq.models import tf_keras, wrap_model
    from tflq.ptq import ranges

    if representative is None:
        raise ValueError("int8 needs calibration data.")
    samples = list(representative())
    names = model.input_names
    stacked = [{n: np.concatenate([s[n] for s in samples[i:i + 64]]) for n in names}
               for i in range(0, len(samples), 64)]
    # A Keras 3 model is rebuilt as tf_keras, checked on the calibration samples.
    keras = model.to_tf_keras([b[names[0]] if len(names) == 1 else [b[n] for n in names]
                               for b in stacked])

    def batches():
        return iter([b if len(names) > 1 else b[names[0]] for b in stacked])

    outside = converter_route.outside_qat_graph(model) if options.range_estimator else None
    qat_graph_ranges = bool(options.range_estimator) and outside is None
    if model.rebuild_notes:
        notes.append(f"{model.rebuild_notes['what']}, outputs checked on "
                     f"{model.rebuild_notes['checked_samples']} calibration samples (max error "
                     f"{model.rebuild_notes['max_relative_error']:.2g} of range)")
    target = None  # the float model AdaRound reconstructs (None: the model it rounds)
    if options.equalize:
        keras, target = _equalized(keras, options, batches, notes, details, progress)
    rounding = None
    if options.adaround:
        from tflq.ptq import adaround
        from tflq.quant import graph

        if not options.equalize:
            prepared = graph.prepare(keras, [next(batches())])
            if prepared is keras:
                prepared = tf_keras.models.clone_model(keras)
                prepared.set_weights(keras.get_weights())
            keras = prepared
        # The estimators convert through tflq's QAT graph: Dense kernels per tensor there.
        rounding = adaround.apply(keras, batches, options.adaround_bits, options.per_channel,
                                  options.adaround_iterations, options.adaround_reg,
                                  per_tensor_kinds=("Dense",) if qat_graph_ranges else (),
                                  reference=target, progress=progress)
    if qat_graph_ranges:
        record = {}
        calibrated, _ = ranges.calibrated_model(keras, batches, options.range_estimator,
                                                options.percentile, record=record)
        details["ranges"] = record
        notes.append(_ranges_note(record))
        content = convert_qat(with_output_names(calibrated, model.output_names), workdir,
                              integer_io=options.integer_io)
    else:
        def make_converter():
            converter = wrap_model(with_output_names(keras, model.output_names),
                                   model.source).make_converter(workdir)
            configure(converter, Mode.INT8, options, representative)
            return converter

        # range search, or an estimator on a model the QAT graph cannot hold: the converter's ranges
        content = _converter_ranges(model, make_converter, options, samples, notes, details,
                                    outside)
    if rounding is not None:
        _adaround_record(keras, rounding, content, notes, details)
    for note in notes:
        print(f"tflq: {note}", file=sys.stderr)
    return content


def _on_converter(model: LoadedModel, options: ConvertOptions, representative, workdir: str,
                  notes: list, details: dict, why: str) -> bytes:
    """``--range_estimator`` / ``--range_search`` for models outside tflq's QAT graph
    (``why``: :func:`tflq.ptq.converter_route.outside_qat_graph`), on the converter's
    calibrated model (:mod:`tflq.ptq.converter_route`)."""
    if representative is None:
        raise ValueError("int8 needs calibration data.")

    def make_converter():
        converter = model.make_converter(workdir)
        configure(converter, Mode.INT8, options, representative)
        return converter

    content = _converter_ranges(model, make_converter, options, list(representative()), notes,
                                details, why)
    for note in notes:
        print(f"tflq: {note}", file=sys.stderr)
    return content


def _equalized(keras, options: ConvertOptions, batches, notes: list, details: dict,
               progress=None):
    """``(keras equalized, float target for AdaRound or None)``: equalized
    (:mod:`tflq.ptq.equalize`), per tensor with its weight ranges clipped
    (:mod:`tflq.ptq.weight_clip`), then bias corrected; records what each did.

    Bias correction removes the mean output error of rounding each kernel to nearest. With
    ``--adaround`` it is left out: AdaRound replaces that rounding (the correction would then
    shift each layer by an error it no longer makes; on nsfwjs' selection crops CLE +
    AdaRound went from 17.4 to 31.3 dB without it), and its own loss includes the mean
    error. AdaRound's target is then the equalized model before any clipping."""
    from tflq.models import tf_keras
    from tflq.ptq import equalize, weight_clip

    original = keras
    keras, record = equalize.equalize(keras, relu6=options.equalize_relu6,
                                      samples=[next(batches())], batches=batches)
    if record["pairs"]:  # equalized alone: the float function, measured before biases move
        record["float_change"] = equalize.float_change(original, keras, batches)
    reference, target = None, None
    if not options.per_channel:
        if options.adaround:
            target = tf_keras.models.clone_model(keras)
            target.set_weights(keras.get_weights())
        record["weight_clip"] = weight_clip.clip_per_tensor(keras, batches, progress=progress)
        reference = record["weight_clip"].pop("originals")
    record["bias_corrected"] = {} if options.adaround else equalize.bias_correct(
        keras, batches, per_channel=options.per_channel, reference=reference, progress=progress)
    record["bias_correction"] = "adaround" if options.adaround else "nearest"
    details["equalize"] = record
    notes.append(_equalize_note(record))
    return keras, target


def _converter_ranges(model: LoadedModel, make_converter, options: ConvertOptions,
                      samples: list, notes: list, details: dict, why: str | None) -> bytes:
    """The converter's int8 of ``make_converter()``, its activation ranges then set by
    ``--range_search`` or ``--range_estimator`` on its calibrated model (neither: as
    converted). ``why`` (the model is outside tflq's QAT graph) goes into the note."""
    content = _run_converter(make_converter(), Mode.INT8, options)
    if options.range_search:
        content = converter_route.range_search(model, make_converter(), content, options,
                                               samples, notes, details)
        if why:
            notes[-1] += f" ({why})"
    elif options.range_estimator:
        content = converter_route.estimated_ranges(model, make_converter(), content, options,
                                                   samples, notes, details, why)
    return content


def _adaround_record(keras, rounding: dict, content: bytes, notes: list, details: dict):
    """Checks that the .tflite holds the learned codes and records what AdaRound did."""
    from tflq.ptq import adaround

    checked = adaround.check_deployed(keras, rounding, content)
    deployed = {row["layer"]: row["exact"] for row in checked}
    layers = [{**row, "deployed_exactly": deployed[row["layer"]]} for row in rounding["layers"]]
    details["adaround"] = {k: v for k, v in rounding.items()
                           if k not in ("codes", "layers", "scales", "bias_limited")}
    details["adaround"]["layers"] = layers
    learned = sum(r["kept"] == "adaround" for r in layers)
    exact = sum(r["deployed_exactly"] for r in layers)
    clipping = ""
    if rounding["num_bits"] == 4:
        medians = [r["clip_ratio_median"] for r in layers]
        clipping = (f"; 4-bit grid clipped per channel at T_c/max|w_c| with per-layer medians "
                    f"{min(medians):.2f}–{max(medians):.2f} (median {np.median(medians):.2f}), "
                    f"{sum(r['clipped_channels'] for r in layers)} channels clipped; "
                    f"bias corrected in {sum(r.get('bias_corrected_channels', 0) for r in layers)}"
                    f" channels")
    notes.append(f"AdaRound {rounding['num_bits']}-bit weights: learned rounding kept in "
                 f"{learned} of {len(layers)} layers (the others round to nearest: lower "
                 f"error there); codes deployed exactly in {exact} of {len(layers)}{clipping}"
                 + _bias_limited_note(layers))


def _bias_limited_note(layers: list) -> str:
    """Names the channels AdaRound left to the converter because their int32 bias needs a
    larger weight scale (empty when none)."""
    limited = {r["layer"]: r["bias_limited_channels"] for r in layers
               if r["bias_limited_channels"]}
    if not limited:
        return ""
    return (f"; {sum(limited.values())} channel(s) left to the converter's rounding (it "
            f"raises their weight scale so the int32 bias fits): " +
            ", ".join(f"{n} ({c})" for n, c in limited.items()))


def _ranges_note(record: dict) -> str:
    """One line on what a range estimator set and what it left at min/max, and why."""
    kept = record["kept_minmax"]
    kept_text = ", ".join(f"{n} ({why.split(':')[0]})" for n, why in kept.items()) or "none"
    line = (f"range estimator {record['estimator']}: set {record['estimated']} activation "
            f"range(s) ({record['narrowed']} narrower or wider than min/max; "
            f"{record['quantizers']} quantizers in all); kept {len(kept)} at min/max: {kept_text}"
            " — clipping a model input or output changes what the model sees or says")
    if record["prepare"]:
        line += "; prepare: " + "; ".join(record["prepare"])
    return line


def _equalize_note(record: dict) -> str:
    """One line on what cross-layer equalization did (pairs, skips, the ReLU6 change)."""
    from tflq.ptq import equalize

    pairs = record["pairs"]
    if not pairs:
        return (f"cross-layer equalization found NO pair to equalize "
                f"({len(record['skipped'])} weight layers skipped); " + _bias_note(record)
                + _clip_note(record))
    worst = max(p["spread_before"] for p in pairs)
    line = (f"cross-layer equalization: {len(pairs)} pairs (largest channel-range spread "
            f"{worst:.0f}x -> {max(p['spread_after'] for p in pairs):.1f}x), "
            f"{len(record['skipped'])} weight layers not paired, "
            f"{sum(p['dead_channels_left'] for p in pairs)} dead channels left unscaled "
            f"({sum(p['ignored_channels_zeroed'] for p in pairs)} of them zeroed: their "
            "consumer ignores them); "
            + _bias_note(record))
    if record["relu6_replaced"]:
        line += f"; {record['relu6_replaced']} ReLU6 replaced by ReLU"
    held = sum(p["relu6_held_channels"] for p in pairs)
    if record["relu6_bounded_pairs"]:
        line += (f"; ReLU6 kept in {record['relu6_bounded_pairs']} pairs, {held} channels held "
                 f"at scale 1 (ReLU6 clips them on the calibration data), the others grown at "
                 f"most until {equalize.RELU6_HEADROOM:g}× their maximum reaches the moved clip")
    cost = record["float_change"]
    line += (f"; equalized float model vs the original on the calibration data: top-1 "
             f"agreement {100 * cost['top1_agreement']:.2f}%, SQNR {cost['sqnr_db']:.1f} dB")
    return line + _clip_note(record)


def _bias_note(record: dict) -> str:
    """The bias correction part of the equalize note."""
    if record["bias_correction"] == "adaround":
        return ("bias correction left to AdaRound (it replaces the nearest rounding the "
                "correction assumes)")
    return f"bias correction on {len(record['bias_corrected'])} layers"


def _clip_note(record: dict) -> str:
    """The per-tensor weight clipping part of the equalize note ('' per channel)."""
    if "weight_clip" not in record:
        return ""
    clip = record["weight_clip"]
    ratios = [layer["ratio"] for layer in clip["layers"] if layer["ratio"] < 1.0]
    return (f"; per-tensor weight ranges clipped in {clip['clipped_layers']} of "
            f"{len(clip['layers'])} layers for the smallest activated-output error"
            + (f" (T / max|W| from {min(ratios):.2f} to {max(ratios):.2f})" if ratios else ""))


def _run_converter(converter, mode: Mode, options: ConvertOptions) -> bytes:
    """``converter.convert()``; what the converter refuses becomes a ValueError (bad input).

    The converter's own errors (unsupported ops or inputs, a calibrator that cannot quantize
    an op) say the model or data cannot be converted as asked: ValueError, exit 2. A
    MemoryError or an exception raised in tflq's own code is re-raised as it is (exit 1).
    """
    try:
        with warnings.catch_warnings():
            # Raised inside the converter's own calibrator, not actionable for our users.
            for message in _CONVERTER_NOISE:
                warnings.filterwarnings("ignore", message=message)
            return converter.convert()
    except ValueError as e:  # the converter's checks, or a sample our checks refused
        raise ValueError(_conversion_error(mode, e, options)) from e
    except Exception as e:
        if isinstance(e, MemoryError) or _raised_in_tflq(e):
            raise
        raise ValueError(_conversion_error(mode, e, options)) from e


_TFLQ_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _raised_in_tflq(error: BaseException) -> bool:
    """True when ``error`` (or an exception it was raised from) started in tflq's own code."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        tb = error.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(
                _TFLQ_DIR + os.sep):
            return True
        error = error.__cause__ or error.__context__
    return False


def _conversion_error(mode: Mode, error: Exception, options: ConvertOptions) -> str:
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    detail = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else "")
    unsupported = list(dict.fromkeys(re.findall(r"not yet supported for op: '(\w+)'", str(error))))
    if len(unsupported) > 1:  # the converter writes one line per op: name them all
        detail = (detail.split("for op:")[0] + "for ops: "
                  + ", ".join(repr(op) for op in unsupported))
    hint = ""
    if mode.integer_only and not options.allow_float_ops:
        hint = " Some ops may lack integer kernels: retry with --allow_float_ops to keep them in float."
    return f"Conversion to {mode.value} failed: {type(error).__name__}: {detail[:300]}.{hint}"


def convert_qat(model, workdir: str, integer_io: bool = True) -> bytes:
    """Converts a QAT model with the ranges it learned (its FakeQuant ops); no calibration.

    Raises:
      ValueError: the converter refuses the model (see :func:`_run_converter`).
    """
    from tflq.models import tf, wrap_model

    converter = wrap_model(model, "qat").make_converter(workdir)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if integer_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return _run_converter(converter, Mode.INT8, ConvertOptions(allow_float_ops=True))
