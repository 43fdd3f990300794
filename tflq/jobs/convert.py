"""The conversion job: load → calibrate → convert every mode → validate → report → gates.

Importing this module does not import TensorFlow (only running a job does), so job specs
can be built and checked cheaply, e.g. by the batch runner.

Everything is checked and computed in memory before the first byte is written, so a bad
input leaves the output folder exactly as it was. Outputs are then written one file at a
time, each atomically.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time

from tflq import options, report, sampling
from tflq.data import DataOptions
from tflq.jobs.common import (
    JobResult,
    add_layer_error,
    base_report,
    evaluate,
    finish,
    given,
    prepare_data,
    progress,
    refuse_in_memory,
)
from tflq.layer_error import DEFAULT_SAMPLES
from tflq.runtime import check_output_dir
from tflq.task_metrics import normalize_output_tasks

__all__ = ["ConvertJob", "run_job", "below_converter_warnings", "WARN_BELOW_CONVERTER_PP",
           "BASELINE"]


@dataclasses.dataclass(frozen=True)
class ConvertJob:
    """Everything one conversion run needs; checked on creation.

    Attributes:
      model: model path or ``module:function``, or a tf_keras / Keras 3 model object.
      data: calibration data (see :func:`tflq.data.open_data`: a path, ``module:function``,
        or arrays, a dict, an ``(x, y)`` tuple, a ``tf.data.Dataset`` or a function).
      eval_data: evaluation data; None evaluates on the samples of ``data`` not drawn for
        calibration.
      modes: converter modes, in order.
      out: output folder; None writes nothing (the files are in the result's ``contents``).
      num_calibration_samples: how many calibration samples to draw (with ``seed``).
      num_eval_samples: cap on evaluation samples (None: all).
      seed: sampling seed.
      num_threads: interpreter threads for validation and latency.
      batch_size: evaluation batch size.
      latency_runs: timed batch-1 runs per mode after warm-up.
      convert_options: converter settings.
      data_options: normalization/resizing of image data.
      gates: quality gates.
      progress: show progress on stderr: True (bars on a terminal, one line per stage
        otherwise), ``"bars"``, ``"lines"`` or False.
      recipes: LiteRT Quantizer recipes (:data:`tflq.ptq.litert_backend.RECIPES`) applied to
        the float32 .tflite, reported beside the converter modes as ``litert:<recipe>``.
      layer_error_samples: calibration samples for the per-layer error of every mode but
        float32 (:mod:`tflq.layer_error`); 0 turns it off.
      output_tasks: the task each named output is measured as (``{name: task}``, a string
        ``"name=task,..."`` or pairs; :data:`tflq.task_metrics.TASKS`); the others are
        inferred from their shape and final activation (:mod:`tflq.jobs.outputs`).
    """

    model: object
    data: object
    out: str | None
    eval_data: object | None = None
    modes: tuple[str, ...] = options.ALL_MODES
    num_calibration_samples: int = 500
    num_eval_samples: int | None = None
    seed: int = 0
    num_threads: int = 1
    batch_size: int = 256
    latency_runs: int = 50
    convert_options: options.ConvertOptions = options.ConvertOptions()
    data_options: DataOptions = DataOptions()
    gates: report.Gates = report.Gates()
    progress: bool | str = True
    recipes: tuple[str, ...] = ()
    layer_error_samples: int = DEFAULT_SAMPLES
    output_tasks: tuple = ()

    def __post_init__(self):
        options.parse_modes(list(self.modes))
        object.__setattr__(self, "output_tasks", normalize_output_tasks(self.output_tasks))
        from tflq.ptq import litert_backend

        for recipe in self.recipes:
            litert_backend.check_recipe(recipe)
        if len(set(self.recipes)) != len(self.recipes):
            raise ValueError(f"recipes lists a recipe twice: {list(self.recipes)}")
        for name in ("num_calibration_samples", "num_threads", "batch_size", "latency_runs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
        if (not isinstance(self.layer_error_samples, int) or isinstance(self.layer_error_samples, bool)
                or self.layer_error_samples < 0):
            raise ValueError("layer_error_samples must be an integer >= 0 (0 turns per-layer error "
                             f"off). Received: layer_error_samples={self.layer_error_samples!r}")
        if self.num_eval_samples is not None and self.num_eval_samples < 1:
            raise ValueError(
                f"num_eval_samples must be positive. Received: num_eval_samples={self.num_eval_samples}"
            )
        if self.out is not None and not self.out:
            raise ValueError("out must name an output folder (or be None: write nothing). "
                             "Received: out=''")

    def to_dict(self) -> dict:
        """A JSON-ready dict; :meth:`from_dict` rebuilds an equal job.

        Raises:
          ValueError: the job holds an in-memory model or data (not serializable).
        """
        refuse_in_memory(self, "ConvertJob.to_dict")
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ConvertJob:
        data = dict(data)
        data["modes"] = tuple(data["modes"])
        data["recipes"] = tuple(data.get("recipes", ()))
        data["convert_options"] = options.ConvertOptions(**data["convert_options"])
        image_size = data["data_options"].get("image_size")
        data["data_options"] = DataOptions(
            normalize=data["data_options"]["normalize"],
            image_size=tuple(image_size) if image_size else None)
        data["gates"] = report.Gates(**data["gates"])
        return cls(**data)

    def settings(self) -> dict:
        return {
            "modes": list(self.modes),
            "litert_recipes": list(self.recipes),
            "num_calibration_samples": self.num_calibration_samples,
            "num_eval_samples": self.num_eval_samples,
            "seed": self.seed,
            "num_threads": self.num_threads,
            "batch_size": self.batch_size,
            "latency_runs": self.latency_runs,
            "layer_error_samples": self.layer_error_samples,
            "output_tasks": dict(self.output_tasks),
            **self.convert_options.to_dict(),
            "normalize": self.data_options.normalize,
            "image_size": list(self.data_options.image_size) if self.data_options.image_size else None,
        }


@dataclasses.dataclass(frozen=True)
class _RecipeMode:
    """A LiteRT recipe in the place of a converter :class:`tflq.options.Mode`."""

    value: str
    needs_calibration: bool = False


# A quantized mode more than this far below the plain converter's top-1 agreement on the
# same data gets a warning (report and stderr): tflq's methods must earn their place.
WARN_BELOW_CONVERTER_PP = 2.0
BASELINE = "int8 (plain converter)"  # the runner key of the plain converter's int8


def run_job(job: ConvertJob) -> JobResult:
    """Runs one conversion job end to end and writes its outputs (none when ``job.out`` is
    None: the result's ``contents`` holds them).

    Returns:
      A :class:`JobResult`; ``exit_code`` is 3 when a gate failed (outputs still written).

    Raises:
      ValueError: bad input of any kind; nothing has been written.
    """
    from tflq import interpreter
    from tflq.jobs import outputs
    from tflq.models import load_model
    from tflq.ptq import preflight

    modes = options.parse_modes(list(job.modes))
    if job.out is not None:
        check_output_dir(job.out)
    model = load_model(job.model)
    observer = outputs.start(model, job.output_tasks, job.gates,
                             [m.value for m in modes] + [f"litert:{r}" for r in job.recipes])
    calib, calib_indices, evaluation, eval_indices, calib_stats, eval_stats = prepare_data(
        job, model)
    representative = sampling.representative_dataset(calib, model.inputs, calib_indices)
    conversions, modes, baseline = _convert_all(job, model, modes, representative)
    selective = None
    if job.convert_options.selective:
        selective = _selective(job, model, conversions, representative, calib,
                               calib_indices, observer.headline)
    runners = {mode: interpreter.TfliteModel(conversions[mode].content, model.output_names,
                                             num_threads=job.num_threads) for mode in modes}
    if baseline is not None:
        runners[BASELINE] = interpreter.TfliteModel(baseline, model.output_names,
                                                    num_threads=job.num_threads)
    float_result, comparisons, first_batch = _evaluate(job, model, evaluation, eval_indices,
                                                       runners, observer)
    runners.pop(BASELINE, None)
    latency = interpreter.measure_latency(
        {m.value: r for m, r in runners.items()}, first_batch, runs=job.latency_runs)
    mode_rows = _mode_rows(job, model, modes, conversions, comparisons, float_result, latency,
                           selective)
    float_size = len(conversions[options.Mode.FLOAT32].content)
    slow = outputs.complete(mode_rows, observer, {m.value: conversions[m].content for m in modes},
                            job.num_threads)
    measured = add_layer_error(mode_rows, conversions[options.Mode.FLOAT32].content,
                               {m.value: conversions[m].content for m in modes},
                               representative(), job.layer_error_samples)
    full_report = base_report(
        model=model, source=model.source, settings=job.settings(),
        data={
            "calibration": {"source": calib.description, "num_samples": len(calib_indices),
                            "range": calib_stats.to_dict()},
            "evaluation": {"source": evaluation.description if given(job.eval_data)
                           else f"{calib.description} (samples not calibrated on)",
                           "num_samples": len(eval_indices),
                           "has_labels": float_result["accuracy"] is not None,
                           "range": eval_stats.to_dict()},
        },
        float_section={"accuracy": float_result["accuracy"], "float32_tflite_bytes": float_size},
        modes=mode_rows, gates=job.gates,
        preflight=[f.to_dict() for f in preflight.static_findings(model)],
        warnings=below_converter_warnings(mode_rows, comparisons) + slow,
        output_tasks=observer.section)
    if baseline is not None:
        full_report["plain_converter_int8"] = {
            k: v for k, v in comparisons[BASELINE].result().items() if k != "accuracy"}
    if measured is not None:
        measured["conversion_seconds"] = sum(conversions[m].seconds or 0.0 for m in conversions)
        full_report["layer_error"] = measured
    if selective is not None:
        full_report["selective"] = {k: v for k, v in selective.items() if k != "content"}
    return finish(job.out, full_report, {
        row["path"]: conv.content for row, conv in zip(
            mode_rows, (conversions[m] for m in modes), strict=True)})


def _convert_all(job: ConvertJob, model, modes: list, representative):
    """Every converter mode (float32 always, for sizes), LiteRT recipes, and, when int8 uses
    a tflq method, the plain converter's int8 as the baseline to compare it with.

    Returns ``(conversions, modes with recipes appended, baseline bytes or None)``."""
    from tflq import tflite_inspect
    from tflq.ptq import auto
    from tflq.ptq import convert as converter

    settings = job.convert_options
    tflq_method = (settings.equalize or settings.range_estimator or settings.auto
                   or settings.adaround)
    scratch = tempfile.mkdtemp(prefix="tflq-")
    try:
        conversions = {}
        wanted = list(modes) if options.Mode.FLOAT32 in modes else [options.Mode.FLOAT32, *modes]
        bar = progress(job.progress, "convert", len(wanted), unit="mode")
        for mode in (bar(wanted) if bar else wanted):
            if mode == options.Mode.INT8 and settings.auto:
                conversions[mode], _ = auto.search(
                    model, list(representative()), settings, scratch, num_threads=job.num_threads,
                    progress=progress(job.progress, "auto", len(auto.CANDIDATES), "candidate"))
                continue
            conversions[mode] = converter.convert_model(
                model, mode, scratch,
                representative=representative if mode.needs_calibration else None,
                options=settings)
        baseline = None
        if options.Mode.INT8 in modes and (tflq_method or settings.selective or job.recipes):
            plain = dataclasses.replace(settings, range_estimator=None, equalize=False,
                                        selective=False, auto=False, adaround=False,
                                        adaround_bits=8)
            baseline = converter.convert_model(model, options.Mode.INT8, scratch, representative,
                                               plain).content
        float_content = conversions[options.Mode.FLOAT32].content
        for recipe in job.recipes:  # LiteRT Quantizer on the float .tflite
            from tflq.ptq import litert_backend

            start = time.perf_counter()
            content = litert_backend.quantize(float_content, recipe, representative)
            mode = _RecipeMode(f"litert:{recipe}")
            conversions[mode] = converter.Conversion(
                mode=mode, content=content,
                float_ops=tuple(tflite_inspect.find_float_ops(content)),
                seconds=time.perf_counter() - start)
            modes = [*modes, mode]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if baseline is None and options.Mode.INT8 in conversions and job.recipes:
        baseline = conversions[options.Mode.INT8].content
    return conversions, modes, baseline


def _mode_rows(job, model, modes, conversions, comparisons, float_result, latency, selective):
    from tflq.ptq.litert_backend import RECIPES

    float_size = len(conversions[options.Mode.FLOAT32].content)
    rows = []
    for mode in modes:
        conv = conversions[mode]
        notes = [report.MODE_NOTES[mode.value]] if mode.value in report.MODE_NOTES else []
        notes += list(conv.notes)
        if mode.value == "int8" and job.convert_options.range_estimator:
            notes.append(f"activation ranges: {job.convert_options.range_estimator} estimator "
                         "(tflq.ptq.ranges), converted through tflq's QAT graph")
        if mode.value == "int8" and selective is not None:
            notes.append(f"selective: {len(selective['kept_float'])} most sensitive op(s) kept "
                         f"in float ({'budget met' if selective['met'] else 'budget NOT met'})")
        if mode.value.startswith("litert:"):
            notes = [f"LiteRT Quantizer recipe: {RECIPES[mode.value[len('litert:'):]][1]}"]
        row = report.mode_row(
            mode.value, f"{model.stem}_{mode.value.replace(':', '_')}.tflite", conv.content,
            float_size, conv.float_ops, comparisons[mode].result(), float_result["accuracy"],
            latency[mode.value], conv.seconds, notes)
        if conv.details:
            row["methods"] = conv.details
        rows.append(row)
    return rows


def below_converter_warnings(mode_rows: list[dict], comparisons: dict) -> list[str]:
    """One line per int8-family mode (tflq's int8 methods, LiteRT's static int8 recipe)
    whose top-1 agreement with the float model is more than
    :data:`WARN_BELOW_CONVERTER_PP` below the plain converter's int8 on the same data."""
    if BASELINE not in comparisons:
        return []
    plain = comparisons[BASELINE].result()["top1_agreement"]
    found = []
    for row in mode_rows:
        if row["mode"] not in ("int8", "litert:static_wi8_ai8"):
            continue
        gap = 100.0 * (plain - row["top1_agreement"])
        if gap > WARN_BELOW_CONVERTER_PP:
            found.append(f"{row['mode']}: top-1 agreement {100 * row['top1_agreement']:.2f}% is "
                         f"{gap:.2f} pp below the plain converter's int8 ({100 * plain:.2f}%) "
                         "on the same evaluation data")
    return found


def _selective(job, model, conversions, representative, calib, calib_indices,
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


def _evaluate(job: ConvertJob, model, evaluation, eval_indices, runners, observer):
    """:func:`tflq.jobs.common.evaluate` over the job's samples and batches, with the
    per-output ``observer`` (the headline columns count its headline output)."""
    batches = sampling.iter_batches(evaluation, model.inputs, job.batch_size, eval_indices)
    bar = progress(job.progress, "validate", -(-len(eval_indices) // job.batch_size), "batch")
    return evaluate(model, batches, runners, bar, [observer], observer.headline)
