"""``--selective`` of the conversion job: the fewest most sensitive int8 ops kept in float
that bring the model within its budget (:mod:`tflq.ptq.selective` does the search)."""

from __future__ import annotations

import shutil
import tempfile

from tflq import options, sampling

__all__ = ["run_selective"]


def run_selective(job, model, conversions, representative, calib, calib_indices,
                  headline: int = 0) -> dict:
    """Replaces the int8 conversion with the selectively quantized model (see
    :mod:`tflq.ptq.selective`); returns the search record.

    The search chooses on a slice of the calibration samples held apart (every
    :data:`tflq.ptq.auto.HOLDOUT_EVERY`-th; the rest calibrates), never on the evaluation data
    the report then measures. Its budget: ``max_accuracy_drop`` when those samples have
    labels, and/or ``min_agreement`` (top-1 agreement with the float model, no labels needed);
    a candidate passes when every budget it can measure is met (on output ``headline``)."""
    import dataclasses as dc

    from tflq import interpreter, metrics, tflite_inspect
    from tflq.ptq import auto, selective
    from tflq.ptq import convert as converter

    if options.Mode.INT8 not in conversions:
        raise ValueError("--selective needs the int8 mode.")
    max_drop, min_agreement = job.gates.max_accuracy_drop, job.gates.min_agreement
    if max_drop is None and min_agreement is None:
        raise ValueError("--selective needs --max_accuracy_drop (the accuracy budget) or "
                         "--min_agreement (top-1 agreement with the float model as the budget).")
    calibrate_on, choose_on = auto.split_samples(list(calib_indices), "--selective")
    batches = list(sampling.iter_batches(calib, model.inputs, job.batch_size, choose_on))
    labelled = all(labels is not None for _, labels in batches)
    if max_drop is not None and not labelled and min_agreement is None:
        raise ValueError(f"--selective chooses on calibration samples and {calib.description!r} "
                         "has no labels, so --max_accuracy_drop cannot be its budget: pass "
                         "--min_agreement (top-1 agreement with the float model) instead.")
    use_drop = max_drop is not None and labelled
    references, float_accuracy = _float_references(model, batches, use_drop, headline)
    calibration = sampling.representative_dataset(calib, model.inputs, calibrate_on)
    scratch = tempfile.mkdtemp(prefix="tflq-selective-")
    try:
        conv = model.make_converter(scratch)
        converter.configure(conv, options.Mode.INT8,
                            dc.replace(job.convert_options, allow_float_ops=True,
                                       selective=False), calibration)
        names = model.input_names

        def debug_samples():
            for i, sample in enumerate(calibration()):
                if i >= 64:
                    break
                yield [sample[n] for n in names]

        debugger, ranked = selective.sensitivities(conv, debug_samples)

        def measure(content: bytes) -> dict:
            runner = interpreter.TfliteModel(content, model.output_names,
                                             num_threads=job.num_threads)
            compared = metrics.Comparison(headline)
            for (batch, labels), reference in zip(batches, references, strict=True):
                compared.update(reference, runner.run(batch), labels if use_drop else None)
            found = compared.result()
            drop = 100.0 * (float_accuracy - found["accuracy"]) if use_drop else None
            excess = []
            if use_drop:
                excess.append(drop - max_drop)
            if min_agreement is not None:
                excess.append(100.0 * (min_agreement - found["top1_agreement"]))
            return {"score": max(excess), "drop_pp": drop,
                    "agreement": found["top1_agreement"]}

        found = selective.search(debugger, ranked, measure, 0.0)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    content = found["content"]
    found["cost"] = _float_ops_cost(job, model, found.pop("all_int8_content"), content,
                                    batches[0][0])
    found["budget"] = {"max_accuracy_drop": max_drop if use_drop else None,
                       "min_agreement": min_agreement, "labelled": labelled,
                       "chosen_on": {"samples": len(choose_on),
                                     "source": f"every {auto.HOLDOUT_EVERY}th calibration sample "
                                               f"of {calib.description!r}, held apart",
                                     "calibrated_on": len(calibrate_on)}}
    conversions[options.Mode.INT8] = converter.Conversion(
        mode=options.Mode.INT8, content=content,
        float_ops=tuple(tflite_inspect.find_float_ops(content)),
        seconds=conversions[options.Mode.INT8].seconds)
    found["ranked"] = [dc.asdict(s) for s in ranked]
    return found


def _float_references(model, batches, with_accuracy: bool, headline: int = 0):
    """The float model's outputs on ``batches`` and, when asked, its accuracy on their labels."""
    from tflq import metrics

    references = [model.predict(batch) for batch, _ in batches]
    if not with_accuracy:
        return references, None
    seen = metrics.Comparison(headline)
    for (_, labels), reference in zip(batches, references, strict=True):
        seen.update(reference, reference, labels)
    return references, seen.result()["accuracy"]


def _float_ops_cost(job, model, all_int8: bytes, content: bytes, sample) -> dict:
    """What keeping ops in float costs: size and latency against the all-int8 model,
    measured side by side."""
    from tflq import interpreter

    runners = {name: interpreter.TfliteModel(model_bytes, model.output_names,
                                             num_threads=job.num_threads)
               for name, model_bytes in (("all_int8", all_int8), ("selective", content))}
    latency = interpreter.measure_latency(runners, sample, runs=job.latency_runs)
    return {"all_int8_bytes": len(all_int8), "selective_bytes": len(content),
            "all_int8_latency_ms": latency["all_int8"]["median"],
            "selective_latency_ms": latency["selective"]["median"]}
